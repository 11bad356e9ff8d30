import Foundation
import Ledger
import MeshCore
import Testing

/// The ledger's rows, written by its own thread in batches, read back field for field.
@Suite(.timeLimit(.minutes(1)))
struct LedgerTests {
    /// Rows of every shape in one batch and across batches — optional fields set and not, quotes,
    /// backslashes and non-ASCII text, a long row between short ones (the writer reuses one buffer for every
    /// row's text) — come back exactly as they were recorded.
    @Test func everyFieldOfEveryRow_readsBackAsRecorded() async throws {
        let directory = temporaryDirectory("ledger")
        let path = directory + "/ledger.sqlite"
        let ledger = try Ledger(path: path, flushInterval: .milliseconds(5), maxBatch: 7)
        var entries: [LedgerEntry] = []
        for index in 0..<40 {
            let long = index % 9 == 4
            entries.append(LedgerEntry(
                requestID: "req_\(index)", timestampMillis: 1_764_000_000_000 + Int64(index), apiKey: index.isMultiple(of: 3) ? nil : "key-\(index)",
                model: long ? String(repeating: "model-ü-", count: 300) : "m\(index)",
                route: index.isMultiple(of: 2) ? ["edge", "gpu \"box\"", "local\\n"] : [],
                provider: index.isMultiple(of: 5) ? nil : "prov-é-\(index)", node: "node-\(index % 4)", fromNode: index.isMultiple(of: 4) ? "peer" : nil,
                promptTokens: index * 3, completionTokens: index * 7, tokensEstimated: index.isMultiple(of: 2), cost: Double(index) * 1.5e-6,
                latencyMillis: Double(index) + 0.125, status: index.isMultiple(of: 6) ? 502 : 200, outcome: index.isMultiple(of: 6) ? "error" : "ok",
                attempts: 1 + index % 3, attemptsJSON: #"[{"route":"r","outcome":"ok","latency_ms":1.5}]"#, stream: index.isMultiple(of: 7),
                error: index.isMultiple(of: 6) ? "upstream said \"no\" — 502" : nil, metadata: long ? #"{"k":"\#(String(repeating: "v", count: 2000))"}"# : nil,
                endpoint: index.isMultiple(of: 8) ? "embeddings" : "chat"))
        }
        for (index, entry) in entries.enumerated() {
            ledger.record(entry)
            if index == 19 { await ledger.flush() }  // two separate runs of batches
        }
        await ledger.flush()
        ledger.close()
        let read = try LedgerReader(path: path).recent(limit: 100)
        #expect(read.count == entries.count)
        for (got, want) in zip(read.reversed(), entries) {
            #expect(got == want, "\(want.requestID)")
        }
    }
}
