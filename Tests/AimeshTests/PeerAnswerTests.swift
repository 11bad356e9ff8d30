@testable import Gateway
import MeshCore
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
    }

    @Test func answersWithoutAnObjectInfo_areNotPeerAnswers() {
        #expect(Gateway.peerAnswer(Array(#"{"choices":[]}"#.utf8)) == nil)
        #expect(Gateway.peerAnswer(Array(#"{"x_aiproxy":"text"}"#.utf8)) == nil)
        #expect(Gateway.peerAnswer(Array(#"not json"#.utf8)) == nil)
    }
}
