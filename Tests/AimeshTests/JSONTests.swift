import MeshCore
import Testing

@Suite struct JSONTests {
    @Test func parse_thenEncode_keepsMemberOrderAndNumberText() throws {
        let text = #"{"b":1,"a":[true,false,null],"n":1.50e+3,"s":"x\"y\\z\n","u":"é😀"}"#
        let json = try JSONParser.parse(text)
        #expect(json["n"] == .number("1.50e+3"))
        #expect(json["s"]?.stringValue == "x\"y\\z\n")
        #expect(json["u"]?.stringValue == "é😀")
        #expect(json.objectValue?.keys == ["b", "a", "n", "s", "u"])
        #expect(json.text == text)
    }

    @Test func parse_unicodeEscapes_decodesSurrogatePairs() throws {
        let json = try JSONParser.parse(#""\u00e9\ud83d\ude00\u0041""#)
        #expect(json.stringValue == "é😀A")
    }

    @Test(arguments: [
        "", "{", "{\"a\":1,}", "[1,]", "{\"a\" 1}", "01", "1.", "-", "tru", "\"abc", "\"\u{01}\"", "{\"a\":1}x",
        "\"\\ud800\"", "\"\\x\"", "[1 2]", "{1:2}", "NaN", "+1",
    ])
    func parse_malformedInput_throwsWithPosition(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
    }

    @Test func parse_invalidUTF8_isRejected() {
        #expect(throws: JSONParseError.self) { try JSONParser.parse([0x22, 0xFF, 0xFE, 0x22]) }
    }

    @Test func parse_deepNesting_stopsAtTheLimit() {
        let deep = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(deep) }
        let ok = String(repeating: "[", count: 50) + String(repeating: "]", count: 50)
        #expect(throws: Never.self) { try JSONParser.parse(ok) }
    }

    @Test func parseError_namesLineAndColumn() {
        do {
            _ = try JSONParser.parse("{\n  \"a\": 1,\n  \"b\": ?\n}")
            Issue.record("expected an error")
        } catch {
            #expect(error.line == 3)
            #expect(error.column == 8)
        }
    }

    @Test func topLevel_splicingModel_keepsEveryOtherByte() throws {
        let original = Array(#"{ "model" : "alias",  "messages":[{"role":"user","content":"hi"}], "x": 1.0 }"#.utf8)
        let top = try JSONParser.parseTopLevelObject(original)
        let spliced = try #require(top.splicing(original, replacingValueOf: "model", with: "upstream/id"))
        #expect(String(decoding: spliced, as: UTF8.self) == #"{ "model" : "upstream/id",  "messages":[{"role":"user","content":"hi"}], "x": 1.0 }"#)
        let appended = JSON.appendingMember(to: original, closingBrace: top.closingBrace, isEmpty: false, key: "x_aiproxy", value: ["n": 1])
        let reparsed = try JSONParser.parse(appended)
        #expect(reparsed["x_aiproxy"]?["n"]?.intValue == 1)
        #expect(reparsed["x"] == .number("1.0"))
    }

    @Test func encode_escapesControlCharacters() {
        let json: JSON = ["k": .string("a\u{01}b\tc")]
        #expect(json.text == #"{"k":"a\u0001b\tc"}"#)
    }

    @Test func object_subscriptSet_replacesAppendsAndRemoves() {
        var object: JSONObject = ["a": 1, "b": 2]
        object["a"] = 3
        object["c"] = 4
        object["b"] = nil
        #expect(JSON.object(object).text == #"{"a":3,"c":4}"#)
    }

    @Test func money_roundsAwayFloatNoise() {
        #expect(JSON.money(9.699999999999999e-06) == .double(9.7e-06))
    }

    @Test func base64_andHex_roundTrip() {
        let bytes: [UInt8] = Array(0...255)
        #expect(ByteEncoding.fromBase64(ByteEncoding.base64(bytes)) == bytes)
        #expect(ByteEncoding.fromBase64(ByteEncoding.base64(bytes, url: true)) == bytes)
        #expect(ByteEncoding.fromHex(ByteEncoding.hex(bytes)) == bytes)
        #expect(ByteEncoding.hex([0x00, 0xab, 0xff], prefix: "id_") == "id_00abff")
        #expect(ByteEncoding.hex([UInt8](), prefix: "id_") == "id_")
        #expect(ByteEncoding.hex([0x01].lazy.map { $0 }, prefix: "x") == "x01", "a sequence without contiguous storage")
        #expect(ByteEncoding.base64(Array("foob".utf8)) == "Zm9vYg==")
        #expect(ByteEncoding.fromBase64("Zm9v!") == nil)
    }
}
