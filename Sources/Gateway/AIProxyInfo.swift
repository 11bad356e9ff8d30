import MeshCore
import Providers

/// What `x_aiproxy` says about how one answer was served, written straight into the answer's bytes
/// (`encode`): building it as a `JSON` tree first and encoding that cost five allocations and a walk of
/// the tree per request. `PeerAnswerTests` holds `encode` byte for byte to the tree the gateway built
/// before.
struct AIProxyInfo: Sendable {
    var requestID: String
    var node: String
    var provider: String
    var upstreamModel: String
    var route: [String]
    var strategy: String
    var attempts: [AttemptRecord]
    var usage: Usage
    var cost: Double
    var latency: Duration
    /// Set when the answer could be cached: `"cache":{"hit":false,"stored":…}`.
    var cacheStored: Bool?

    /// Appends the object; with `downstream`, those bytes (a peer's own `x_aiproxy`) as its last member.
    func encode(into out: inout [UInt8], downstream: ArraySlice<UInt8>? = nil) {
        // Each member's punctuation and name go in as one literal: appending the comma, the quotes, the
        // name and the colon separately cost about 340 instructions a member (callgrind).
        func literal(_ text: StaticString) {
            out.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        }
        func string(_ value: String) { JSON.encodeString(value, into: &out) }
        func integer(_ value: Int) {
            if value >= 0, value < 10 {
                out.append(UInt8(ascii: "0") + UInt8(value))
            } else {
                out.append(contentsOf: String(value).utf8)
            }
        }
        literal(#"{"request_id":"#); string(requestID)
        literal(#","node":"#); string(node)
        literal(#","provider":"#); string(provider)
        literal(#","upstream_model":"#); string(upstreamModel)
        literal(#","route":"#); JSON.encodeStrings(route, into: &out)
        literal(#","strategy":"#); string(strategy)
        literal(#","attempts":"#)
        AIProxyInfo.encode(attempts, into: &out)
        literal(#","tokens":{"prompt":"#); integer(usage.promptTokens)
        literal(#","completion":"#); integer(usage.completionTokens)
        literal(#","total":"#); integer(usage.totalTokens)
        if usage.estimated { literal(#","estimated":true}"#) } else { literal(#","estimated":false}"#) }
        literal(#","cost":"#); JSON.money(cost).encode(into: &out)
        literal(#","latency_ms":"#); JSON.double(latency.millisecondsRounded).encode(into: &out)
        if let cacheStored {
            if cacheStored { literal(#","cache":{"hit":false,"stored":true}"#) } else { literal(#","cache":{"hit":false,"stored":false}"#) }
        }
        if let downstream {
            literal(#","downstream":"#)
            out.append(contentsOf: downstream)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// The attempts as `x_aiproxy.attempts` and the ledger's `attempts_json` spell them: what
    /// `JSON.array(attempts.map(\.json))` encodes to.
    static func encode(_ attempts: [AttemptRecord], into out: inout [UInt8]) {
        out.append(UInt8(ascii: "["))
        for (index, attempt) in attempts.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: #"{"route":"#.utf8)
            JSON.encodeString(attempt.name, into: &out)
            out.append(contentsOf: #","outcome":"#.utf8)
            JSON.encodeString(attempt.outcome, into: &out)
            out.append(contentsOf: #","latency_ms":"#.utf8)
            JSON.double(attempt.latency.millisecondsRounded).encode(into: &out)
            if let message = attempt.message {
                out.append(contentsOf: #","error":"#.utf8)
                JSON.encodeString(message, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
        out.append(UInt8(ascii: "]"))
    }

    /// The ledger's `attempts_json`.
    static func attemptsText(_ attempts: [AttemptRecord]) -> String {
        if attempts.isEmpty { return "[]" }
        var out: [UInt8] = []
        out.reserveCapacity(96 * attempts.count)
        encode(attempts, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// `x-aiproxy-cost`: the cost as `x_aiproxy.cost` writes it.
    static func costText(_ cost: Double) -> String {
        let value = JSON.money(cost)
        if case .number(let text) = value { return text }
        return value.text
    }
}
