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
        func key(_ name: StaticString, first: Bool = false) {
            if !first { out.append(UInt8(ascii: ",")) }
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            out.append(contentsOf: #"":"#.utf8)
        }
        func string(_ value: String) { JSON.encodeString(value, into: &out) }
        out.append(UInt8(ascii: "{"))
        key("request_id", first: true); string(requestID)
        key("node"); string(node)
        key("provider"); string(provider)
        key("upstream_model"); string(upstreamModel)
        key("route"); JSON.encodeStrings(route, into: &out)
        key("strategy"); string(strategy)
        key("attempts")
        AIProxyInfo.encode(attempts, into: &out)
        key("tokens")
        out.append(UInt8(ascii: "{"))
        key("prompt", first: true); out.append(contentsOf: String(usage.promptTokens).utf8)
        key("completion"); out.append(contentsOf: String(usage.completionTokens).utf8)
        key("total"); out.append(contentsOf: String(usage.totalTokens).utf8)
        key("estimated"); out.append(contentsOf: (usage.estimated ? "true" : "false").utf8)
        out.append(UInt8(ascii: "}"))
        key("cost"); JSON.money(cost).encode(into: &out)
        key("latency_ms"); JSON.double(latency.millisecondsRounded).encode(into: &out)
        if let cacheStored {
            key("cache")
            out.append(contentsOf: (cacheStored ? #"{"hit":false,"stored":true}"# : #"{"hit":false,"stored":false}"#).utf8)
        }
        if let downstream {
            key("downstream")
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
