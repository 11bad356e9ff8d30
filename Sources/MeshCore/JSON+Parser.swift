/// Why a text is not the JSON we accept, and where.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Byte offset of the problem.
    public var offset: Int
    public var line: Int
    public var column: Int
    public var reason: String

    public var description: String { "invalid JSON at line \(line), column \(column): \(reason)" }
}

/// A strict RFC 8259 parser over bytes with bounded nesting. It can also report where each member of
/// the top-level object sits, so a gateway can splice one field (`model`) without re-encoding the body.
public struct JSONParser {
    public struct Limits: Sendable {
        public var maxDepth: Int
        public var maxStringBytes: Int
        public init(maxDepth: Int = 128, maxStringBytes: Int = 64 << 20) {
            self.maxDepth = maxDepth
            self.maxStringBytes = maxStringBytes
        }
    }

    /// A parsed top-level object with the byte range of each member's value.
    public struct TopLevel: Sendable {
        /// The members; parsed with `keeping`, only those (the rest are checked, and have their ranges).
        public var object: JSONObject
        /// For each key, the range of its value's bytes (the last occurrence wins, as for lookups).
        public var valueRanges: MemberRanges
        /// Offset of the closing `}`.
        public var closingBrace: Int
        /// Offset just after the opening `{`.
        public var afterOpeningBrace: Int
    }

    /// Where each top-level member's value lies, in the order the members came. A dozen members at most in
    /// a request or an answer: a list searched from the end costs less than a dictionary, which hashed
    /// every member's name to record it and allocated its table (about 1,100 instructions a parse).
    public struct MemberRanges: Sendable, Equatable, CustomStringConvertible {
        var entries: [(key: String, range: Range<Int>)] = []

        public init() {}

        /// The range of `key`'s value; of its last occurrence when it appears more than once.
        public subscript(key: String) -> Range<Int>? {
            for entry in entries.reversed() where entry.key == key { return entry.range }
            return nil
        }

        public var isEmpty: Bool { entries.isEmpty }

        /// Each key with the range a lookup finds.
        public var dictionary: [String: Range<Int>] {
            var result: [String: Range<Int>] = [:]
            for entry in entries { result[entry.key] = entry.range }
            return result
        }

        mutating func record(_ key: String, _ range: Range<Int>) { entries.append((key, range)) }

        public static func == (lhs: MemberRanges, rhs: MemberRanges) -> Bool { lhs.dictionary == rhs.dictionary }
        public var description: String { dictionary.description }
    }

    public static func parse<Bytes: Collection<UInt8>>(_ bytes: Bytes, limits: Limits = Limits()) throws(JSONParseError) -> JSON {
        if let result = bytes.withContiguousStorageIfAvailable({ buffer in Result { () throws(JSONParseError) in
            var parser = Cursor(buffer, limits: limits, recordTopLevel: false)
            return try parser.parseDocument()
        } }) {
            return try result.get()
        }
        let array = Array(bytes)
        return try array.withUnsafeBufferPointer { buffer throws(JSONParseError) in
            var parser = Cursor(buffer, limits: limits, recordTopLevel: false)
            return try parser.parseDocument()
        }
    }

    public static func parse(_ string: String, limits: Limits = Limits()) throws(JSONParseError) -> JSON {
        try parse(Array(string.utf8), limits: limits)
    }

    /// Parses a document that must be an object and reports the position of each top-level member.
    /// With `keeping`, only those top-level members become values in `object`; every other one is
    /// checked just as strictly (a malformed answer is refused either way) and keeps its range in
    /// `valueRanges`, but builds no tree: an answer that passes through, read only for its `usage`,
    /// costs no allocation for its text.
    /// `recordingRanges: false` leaves `valueRanges` empty, for a caller that only reads `object` (each
    /// event of a stream): the table of ranges was the larger part of such a parse's memory.
    public static func parseTopLevelObject(_ bytes: [UInt8], limits: Limits = Limits(), keeping: Set<String>? = nil,
                                           recordingRanges: Bool = true) throws(JSONParseError) -> TopLevel {
        try bytes.withUnsafeBufferPointer { buffer throws(JSONParseError) in
            try parseTopLevelObject(buffer, limits: limits, keeping: keeping, recordingRanges: recordingRanges)
        }
    }

    /// The same over part of a larger buffer (a member's value) without copying it out; offsets in the
    /// result count from the slice's first byte.
    public static func parseTopLevelObject(_ bytes: ArraySlice<UInt8>, limits: Limits = Limits(), keeping: Set<String>? = nil,
                                           recordingRanges: Bool = true) throws(JSONParseError) -> TopLevel {
        try bytes.withUnsafeBufferPointer { buffer throws(JSONParseError) in
            try parseTopLevelObject(buffer, limits: limits, keeping: keeping, recordingRanges: recordingRanges)
        }
    }

    private static func parseTopLevelObject(_ buffer: UnsafeBufferPointer<UInt8>, limits: Limits, keeping: Set<String>?,
                                            recordingRanges: Bool) throws(JSONParseError) -> TopLevel {
        var parser = Cursor(buffer, limits: limits, recordTopLevel: true, recordRanges: recordingRanges)
        parser.keeping = keeping
        let value = try parser.parseDocument()
        guard case .object(let object) = value else {
            throw parser.error(at: 0, "expected a JSON object at the top level, found \(value.typeName)")
        }
        return TopLevel(
            object: object,
            valueRanges: parser.topLevelRanges,
            closingBrace: parser.topLevelClose,
            afterOpeningBrace: parser.topLevelOpen
        )
    }
}

extension JSONParser {
    /// What a gateway reads in one chunk of a streamed chat completion (an OpenAI `chat.completion.chunk`):
    /// found by checking the whole chunk as `parse` would, without building any of it.
    public struct StreamChunkSummary: Sendable, Equatable {
        /// Elements of `choices` (0 when it is absent or not an array).
        public var choiceCount = 0
        /// Whether a choice (an object in `choices`) has a `finish_reason` that is not null.
        public var finishes = false
        /// UTF-8 bytes of every choice's `delta.content` string, decoded.
        public var contentBytes = 0
        /// Where the `usage` member's value is, unless it is absent or null.
        public var usage: Range<Int>?
        /// Where the `error` member's value is, unless it is absent or null.
        public var error: Range<Int>?
        public init() {}
    }

    /// Reads one stream chunk without building it: a streamed answer has one chunk per token or so, and
    /// building each one's `choices` tree cost about four allocations. Throws what `parse` throws for
    /// anything that is not JSON; nil for JSON it does not summarise (not an object at the top level, or
    /// a member name written with escapes), which the caller parses the ordinary way. When a member
    /// appears twice the last one counts, as for lookups in a parsed object.
    public static func scanStreamChunk(_ bytes: [UInt8], limits: Limits = Limits()) throws(JSONParseError) -> StreamChunkSummary? {
        try bytes.withUnsafeBufferPointer { buffer throws(JSONParseError) in
            var cursor = Cursor(buffer, limits: limits, recordTopLevel: false)
            return try cursor.scanStreamChunk()
        }
    }
}

extension Result where Failure == JSONParseError {
    fileprivate init(_ body: () throws(JSONParseError) -> Success) {
        do { self = .success(try body()) } catch { self = .failure(error) }
    }
}

private struct Cursor {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    let limits: JSONParser.Limits
    let recordTopLevel: Bool
    /// Top-level members to build; the others are only checked (`skipValue`). Nil: all.
    var keeping: Set<String>?
    var topLevelRanges = JSONParser.MemberRanges()
    /// Whether `topLevelRanges` is filled in (the top level's braces are found either way).
    let recordRanges: Bool
    var topLevelOpen = 0
    var topLevelClose = 0
    var scratch: [UInt8] = []

    init(_ bytes: UnsafeBufferPointer<UInt8>, limits: JSONParser.Limits, recordTopLevel: Bool, recordRanges: Bool = true) {
        self.bytes = bytes
        self.limits = limits
        self.recordTopLevel = recordTopLevel
        self.recordRanges = recordTopLevel && recordRanges
        // A request or an answer has a dozen top-level members at most: one allocation, no regrowth.
        if self.recordRanges { topLevelRanges.entries.reserveCapacity(12) }
    }

    func error(at offset: Int, _ reason: String) -> JSONParseError {
        var line = 1
        var column = 1
        var i = 0
        let end = min(offset, bytes.count)
        while i < end {
            if bytes[i] == UInt8(ascii: "\n") {
                line += 1
                column = 1
            } else if bytes[i] & 0xC0 != 0x80 {
                column += 1
            }
            i += 1
        }
        return JSONParseError(offset: offset, line: line, column: column, reason: reason)
    }

    mutating func parseDocument() throws(JSONParseError) -> JSON {
        skipWhitespace()
        if index >= bytes.count { throw error(at: index, "the body is empty") }
        let value = try parseValue(depth: 0)
        skipWhitespace()
        if index < bytes.count { throw error(at: index, "unexpected \(describe(bytes[index])) after the end of the value") }
        return value
    }

    @inline(__always)
    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }

    func describe(_ byte: UInt8) -> String {
        if byte >= 0x20 && byte < 0x7F { return "'\(Character(Unicode.Scalar(byte)))'" }
        return "byte 0x\(String(byte, radix: 16))"
    }

    mutating func parseValue(depth: Int) throws(JSONParseError) -> JSON {
        guard index < bytes.count else { throw error(at: index, "unexpected end of input, expected a value") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["):
            return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try parseNumber())
        default:
            throw error(at: index, "unexpected \(describe(bytes[index])), expected a value")
        }
    }

    mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error(at: index, "unexpected end of input in '\(literal)'") }
        let start = literal.utf8Start
        for offset in 0..<count where bytes[index + offset] != start[offset] {
            throw error(at: index + offset, "invalid literal, expected '\(literal)'")
        }
        index += count
    }

    mutating func parseObject(depth: Int) throws(JSONParseError) -> JSON {
        if depth > limits.maxDepth { throw error(at: index, "nesting deeper than \(limits.maxDepth) levels") }
        let isTop = recordTopLevel && depth == 1
        index += 1  // {
        if isTop { topLevelOpen = index }
        var members: [JSONObject.Member] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            if isTop { topLevelClose = index }
            index += 1
            return .object(JSONObject(members))
        }
        // Most objects have a few members: one allocation instead of growing 1 → 2 → 4.
        members.reserveCapacity(isTop ? 12 : 4)
        while true {
            skipWhitespace()
            guard index < bytes.count else { throw error(at: index, "unexpected end of input in an object") }
            guard bytes[index] == UInt8(ascii: "\"") else {
                throw error(at: index, "unexpected \(describe(bytes[index])), expected a member name in double quotes")
            }
            let key = try parseString()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                throw error(at: index, "expected ':' after member name \"\(key)\"")
            }
            index += 1
            skipWhitespace()
            let valueStart = index
            // The kept names are few (one to a handful): compared in turn, not hashed.
            if isTop, let keeping, !keeping.contains(where: { $0 == key }) {
                try skipValue(depth: depth)
                if recordRanges { topLevelRanges.record(key, valueStart..<index) }
            } else {
                let value = try parseValue(depth: depth)
                if isTop && recordRanges { topLevelRanges.record(key, valueStart..<index) }
                members.append(JSONObject.Member(key: key, value: value))
            }
            skipWhitespace()
            guard index < bytes.count else { throw error(at: index, "unexpected end of input in an object") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            if bytes[index] == UInt8(ascii: "}") {
                if isTop { topLevelClose = index }
                index += 1
                return .object(JSONObject(members))
            }
            throw error(at: index, "unexpected \(describe(bytes[index])), expected ',' or '}'")
        }
    }

    mutating func parseArray(depth: Int) throws(JSONParseError) -> JSON {
        guard try enter(depth: depth, close: UInt8(ascii: "]")) else { return .array([]) }
        var items: [JSON] = []
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth))
            guard try moreItems(close: UInt8(ascii: "]")) else { return .array(items) }
        }
    }

    mutating func parseNumber() throws(JSONParseError) -> String {
        let start = index
        try scanNumber()
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
    }

    /// Moves past a number, checking its grammar.
    mutating func scanNumber() throws(JSONParseError) {
        let start = index
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count else { throw error(at: index, "unexpected end of input in a number") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else if isDigit(bytes[index]) {
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        } else {
            throw error(at: index, "invalid number: expected a digit")
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < bytes.count, isDigit(bytes[index]) else { throw error(at: index, "invalid number: expected a digit after '.'") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count, isDigit(bytes[index]) else { throw error(at: index, "invalid number: expected a digit in the exponent") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index - start > 512 { throw error(at: start, "number longer than 512 characters") }
    }

    @inline(__always)
    func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    mutating func parseString() throws(JSONParseError) -> String {
        let open = index
        index += 1  // "
        let start = index
        // Fast path: no escapes, ASCII or valid UTF-8.
        var hasEscape = false
        var hasHighBytes = false
        skipPlainBytes(highBytes: &hasHighBytes)
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { break }
            if byte == UInt8(ascii: "\\") {
                hasEscape = true
                break
            }
            if byte < 0x20 { throw error(at: index, "control character in a string (escape it)") }
            if byte >= 0x80 { hasHighBytes = true }
            index += 1
        }
        guard index < bytes.count else { throw error(at: open, "unterminated string") }
        if !hasEscape {
            let slice = UnsafeBufferPointer(rebasing: bytes[start..<index])
            index += 1
            if slice.count > limits.maxStringBytes { throw error(at: start, "string longer than \(limits.maxStringBytes) bytes") }
            if hasHighBytes {
                guard let string = String(validating: slice, as: UTF8.self) else {
                    throw error(at: start, "string is not valid UTF-8")
                }
                return string
            }
            return String(decoding: slice, as: UTF8.self)
        }
        // Slow path with escapes.
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<index]))
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                if scratch.count > limits.maxStringBytes { throw error(at: start, "string longer than \(limits.maxStringBytes) bytes") }
                guard let string = String(validating: scratch, as: UTF8.self) else {
                    throw error(at: start, "string is not valid UTF-8")
                }
                return string
            }
            if byte < 0x20 { throw error(at: index, "control character in a string (escape it)") }
            if byte != UInt8(ascii: "\\") {
                scratch.append(byte)
                index += 1
                continue
            }
            index += 1
            guard index < bytes.count else { throw error(at: open, "unterminated string") }
            let escape = bytes[index]
            index += 1
            if let character = Cursor.unescaped(escape) {
                scratch.append(character)
            } else if escape == UInt8(ascii: "u") {
                scratch.append(contentsOf: UTF8.encode(try parseUnicodeEscape())!)
            } else {
                throw error(at: index - 1, "invalid escape '\\\(Character(Unicode.Scalar(escape)))'")
            }
        }
        throw error(at: open, "unterminated string")
    }

    /// The byte a one-letter escape (`\\n`, `\\"`, …) stands for; nil for `u` and anything invalid.
    @inline(__always)
    static func unescaped(_ escape: UInt8) -> UInt8? {
        switch escape {
        case UInt8(ascii: "\""): 0x22
        case UInt8(ascii: "\\"): 0x5C
        case UInt8(ascii: "/"): 0x2F
        case UInt8(ascii: "b"): 0x08
        case UInt8(ascii: "f"): 0x0C
        case UInt8(ascii: "n"): 0x0A
        case UInt8(ascii: "r"): 0x0D
        case UInt8(ascii: "t"): 0x09
        default: nil
        }
    }

    /// The scalar of a `\\u` escape whose `\\u` was just read: four hex digits, and a low surrogate's
    /// escape after a high one.
    mutating func parseUnicodeEscape() throws(JSONParseError) -> Unicode.Scalar {
        var scalar = try parseHex4()
        if (0xD800...0xDBFF).contains(scalar) {
            guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                throw error(at: index, "unpaired UTF-16 surrogate in \\u escape")
            }
            index += 2
            let low = try parseHex4()
            guard (0xDC00...0xDFFF).contains(low) else { throw error(at: index, "invalid low surrogate in \\u escape") }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        } else if (0xDC00...0xDFFF).contains(scalar) {
            throw error(at: index, "unpaired UTF-16 surrogate in \\u escape")
        }
        guard let unicode = Unicode.Scalar(scalar) else { throw error(at: index, "invalid \\u escape") }
        return unicode
    }

    // MARK: Checking without building

    /// Moves past a value, making every check `parseValue` makes (grammar, depth, escapes, UTF-8,
    /// lengths), without building it.
    mutating func skipValue(depth: Int) throws(JSONParseError) {
        guard index < bytes.count else { throw error(at: index, "unexpected end of input, expected a value") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            try skipContainer(depth: depth + 1, close: UInt8(ascii: "}"))
        case UInt8(ascii: "["):
            try skipContainer(depth: depth + 1, close: UInt8(ascii: "]"))
        case UInt8(ascii: "\""):
            try skipString()
        case UInt8(ascii: "t"):
            try expectLiteral("true")
        case UInt8(ascii: "f"):
            try expectLiteral("false")
        case UInt8(ascii: "n"):
            try expectLiteral("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            try scanNumber()
        default:
            throw error(at: index, "unexpected \(describe(bytes[index])), expected a value")
        }
    }

    /// An object (`close` is `}`: members) or an array (`]`: values).
    mutating func skipContainer(depth: Int, close: UInt8) throws(JSONParseError) {
        if close == UInt8(ascii: "}") {
            try scanMembers(depth: depth) { (cursor: inout Cursor, _: UnsafeBufferPointer<UInt8>?) throws(JSONParseError) in
                try cursor.skipValue(depth: depth)
            }
        } else {
            try scanElements(depth: depth) { (cursor: inout Cursor) throws(JSONParseError) in try cursor.skipValue(depth: depth) }
        }
    }

    /// Moves `index` past the string bytes that need no look of their own, eight at a time: none a quote, a
    /// backslash or a control character (`highBytes` is set when one of them is 0x80 or above). Stops at
    /// the first word holding one of those, or fewer than eight bytes before the end; the byte loops that
    /// follow take it from there. A completion's text is thousands of such bytes.
    @inline(__always)
    mutating func skipPlainBytes(highBytes: inout Bool) {
        guard let base = bytes.baseAddress else { return }
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        var high: UInt64 = 0
        while index + 8 <= bytes.count {
            let word = UnsafeRawPointer(base + index).loadUnaligned(as: UInt64.self)
            let quote = word ^ (ones &* 0x22)
            let backslash = word ^ (ones &* 0x5C)
            // A byte is zero in `quote` or `backslash`, or below 0x20 in `word`: each test sets that byte's
            // high bit (exact as a whole: no word without such a byte sets any).
            let special = ((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash) | ((word &- ones &* 0x20) & ~word)
            if special & highs != 0 { break }
            high |= word
            index += 8
        }
        if high & highs != 0 { highBytes = true }
    }

    /// Moves past a string, checking its escapes, control characters, UTF-8 and decoded length; returns that
    /// length (UTF-8 bytes once decoded).
    @discardableResult
    mutating func skipString() throws(JSONParseError) -> Int {
        let open = index
        index += 1  // "
        let start = index
        var decoded = 0
        var hasHighBytes = false
        // Plain bytes a word at a time at the start and after each escape; the rest one by one.
        var plainStart = index
        skipPlainBytes(highBytes: &hasHighBytes)
        decoded += index - plainStart
        while true {
            guard index < bytes.count else { throw error(at: open, "unterminated string") }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { break }
            if byte < 0x20 { throw error(at: index, "control character in a string (escape it)") }
            if byte >= 0x80 { hasHighBytes = true }
            guard byte == UInt8(ascii: "\\") else {
                decoded += 1
                index += 1
                continue
            }
            index += 1
            guard index < bytes.count else { throw error(at: open, "unterminated string") }
            let escape = bytes[index]
            index += 1
            if Cursor.unescaped(escape) != nil {
                decoded += 1
            } else if escape == UInt8(ascii: "u") {
                decoded += UTF8.width(try parseUnicodeEscape())
            } else {
                throw error(at: index - 1, "invalid escape '\\\(Character(Unicode.Scalar(escape)))'")
            }
            plainStart = index
            skipPlainBytes(highBytes: &hasHighBytes)
            decoded += index - plainStart
        }
        let end = index
        index += 1
        if decoded > limits.maxStringBytes { throw error(at: start, "string longer than \(limits.maxStringBytes) bytes") }
        // Escapes are ASCII, so the raw bytes are valid UTF-8 exactly when the decoded ones are.
        if hasHighBytes, (try? UTF8Span(validating: UnsafeBufferPointer(rebasing: bytes[start..<end]).span)) == nil {
            throw error(at: start, "string is not valid UTF-8")
        }
        return decoded
    }

    mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error(at: index, "unexpected end of input in \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw error(at: index, "invalid hex digit in \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }
}

// MARK: Walking containers; stream chunks

extension Cursor {
    /// `JSONParser.scanStreamChunk`; the whole input is checked even when the answer is nil.
    mutating func scanStreamChunk() throws(JSONParseError) -> JSONParser.StreamChunkSummary? {
        skipWhitespace()
        guard index < bytes.count else { throw error(at: index, "the body is empty") }
        guard bytes[index] == UInt8(ascii: "{") else {
            _ = try parseDocument()
            return nil
        }
        var summary = JSONParser.StreamChunkSummary()
        var plainNames = true
        try scanMembers(depth: 1) { (cursor: inout Cursor, name: UnsafeBufferPointer<UInt8>?) throws(JSONParseError) in
            guard let name else {
                plainNames = false
                try cursor.skipValue(depth: 1)
                return
            }
            let start = cursor.index
            if Cursor.equals(name, "choices") {
                summary.choiceCount = 0
                summary.finishes = false
                summary.contentBytes = 0
                guard cursor.bytes[start] == UInt8(ascii: "[") else { return try cursor.skipValue(depth: 1) }
                try cursor.scanChoices(depth: 2, into: &summary)
            } else if Cursor.equals(name, "usage") || Cursor.equals(name, "error") {
                try cursor.skipValue(depth: 1)
                let range: Range<Int>? = cursor.bytes[start] == UInt8(ascii: "n") ? nil : start..<cursor.index
                if Cursor.equals(name, "usage") { summary.usage = range } else { summary.error = range }
            } else {
                try cursor.skipValue(depth: 1)
            }
        }
        skipWhitespace()
        if index < bytes.count { throw error(at: index, "unexpected \(describe(bytes[index])) after the end of the value") }
        return plainNames ? summary : nil
    }

    /// `choices`: counts its elements, and reads each object's `finish_reason` and `delta.content`.
    mutating func scanChoices(depth: Int, into summary: inout JSONParser.StreamChunkSummary) throws(JSONParseError) {
        try scanElements(depth: depth) { (cursor: inout Cursor) throws(JSONParseError) in
            summary.choiceCount += 1
            guard cursor.bytes[cursor.index] == UInt8(ascii: "{") else { return try cursor.skipValue(depth: depth) }
            // Members of a choice: the last `finish_reason` and `delta` count.
            var finishes = false
            var content = 0
            try cursor.scanMembers(depth: depth + 1) { (cursor: inout Cursor, name: UnsafeBufferPointer<UInt8>?) throws(JSONParseError) in
                let start = cursor.index
                if let name, Cursor.equals(name, "finish_reason") {
                    try cursor.skipValue(depth: depth + 1)
                    finishes = cursor.bytes[start] != UInt8(ascii: "n")
                } else if let name, Cursor.equals(name, "delta"), cursor.bytes[start] == UInt8(ascii: "{") {
                    content = 0
                    try cursor.scanMembers(depth: depth + 2) { (cursor: inout Cursor, name: UnsafeBufferPointer<UInt8>?) throws(JSONParseError) in
                        guard let name, Cursor.equals(name, "content") else { return try cursor.skipValue(depth: depth + 2) }
                        if cursor.bytes[cursor.index] == UInt8(ascii: "\"") {
                            content = try cursor.skipString()
                        } else {
                            content = 0
                            try cursor.skipValue(depth: depth + 2)
                        }
                    }
                } else {
                    if let name, Cursor.equals(name, "delta") { content = 0 }
                    try cursor.skipValue(depth: depth + 1)
                }
            }
            if finishes { summary.finishes = true }
            summary.contentBytes += content
        }
    }

    /// Walks an object's members (the cursor on its `{`, at nesting `depth`), checking the grammar; `member` gets
    /// each name's raw bytes (nil when the name has escapes) with the cursor on the value, and must move past it.
    mutating func scanMembers(depth: Int, _ member: (inout Cursor, UnsafeBufferPointer<UInt8>?) throws(JSONParseError) -> Void) throws(JSONParseError) {
        guard try enter(depth: depth, close: UInt8(ascii: "}")) else { return }
        while true {
            skipWhitespace()
            guard index < bytes.count else { throw error(at: index, "unexpected end of input in an object") }
            guard bytes[index] == UInt8(ascii: "\"") else {
                throw error(at: index, "unexpected \(describe(bytes[index])), expected a member name in double quotes")
            }
            let nameStart = index + 1
            // An escape always decodes shorter than it is written: equal lengths mean a plain name.
            let plain = try skipString() == index - 1 - nameStart
            let name = UnsafeBufferPointer(rebasing: bytes[nameStart..<(index - 1)])
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                throw error(at: index, "expected ':' after a member name")
            }
            index += 1
            skipWhitespace()
            guard index < bytes.count else { throw error(at: index, "unexpected end of input, expected a value") }
            try member(&self, plain ? name : nil)
            guard try moreItems(close: UInt8(ascii: "}")) else { return }
        }
    }

    /// Walks an array's values (the cursor on its `[`, at nesting `depth`); `element` is called with the cursor
    /// on each value and must move past it.
    mutating func scanElements(depth: Int, _ element: (inout Cursor) throws(JSONParseError) -> Void) throws(JSONParseError) {
        guard try enter(depth: depth, close: UInt8(ascii: "]")) else { return }
        while true {
            skipWhitespace()
            guard index < bytes.count else { throw error(at: index, "unexpected end of input, expected a value") }
            try element(&self)
            guard try moreItems(close: UInt8(ascii: "]")) else { return }
        }
    }

    /// Moves past a container's opening `{` or `[` (the cursor on it, at nesting `depth`) and, when it is empty,
    /// past its `close` too: false then, true when a member or an element follows.
    @inline(__always)
    mutating func enter(depth: Int, close: UInt8) throws(JSONParseError) -> Bool {
        if depth > limits.maxDepth { throw error(at: index, "nesting deeper than \(limits.maxDepth) levels") }
        index += 1
        skipWhitespace()
        if index < bytes.count, bytes[index] == close {
            index += 1
            return false
        }
        return true
    }

    /// After a member or an element: moves past a `,` (true: another follows) or the closing `close` (false).
    @inline(__always)
    mutating func moreItems(close: UInt8) throws(JSONParseError) -> Bool {
        skipWhitespace()
        guard index < bytes.count else {
            throw error(at: index, "unexpected end of input in \(close == UInt8(ascii: "}") ? "an object" : "an array")")
        }
        if bytes[index] == UInt8(ascii: ",") {
            index += 1
            return true
        }
        if bytes[index] == close {
            index += 1
            return false
        }
        throw error(at: index, "unexpected \(describe(bytes[index])), expected ',' or '\(Character(Unicode.Scalar(close)))'")
    }

    @inline(__always)
    static func equals(_ name: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
        guard name.count == literal.utf8CodeUnitCount else { return false }
        let expected = literal.utf8Start
        for offset in 0..<name.count where name[offset] != expected[offset] { return false }
        return true
    }
}
