import MeshCore
import Gateway
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

    /// Parsing with `keeping` builds only the kept top-level members, yet refuses everything a full parse
    /// refuses (in skipped members too) and reports the same ranges.
    @Test func topLevel_keeping_checksWhatItSkips() throws {
        let good = #"{"id":"x","choices":[{"message":{"content":"h\u00e9 \ud83d\ude00 \"q\""}}],"usage":{"prompt_tokens":3},"n":-1.5e3,"t":true,"z":null}"#
        let full = try JSONParser.parseTopLevelObject(Array(good.utf8))
        let kept = try JSONParser.parseTopLevelObject(Array(good.utf8), keeping: ["usage"])
        #expect(kept.object.count == 1 && kept.object["usage"] == full.object["usage"])
        #expect(kept.valueRanges == full.valueRanges && kept.closingBrace == full.closingBrace && kept.afterOpeningBrace == full.afterOpeningBrace)
        // Over a slice of a larger buffer: the same members, offsets counted from the slice's first byte.
        let padded = Array("xx".utf8) + Array(good.utf8) + Array("yy".utf8)
        let sliced = try JSONParser.parseTopLevelObject(padded[2..<(padded.count - 2)], keeping: ["usage"])
        #expect(sliced.object == kept.object && sliced.valueRanges == full.valueRanges && sliced.closingBrace == full.closingBrace)
        #expect(throws: JSONParseError.self) { try JSONParser.parseTopLevelObject(padded[0..<(padded.count - 2)]) }
        // Each range is where the value's bytes are, and a member given twice is found at its last place.
        let bytes = Array(good.utf8)
        #expect(String(decoding: bytes[try #require(full.valueRanges["usage"])], as: UTF8.self) == #"{"prompt_tokens":3}"#)
        #expect(String(decoding: bytes[try #require(full.valueRanges["n"])], as: UTF8.self) == "-1.5e3")
        #expect(full.valueRanges["absent"] == nil && !full.valueRanges.isEmpty)
        let twice = Array(#"{"a":1,"b":2,"a":[3]}"#.utf8)
        let both = try JSONParser.parseTopLevelObject(twice, keeping: ["a"])
        #expect(both.valueRanges["a"] == 17..<20 && both.object["a"] == .array([.number("3")]))
        #expect(try JSONParser.parseTopLevelObject(Array("{}".utf8)).valueRanges.isEmpty)
        let unranged = try JSONParser.parseTopLevelObject(Array(good.utf8), keeping: ["usage"], recordingRanges: false)
        #expect(unranged.valueRanges.isEmpty && unranged.object == kept.object && unranged.closingBrace == full.closingBrace)
        let bad = [
            #"{"choices":[1,]}"#, #"{"choices":{"a" 1}}"#, #"{"choices":"\x"}"#, #"{"choices":"\ud800"}"#, #"{"choices":"\udc00x"}"#,
            #"{"choices":01}"#, #"{"choices":1.}"#, #"{"choices":-}"#, #"{"choices":tru}"#, #"{"choices":"a"#, #"{"choices":[[[["#,
            #"{"choices":{"a":1,}}"#, #"{"choices":[1 2]}"#, "{\"choices\":\"\u{01}\"}",
        ]
        for text in bad {
            #expect(throws: JSONParseError.self, "\(text)") { try JSONParser.parseTopLevelObject(Array(text.utf8), keeping: ["usage"]) }
            #expect(throws: JSONParseError.self, "\(text)") {
                try JSONParser.parseTopLevelObject(Array(text.utf8), keeping: ["usage"], recordingRanges: false)
            }
            #expect(throws: JSONParseError.self, "\(text)") { try JSONParser.parseTopLevelObject(Array(text.utf8)) }
        }
        // Invalid UTF-8 (a lone continuation byte, an overlong, a surrogate) in a skipped string, and depth.
        for raw: [UInt8] in [[0x80], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]] {
            let bytes = Array(#"{"choices":""#.utf8) + raw + Array(#""}"#.utf8)
            #expect(throws: JSONParseError.self) { try JSONParser.parseTopLevelObject(bytes, keeping: []) }
        }
        let valid: [UInt8] = Array(#"{"choices":""#.utf8) + [0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80] + Array(#""}"#.utf8)
        #expect(throws: Never.self) { try JSONParser.parseTopLevelObject(valid, keeping: []) }
        let deep = "{\"choices\":" + String(repeating: "[", count: 200) + String(repeating: "]", count: 200) + "}"
        #expect(throws: JSONParseError.self) { try JSONParser.parseTopLevelObject(Array(deep.utf8), keeping: []) }
        let long = #"{"c":"\n\n\n"}"#  // three bytes decoded, six as written: the limit counts the decoded ones
        #expect(throws: JSONParseError.self) { try JSONParser.parseTopLevelObject(Array(long.utf8), limits: .init(maxStringBytes: 2), keeping: []) }
        #expect(throws: Never.self) { try JSONParser.parseTopLevelObject(Array(long.utf8), limits: .init(maxStringBytes: 3), keeping: []) }
    }

    /// Strings are scanned eight bytes at a time: a quote, backslash escape, control character, multi-byte
    /// or invalid UTF-8 at every offset of strings 0–40 bytes long reads as the byte-by-byte scan read it,
    /// through the path that builds the string and the one that skips it (with its decoded length checked
    /// against the limit).
    @Test func strings_eachSpecialByte_atEveryOffsetOfAWord() throws {
        let pieces: [(raw: [UInt8], decoded: [UInt8]?)] = [
            (Array(#"\""#.utf8), Array("\"".utf8)), (Array(#"\\"#.utf8), Array("\\".utf8)), (Array(#"\n"#.utf8), [0x0A]),
            (Array(#"\u00e9"#.utf8), [0xC3, 0xA9]), ([0xC3, 0xA9], [0xC3, 0xA9]), ([0xF0, 0x9F, 0x98, 0x80], [0xF0, 0x9F, 0x98, 0x80]),
            ([0x01], nil), ([0x1F], nil), ([0x80], nil), ([0xE2, 0x82], nil), ([0x20], [0x20]), ([0x7F], [0x7F]),
        ]
        for length in 0...40 {
            for offset in 0...length {
                for piece in pieces {
                    let before = Array(repeating: UInt8(ascii: "a"), count: offset)
                    let after = Array(repeating: UInt8(ascii: "b"), count: length - offset)
                    let body = Array(#"{"s":""#.utf8) + before + piece.raw + after + Array(#"","n":1}"#.utf8)
                    let label = "length \(length), offset \(offset), \(piece.raw)"
                    if let decoded = piece.decoded {
                        let want = String(decoding: before + decoded + after, as: UTF8.self)
                        let built = try JSONParser.parseTopLevelObject(body)
                        #expect(built.object["s"] == .string(want), "\(label)")
                        #expect(built.object["n"] == .number("1"), "\(label)")
                        let skipped = try JSONParser.parseTopLevelObject(body, keeping: ["n"])
                        #expect(skipped.valueRanges == built.valueRanges && skipped.object["n"] == .number("1"), "\(label)")
                        let count = want.utf8.count
                        #expect(throws: Never.self, "\(label)") { try JSONParser.parseTopLevelObject(body, limits: .init(maxStringBytes: count), keeping: ["n"]) }
                        #expect(throws: JSONParseError.self, "\(label)") {
                            try JSONParser.parseTopLevelObject(body, limits: .init(maxStringBytes: count - 1), keeping: ["n"])
                        }
                    } else {
                        #expect(throws: JSONParseError.self, "\(label)") { try JSONParser.parseTopLevelObject(body) }
                        #expect(throws: JSONParseError.self, "\(label)") { try JSONParser.parseTopLevelObject(body, keeping: ["n"]) }
                    }
                }
            }
        }
        // An unterminated string whose last bytes fill whole words.
        for length in 0...17 {
            let body = Array(#"{"s":""#.utf8) + Array(repeating: UInt8(ascii: "a"), count: length)
            #expect(throws: JSONParseError.self) { try JSONParser.parseTopLevelObject(body) }
            #expect(throws: JSONParseError.self) { try JSONParser.parseTopLevelObject(body, keeping: []) }
        }
    }

    /// RFC 4648 §10's vectors, padded and not, in both alphabets, across line breaks; a lone sixth
    /// character or one outside both alphabets is refused.
    @Test func base64_decodesTheRFCVectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(ByteEncoding.fromBase64(encoded) == Array(plain.utf8), "\(encoded)")
            #expect(ByteEncoding.fromBase64(String(encoded.prefix { $0 != "=" })) == Array(plain.utf8), "\(encoded) unpadded")
        }
        #expect(ByteEncoding.fromBase64("Zm9v\r\nYmFy") == Array("foobar".utf8))
        #expect(ByteEncoding.fromBase64("-_-_") == [0xFB, 0xFF, 0xBF] && ByteEncoding.fromBase64("+/+/") == [0xFB, 0xFF, 0xBF])
        #expect(ByteEncoding.fromBase64("Zm9vY") == nil, "a single character left over holds no whole byte")
        #expect(ByteEncoding.fromBase64("Zm9v Yg") == nil && ByteEncoding.fromBase64("Zm9vé") == nil)
    }

    /// Trimming keeps inner spaces, removes ASCII whitespace at both ends, and treats non-ASCII text by
    /// Character (a no-break space at the end is whitespace too).
    @Test func trimmingWhitespace_bothEnds() {
        #expect(" \t a b \r\n".trimmingWhitespace() == "a b")
        #expect("abc".trimmingWhitespace() == "abc" && "   ".trimmingWhitespace() == "" && "".trimmingWhitespace() == "")
        #expect("x, y ,z".split(separator: ",").map { $0.trimmingWhitespace() } == ["x", "y", "z"])
        #expect(" é \u{00A0}".trimmingWhitespace() == "é")
    }
}

/// Latencies are written several times a request, through a fast path for whole thousandths; it must
/// write exactly what Swift's own `description` writes.
@Suite struct ThousandthsTextTests {
    @Test func wholeThousandths_writeAsSwiftsDescription() {
        var values: [Double] = []
        for n in 0..<20_000 { values.append(Double(n) / 1000) }
        var random = SystemRandomNumberGenerator()
        for _ in 0..<50_000 { values.append(Double(Int64.random(in: -999_999_999_999...999_999_999_999, using: &random)) / 1000) }
        for ms in [0.0005, 1.2345, 60_123.4567, 0.1 + 0.2] { values.append((ms * 1000).rounded() / 1000) }
        values += [999_999_999.999, -999_999_999.999, 0.001, -0.001, 1.1, 100.01]
        for value in values {
            let expected = String(describing: value)
            if let fast = JSON.thousandthsText(value) {
                #expect(fast == expected, "\(value)")
            } else {
                #expect(value == value.rounded(), "only whole numbers fall back in this range: \(value)")
            }
            let json = JSON.double(value).text
            #expect(json == (value == value.rounded() ? String(Int64(value)) : expected), "\(value)")
            if value >= 0 {
                let duration = Duration.nanoseconds(Int64((value * 1_000_000).rounded()))
                #expect(duration.millisecondsRoundedText == String(duration.millisecondsRounded), "\(value)")
            }
        }
        // Outside the fast path: not thousandths, or too large.
        #expect(JSON.thousandthsText(0.0001) == nil && JSON.thousandthsText(1.23456) == nil && JSON.thousandthsText(2e9 + 0.5) == nil)
        #expect(JSON.double(1.23456).text == "1.23456" && JSON.double(2e9 + 0.5).text == "2000000000.5")
    }
}

@Suite struct EncodeStringsTests {
    /// The direct writer of a string array (x_aiproxy's route, the ledger's route column) spells what the tree does.
    @Test func stringArray_writtenDirectly_matchesItsTree() {
        for strings in [[], ["a"], ["edge", "gpu \"box\"", "back\\slash", "tab\there", "é✓", "\u{01}"]] as [[String]] {
            var out: [UInt8] = []
            JSON.encodeStrings(strings, into: &out)
            #expect(out == JSON.array(strings.map(JSON.string)).bytes, "\(strings)")
        }
    }
}
