@testable import Gateway
import MeshCore
import NIOCore
import Providers
import Testing

/// A peer's answer passes through the forwarding node spliced, not parsed and re-encoded: its own
/// `x_aiproxy` moves byte for byte into `x_aiproxy.downstream`, every other byte stays as the peer sent it.
@Suite struct PeerAnswerTests {
    static let info: JSON = ["request_id": "req_1", "node": "a", "route": ["a", "c", "local"], "cost": .money(0.25)]

    @Test func peersInfo_movesIntoDownstream_andEveryOtherByteIsKept() throws {
        let peer = #"{"id":"x", "choices":[{"index":0,"message":{"role":"assistant","content":"hi \u00e9"}}],"usage":{"prompt_tokens":1},"x_aiproxy":{"node":"c","cost":0.5,"route":["c","local"]}}"#
        let bytes = Array(peer.utf8)
        let answer = try #require(Gateway.peerAnswer(bytes))
        #expect(answer.cost == 0.5)
        let out = Gateway.withAIProxy(bytes, closingBrace: bytes.count - 1, info: Self.info, peer: answer)
        let text = String(decoding: out, as: UTF8.self)
        // The peer's members before x_aiproxy are untouched, escapes and spacing included.
        #expect(text.hasPrefix(#"{"id":"x", "choices":[{"index":0,"message":{"role":"assistant","content":"hi \u00e9"}}],"usage":{"prompt_tokens":1},"x_aiproxy":{"#))
        #expect(text.contains(#""downstream":{"node":"c","cost":0.5,"route":["c","local"]}}}"#))
        let json = try JSONParser.parse(out)
        #expect(json["x_aiproxy"]?["node"]?.stringValue == "a")
        #expect(json["x_aiproxy"]?["cost"]?.doubleValue == 0.25)
        #expect(json["x_aiproxy"]?["downstream"]?["node"]?.stringValue == "c")
        #expect(json["choices"]?[0]?["message"]?["content"]?.stringValue == "hi é")
        #expect(text.components(separatedBy: "\"x_aiproxy\"").count == 2, "one x_aiproxy")
    }

    @Test func peersInfo_inTheMiddle_keepsTheMembersAfterIt() throws {
        let bytes = Array(#"{"x_aiproxy":{"node":"c"},"choices":[],"usage":null}"#.utf8)
        let answer = try #require(Gateway.peerAnswer(bytes))
        let json = try JSONParser.parse(Gateway.withAIProxy(bytes, closingBrace: bytes.count - 1, info: Self.info, peer: answer))
        #expect(json["choices"]?.arrayValue?.isEmpty == true)
        #expect(json["usage"] == .null)
        #expect(json["x_aiproxy"]?["downstream"]?["node"]?.stringValue == "c")
        #expect(answer.withoutInfo(bytes) == Array(#"{"choices":[],"usage":null}"#.utf8), "what the cache keeps")
        #expect(answer.cost == nil, "no cost in this x_aiproxy")
    }

    /// Only `x_aiproxy.cost` is read from a peer's `x_aiproxy`; one that is not an object is no peer answer,
    /// and one with a nested cost elsewhere still gives the top-level cost.
    @Test func peersInfo_costIsReadFromItsOwnMember() throws {
        #expect(Gateway.peerAnswer(Array(#"{"x_aiproxy":5,"choices":[]}"#.utf8)) == nil)
        #expect(Gateway.peerAnswer(Array(#"{"x_aiproxy":[{"cost":1}],"choices":[]}"#.utf8)) == nil)
        #expect(Gateway.peerAnswer(Array(#"{"choices":[]}"#.utf8)) == nil)
        let nested = Array(#"{"x_aiproxy":{"downstream":{"cost":9},"attempts":[{"cost":7}],"cost":0.125},"choices":[]}"#.utf8)
        #expect(Gateway.peerAnswer(nested)?.cost == 0.125)
    }

    /// `x_aiproxy` as the gateway built it before it was written directly: a `JSON` tree, member by member.
    static func tree(_ info: AIProxyInfo) -> JSON {
        var object: JSONObject = [
            "request_id": .string(info.requestID), "node": .string(info.node), "provider": .string(info.provider),
            "upstream_model": .string(info.upstreamModel), "route": .array(info.route.map(JSON.string)), "strategy": .string(info.strategy),
            "attempts": .array(info.attempts.map(\.json)),
        ]
        object["tokens"] = ["prompt": .int(info.usage.promptTokens), "completion": .int(info.usage.completionTokens),
                            "total": .int(info.usage.totalTokens), "estimated": .bool(info.usage.estimated)]
        object["cost"] = .money(info.cost)
        object["latency_ms"] = .double(info.latency.millisecondsRounded)
        if let stored = info.cacheStored { object["cache"] = ["hit": false, "stored": .bool(stored)] }
        return .object(object)
    }

    /// `x_aiproxy` written straight into the answer is the object its tree encodes to, byte for byte:
    /// escapes, several attempts, an error message, estimated tokens, the cache member, money and
    /// milliseconds; and spliced into a peer's answer it reads as the tree's splice does.
    @Test func aiproxyInfo_writtenDirectly_matchesItsTree() throws {
        let attempts = [
            AttemptRecord(route: "provider/a", name: "a", outcome: "connect", latency: .microseconds(1_234_567), message: "refused \"here\"\n"),
            AttemptRecord(route: "peer/b", name: "b", outcome: "ok", latency: .milliseconds(3), message: nil),
        ]
        var info = AIProxyInfo(requestID: "req_\u{7}x", node: "n1", provider: "b", upstreamModel: "m/é", route: ["n1", "b", "local"], strategy: "cost_optimized",
                               attempts: attempts, usage: Usage(promptTokens: 12, completionTokens: 0, estimated: true), cost: 9.699999999999999e-06,
                               latency: .nanoseconds(1_500_001))
        for stored in [nil, false, true] as [Bool?] {
            info.cacheStored = stored
            var out: [UInt8] = []
            info.encode(into: &out)
            #expect(String(decoding: out, as: UTF8.self) == Self.tree(info).text)
        }
        for list in [attempts, [attempts[0]], []] {
            #expect(AIProxyInfo.attemptsText(list) == JSON.array(list.map(\.json)).text, "the ledger's attempts_json")
        }
        for cost in [0, 0.25, 9.699999999999999e-06, 1e20, 3.0000000000001e-07, .infinity] {
            #expect(AIProxyInfo.costText(cost) == JSON.money(cost).text)
        }
        info.attempts = []
        var out: [UInt8] = []
        info.encode(into: &out)
        #expect(String(decoding: out, as: UTF8.self) == Self.tree(info).text)

        let peer = Array(#"{"choices":[],"x_aiproxy":{"node":"c"},"usage":null}"#.utf8)
        let answer = try #require(Gateway.peerAnswer(peer))
        #expect(Gateway.withAIProxy(peer, closingBrace: peer.count - 1, info: info, peer: answer)
                == Gateway.withAIProxy(peer, closingBrace: peer.count - 1, info: Self.tree(info), peer: answer))
        let own = Array(#"{"choices":[]}"#.utf8)
        #expect(Gateway.withAIProxy(own, closingBrace: own.count - 1, info: info) == Gateway.withAIProxy(own, closingBrace: own.count - 1, info: Self.tree(info)))
        #expect(Gateway.withAIProxy(Array("{}".utf8), closingBrace: 1, info: info) == Array(#"{"x_aiproxy":"#.utf8) + Self.tree(info).bytes + [UInt8(ascii: "}")])
    }

    @Test func answersWithoutAnObjectInfo_areNotPeerAnswers() {
        #expect(Gateway.peerAnswer(Array(#"{"choices":[]}"#.utf8)) == nil)
        #expect(Gateway.peerAnswer(Array(#"{"x_aiproxy":"text"}"#.utf8)) == nil)
        #expect(Gateway.peerAnswer(Array(#"not json"#.utf8)) == nil)
    }
}

/// What `pumpStream` writes at once: the item in hand and whatever has already arrived behind it, never
/// waiting for more, bounded in size, ending with `[DONE]` or the failure.
@Suite struct StreamGatherTests {
    struct Boom: Error {}

    static func run(_ first: StreamItem, polls: [Result<StreamPoll, Boom>], limit: Int = 1 << 16) -> (String, Gateway.Gathered, polled: Int) {
        var buffer = ByteBuffer()
        var remaining = polls[...]
        var polled = 0
        let result = Gateway.gather(first, into: &buffer, limit: limit, poll: {
            polled += 1
            guard let next = remaining.popFirst() else { return .notReady }
            return try next.get()
        }, final: { _ in Array(#"{"last":true}"#.utf8) })
        return (String(buffer: buffer), result, polled)
    }

    @Test func readyItems_goOutTogether_andItStopsAtTheFirstThatIsNot() {
        let (text, result, polled) = Self.run(.chunk(Array("a".utf8)), polls: [.success(.item(.chunk(Array("b".utf8)))), .success(.item(.chunk(Array("c".utf8)))), .success(.notReady),
                                                                                .success(.item(.chunk(Array("never".utf8))))])
        #expect(text == "data: a\n\ndata: b\n\ndata: c\n\n")
        guard case .more = result else { Issue.record("expected more, got \(result)"); return }
        #expect(polled == 3, "nothing is asked for after the first item that is not there yet")
    }

    @Test func theFinalChunk_isRendered_andDoneFollows() {
        let (text, result, _) = Self.run(.chunk(Array("a".utf8)), polls: [.success(.item(.final(Array(#"{"x":1}"#.utf8))))])
        #expect(text == "data: a\n\ndata: {\"last\":true}\n\ndata: [DONE]\n\n")
        guard case .done = result else { Issue.record("expected done, got \(result)"); return }
    }

    @Test func anEndWithoutAFinalChunk_stillSaysDone() {
        let (text, result, _) = Self.run(.chunk(Array("a".utf8)), polls: [.success(.end)])
        #expect(text == "data: a\n\ndata: [DONE]\n\n")
        guard case .done = result else { Issue.record("expected done, got \(result)"); return }
    }

    @Test func aFailure_keepsWhatCameBefore() {
        let (text, result, _) = Self.run(.chunk(Array("a".utf8)), polls: [.success(.item(.chunk(Array("b".utf8)))), .failure(Boom())])
        #expect(text == "data: a\n\ndata: b\n\n")
        guard case .failed(let error) = result, error is Boom else { Issue.record("expected the failure, got \(result)"); return }
    }

    @Test func oneWriteIsBounded() {
        let big = [UInt8](repeating: UInt8(ascii: "x"), count: 1000)
        let polls = Array(repeating: Result<StreamPoll, Boom>.success(.item(.chunk(big))), count: 100)
        let (text, result, polled) = Self.run(.chunk(big), polls: polls, limit: 4096)
        #expect(text.utf8.count >= 4096 && text.utf8.count < 4096 + 1010)
        #expect(polled == 4, "stops asking once the limit is reached")
        guard case .more = result else { Issue.record("expected more, got \(result)"); return }
    }
}
