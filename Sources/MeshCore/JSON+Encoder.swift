extension JSON {
    /// Compact JSON bytes.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        encode(into: &out)
        return out
    }

    /// Compact JSON text.
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    /// Appends compact JSON to `out`. Object members keep their order; numbers keep their text.
    public func encode(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        case .bool(true): out.append(contentsOf: [0x74, 0x72, 0x75, 0x65])
        case .bool(false): out.append(contentsOf: [0x66, 0x61, 0x6C, 0x73, 0x65])
        case .number(let text): out.append(contentsOf: text.utf8)
        case .string(let string): JSON.encodeString(string, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (offset, item) in items.enumerated() {
                if offset > 0 { out.append(UInt8(ascii: ",")) }
                item.encode(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            object.encode(into: &out)
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends a JSON array of strings (`["a","b"]`, no spaces), as `JSON.array(strings.map(JSON.string))`
    /// encodes it, without building the tree.
    public static func encodeStrings(_ strings: [String], into out: inout [UInt8]) {
        out.append(UInt8(ascii: "["))
        for (index, string) in strings.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            encodeString(string, into: &out)
        }
        out.append(UInt8(ascii: "]"))
    }

    /// Appends a JSON string literal, escaping quotes, backslashes and control characters.
    public static func encodeString(_ string: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var string = string
        string.withUTF8 { utf8 in
            var runStart = 0
            for i in 0..<utf8.count {
                let byte = utf8[i]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                if runStart < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<i])) }
                runStart = i + 1
                out.append(UInt8(ascii: "\\"))
                switch byte {
                case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
                case 0x0A: out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(UInt8(ascii: "r"))
                case 0x09: out.append(UInt8(ascii: "t"))
                case 0x08: out.append(UInt8(ascii: "b"))
                case 0x0C: out.append(UInt8(ascii: "f"))
                default:
                    out.append(contentsOf: [UInt8(ascii: "u"), 0x30, 0x30, hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]])
                }
            }
            if runStart < utf8.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<utf8.count])) }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension JSONObject {
    public func encode(into out: inout [UInt8]) {
        out.append(UInt8(ascii: "{"))
        for (offset, member) in members.enumerated() {
            if offset > 0 { out.append(UInt8(ascii: ",")) }
            JSON.encodeString(member.key, into: &out)
            out.append(UInt8(ascii: ":"))
            member.value.encode(into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }
}

extension JSONParser.TopLevel {
    /// The original bytes with the value of `key` replaced by `replacement`, leaving every other byte
    /// as it was. Used to rename `model` in a body that otherwise passes through.
    public func splicing(_ original: [UInt8], replacingValueOf key: String, with replacement: JSON) -> [UInt8]? {
        guard let range = valueRanges[key] else { return nil }
        return JSON.replacing(range, in: original) { replacement.encode(into: &$0) }
    }
}

extension JSON {
    /// `original` with the bytes in `range` (a value's) replaced by what `write` appends; `extra` is how
    /// many more bytes to reserve room for.
    public static func replacing(_ range: Range<Int>, in original: [UInt8], extra: Int = 32, write: (inout [UInt8]) -> Void) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(original.count + extra)
        out.append(contentsOf: original[..<range.lowerBound])
        write(&out)
        out.append(contentsOf: original[range.upperBound...])
        return out
    }
}

extension JSON {
    /// Inserts `"key":value` as the last member of a top-level object given as bytes, without parsing
    /// it again. `closingBrace` is the offset of the object's final `}`; `isEmpty` says whether it had
    /// no members.
    public static func appendingMember(
        to original: [UInt8], closingBrace: Int, isEmpty: Bool, key: String, value: JSON
    ) -> [UInt8] {
        appendingMember(to: original, closingBrace: closingBrace, isEmpty: isEmpty, key: key) { value.encode(into: &$0) }
    }

    /// The same, with the value's bytes appended by `writeValue` (a value written without a tree).
    public static func appendingMember(
        to original: [UInt8], closingBrace: Int, isEmpty: Bool, key: String, extra: Int = 256, writeValue: (inout [UInt8]) -> Void
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(original.count + extra)
        out.append(contentsOf: original[..<closingBrace])
        if !isEmpty { out.append(UInt8(ascii: ",")) }
        encodeString(key, into: &out)
        out.append(UInt8(ascii: ":"))
        writeValue(&out)
        out.append(contentsOf: original[closingBrace...])
        return out
    }
}
