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
        let entries = LedgerTests.entries(40)
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

    /// Rows of every shape: optional fields set and not, quotes, backslashes and non-ASCII text, and a long
    /// row every ninth.
    static func entries(_ count: Int) -> [LedgerEntry] {
        var entries: [LedgerEntry] = []
        for index in 0..<count {
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
        return entries
    }

    /// A batch larger than one INSERT carries (16 rows): written as statements of 16, 16 and 8 rows, every
    /// field of every row still where it belongs. A one-second flush interval and no early wake-up keep the
    /// 40 rows queued until `flush` sends them in one batch.
    @Test func oneBatchOfSeveralStatements_readsBackAsRecorded() async throws {
        let path = temporaryDirectory("ledger-batch") + "/ledger.sqlite"
        let ledger = try Ledger(path: path, flushInterval: .seconds(1), maxBatch: 1000)
        let entries = LedgerTests.entries(40)
        for entry in entries { ledger.record(entry) }
        await ledger.flush()
        #expect(ledger.committedSequence == 40)
        ledger.close()
        let read = try LedgerReader(path: path).recent(limit: 100)
        #expect(read.count == entries.count)
        for (got, want) in zip(read.reversed(), entries) {
            #expect(got == want, "\(want.requestID)")
        }
    }

    /// A batch that cannot commit is rolled back and tried again until it can, and nothing is lost: a trigger
    /// added by another connection refuses one row, so the whole batch fails; once the trigger is gone, the
    /// next try writes every row, and later batches go through the same prepared BEGIN and COMMIT. It fails
    /// if a failed batch leaves its transaction open (every later BEGIN would then fail) or drops its rows.
    @Test func aBatchThatFails_isRolledBackAndWrittenWhenItCan() async throws {
        let path = temporaryDirectory("ledger-retry") + "/ledger.sqlite"
        let ledger = try Ledger(path: path, flushInterval: .milliseconds(5), maxBatch: 1000)
        let other = try SQLiteDatabase(path: path)
        try other.execute("CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.model = 'refused' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
        var entries = LedgerTests.entries(6)
        entries[2].model = "refused"
        for entry in entries { ledger.record(entry) }
        #expect(await eventually(every: .milliseconds(5)) { ledger.failedWrites >= 2 }, "the batch was never refused twice")
        #expect(ledger.committedSequence == 0)
        try other.execute("DROP TRIGGER refuse")
        other.close()
        await ledger.flush()
        #expect(ledger.committedSequence == 6)
        let later = LedgerTests.entries(9).suffix(3)
        for entry in later { ledger.record(entry) }
        await ledger.flush()
        #expect(ledger.committedSequence == 9)
        ledger.close()
        let read = try LedgerReader(path: path).recent(limit: 100)
        #expect(read.count == 9)
        for (got, want) in zip(read.reversed(), entries + later) {
            #expect(got == want, "\(want.requestID)")
        }
    }
}
