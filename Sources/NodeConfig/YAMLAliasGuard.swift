/// Finds what aimesh configs do not take, in a config file's text, before the YAML library sees it: aliases
/// (`*name`) and complex mapping keys (`? key`, `[a, b]: …`, `{a: b}: …`). The YAML library compares
/// mapping keys by their whole content, recursively; a few nested aliases (`b: &b [*a, *a]`, …) used as a
/// key, or deeply nested complex keys (`? - ? ? - …`), kept the loader busy for good — both found by the
/// config fuzzer. Every aimesh key is a plain name, so nothing is lost. Anchors alone are harmless; `*` and
/// `?` inside quotes, comments and block scalars are text. Where the text is ambiguous the guard errs
/// towards refusing (the error names the line), never towards letting one through.
enum YAMLAliasGuard {
    enum Finding: Equatable {
        case alias(line: Int)
        case complexKey(line: Int)
        var line: Int {
            switch self {
            case .alias(let line), .complexKey(let line): line
            }
        }
    }

    /// The 1-based line of the first alias, or nil when there is none (or the first finding is another kind).
    static func firstAlias(in text: String) -> Int? {
        if case .alias(let line)? = firstFinding(in: text) { return line }
        return nil
    }

    /// The text with every line break YAML knows — CR LF, a lone CR, NEL, LS, PS — written as LF, so that the
    /// guard and the YAML library agree on where lines end. (A comment ended by a lone CR once hid a
    /// complex key from the guard that the library then took for a new line: the loader hung. Found by the
    /// config fuzzer.) YAML reads all of these as line breaks anyway; nothing a config means changes.
    static func normalizingLineBreaks(_ text: String) -> String {
        let utf8 = text.utf8
        guard utf8.contains(where: { $0 == 0x0D || $0 == 0xC2 || $0 == 0xE2 }) else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count)
        let bytes = Array(utf8)
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x0D {
                out.append(0x0A)
                index += index + 1 < bytes.count && bytes[index + 1] == 0x0A ? 2 : 1
            } else if byte == 0xC2, index + 1 < bytes.count, bytes[index + 1] == 0x85 {
                out.append(0x0A)  // NEL
                index += 2
            } else if byte == 0xE2, index + 2 < bytes.count, bytes[index + 1] == 0x80, bytes[index + 2] == 0xA8 || bytes[index + 2] == 0xA9 {
                out.append(0x0A)  // LS, PS
                index += 3
            } else {
                out.append(byte)
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The first alias or complex key, or nil.
    static func firstFinding(in text: String) -> Finding? {
        firstFinding(normalized: normalizingLineBreaks(text))
    }

    /// `firstFinding(in:)` for text whose line breaks are already LF (`normalizingLineBreaks`): what the
    /// loader has anyway, since the YAML library must read the same lines.
    static func firstFinding(normalized text: String) -> Finding? {
        var line = 1
        var quote: UInt8?            // ' or " while inside a quoted scalar (they may span lines)
        var blockIndent: Int?        // inside a block scalar (| or >) started on a line indented this much
        var contentIndent: Int?      // … whose first text line set this indentation (as YAML does)
        var flowDepth = 0            // inside [ ] or { } (block scalars cannot start there)
        for rawLine in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            defer { line += 1 }
            let bytes = Array(rawLine)
            let indent = bytes.prefix { $0 == UInt8(ascii: " ") }.count
            if let block = blockIndent {
                // The block's text is what is indented at least as deep as its first text line; a line less
                // indented ends it, even one still deeper than the key (YAML reads that as structure, so must we).
                if bytes.allSatisfy({ $0 == UInt8(ascii: " ") }) { continue }
                if let content = contentIndent {
                    if indent >= content { continue }
                } else if indent > block {
                    contentIndent = indent
                    continue
                }
                blockIndent = nil
                contentIndent = nil
            }
            var index = 0
            var previous: UInt8 = UInt8(ascii: " ")   // what came before: a token starts after space or [ { ,
            var lastSignificantIndex = -1
            // Where a scalar may begin: the line's start, or after : - ? [ { , (a quote anywhere else is text
            // inside a plain scalar; erring that way only ever finds more aliases, never fewer).
            var scalarMayStart = true
            while index < bytes.count {
                let byte = bytes[index]
                if let open = quote {
                    if open == UInt8(ascii: "\"") && byte == UInt8(ascii: "\\") {
                        index += 2
                        continue
                    }
                    if byte == open {
                        if open == UInt8(ascii: "'"), index + 1 < bytes.count, bytes[index + 1] == open {
                            index += 2  // '' is an escaped quote
                            continue
                        }
                        quote = nil
                    }
                    previous = byte
                    index += 1
                    continue
                }
                // A token starts after a space, a flow indicator, the line's start, or a byte-order mark or
                // other non-ASCII byte. (Every line break is LF by now, so none is inside a line.)
                let atTokenStart = previous == UInt8(ascii: " ") || previous == UInt8(ascii: "\t")
                    || previous == UInt8(ascii: "[") || previous == UInt8(ascii: "{") || previous == UInt8(ascii: ",") || previous >= 0x80
                if byte == UInt8(ascii: "#") && atTokenStart { break }  // a comment
                if byte == UInt8(ascii: "[") || byte == UInt8(ascii: "{") { flowDepth += 1 }
                if (byte == UInt8(ascii: "]") || byte == UInt8(ascii: "}")) && flowDepth > 0 { flowDepth -= 1 }
                if atTokenStart && scalarMayStart && (byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\"")) {
                    quote = byte
                } else if atTokenStart && byte == UInt8(ascii: "*"), index + 1 < bytes.count {
                    switch bytes[index + 1] {
                    case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: ","), UInt8(ascii: "["), UInt8(ascii: "]"),
                         UInt8(ascii: "{"), UInt8(ascii: "}"):
                        break
                    default:
                        return .alias(line: line)
                    }
                } else if atTokenStart && byte == UInt8(ascii: "?") {
                    // The explicit-key indicator: "?" then a space, a tab or the end of the line.
                    let next = index + 1 < bytes.count ? bytes[index + 1] : UInt8(ascii: " ")
                    if next == UInt8(ascii: " ") || next == UInt8(ascii: "\t") { return .complexKey(line: line) }
                } else if byte == UInt8(ascii: ":") && lastSignificantIndex >= 0
                            && (bytes[lastSignificantIndex] == UInt8(ascii: "]") || bytes[lastSignificantIndex] == UInt8(ascii: "}")) {
                    // A flow collection used as an implicit key: "[a, b]: …", "{a: b}: …", also with blanks
                    // before the colon ("[a, b] : …").
                    let next = index + 1 < bytes.count ? bytes[index + 1] : UInt8(ascii: " ")
                    if next == UInt8(ascii: " ") || next == UInt8(ascii: "\t") || next == UInt8(ascii: ",")
                        || next == UInt8(ascii: "]") || next == UInt8(ascii: "}") { return .complexKey(line: line) }
                }
                if byte != UInt8(ascii: " ") && byte != UInt8(ascii: "\t") {
                    lastSignificantIndex = index
                    switch byte {
                    case UInt8(ascii: ":"), UInt8(ascii: "-"), UInt8(ascii: "?"), UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","):
                        scalarMayStart = true
                    default:
                        scalarMayStart = false
                    }
                }
                previous = byte
                index += 1
            }
            // `key: |`, `- >-`, `key: |2+`: the lines after it (indented deeper) are text.
            if quote == nil, flowDepth == 0, lastSignificantIndex >= 0 {
                var start = lastSignificantIndex
                while start > 0, [UInt8(ascii: "+"), UInt8(ascii: "-")].contains(bytes[start]) || (bytes[start] >= 0x30 && bytes[start] <= 0x39) { start -= 1 }
                let indicator = bytes[start]
                if (indicator == UInt8(ascii: "|") || indicator == UInt8(ascii: ">")) && (start == 0 || bytes[start - 1] == UInt8(ascii: " ")) {
                    blockIndent = indent
                    contentIndent = nil
                }
            }
        }
        return nil
    }
}

/// The guard, for tests.
public enum YAMLAliasProbe {
    /// The line of the first alias.
    public static func line(_ text: String) -> Int? { YAMLAliasGuard.firstAlias(in: text) }
    /// The line of the first complex key.
    public static func complexKeyLine(_ text: String) -> Int? {
        if case .complexKey(let line)? = YAMLAliasGuard.firstFinding(in: text) { return line }
        return nil
    }
}
