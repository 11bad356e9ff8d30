/// Finds YAML aliases (`*name`) in a config file's text before the YAML library sees it. aimesh configs do
/// not take aliases: a handful of them, nested (`b: &b [*a, *a]`, `c: &c [*b, *b]`, …), stand for an
/// exponentially large document, and the YAML library compares mapping keys by their whole expanded
/// content — one alias of that kind used as a key kept the loader busy for good (found by the config
/// fuzzer). Anchors alone are harmless and allowed; so is `*` inside quotes, comments and block scalars.
enum YAMLAliasGuard {
    /// The 1-based line of the first alias, or nil when there is none.
    static func firstAlias(in text: String) -> Int? {
        var line = 1
        var quote: UInt8?            // ' or " while inside a quoted scalar (they may span lines)
        var blockIndent: Int?        // inside a block scalar (| or >): lines indented deeper than this
        for rawLine in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            defer { line += 1 }
            let bytes = Array(rawLine)
            let indent = bytes.prefix { $0 == UInt8(ascii: " ") }.count
            if let block = blockIndent {
                if bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) || indent > block { continue }
                blockIndent = nil
            }
            var index = 0
            var previous: UInt8 = UInt8(ascii: " ")   // what came before: a token starts after space or [ { ,
            var lastSignificantIndex = -1
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
                let atTokenStart = previous == UInt8(ascii: " ") || previous == UInt8(ascii: "\t") || previous == UInt8(ascii: "[")
                    || previous == UInt8(ascii: "{") || previous == UInt8(ascii: ",")
                if byte == UInt8(ascii: "#") && atTokenStart { break }  // a comment
                if atTokenStart && (byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\"")) {
                    quote = byte
                } else if atTokenStart && byte == UInt8(ascii: "*"), index + 1 < bytes.count {
                    let next = bytes[index + 1]
                    let ends: [UInt8] = [UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: ","), UInt8(ascii: "["),
                                         UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}")]
                    if !ends.contains(next) { return line }
                }
                if byte != UInt8(ascii: " ") && byte != UInt8(ascii: "\t") && byte != UInt8(ascii: "\r") { lastSignificantIndex = index }
                previous = byte
                index += 1
            }
            // `key: |`, `- >-`, `key: |2+`: the lines after it (indented deeper) are text.
            if quote == nil, lastSignificantIndex >= 0 {
                var start = lastSignificantIndex
                while start > 0, [UInt8(ascii: "+"), UInt8(ascii: "-")].contains(bytes[start]) || (bytes[start] >= 0x30 && bytes[start] <= 0x39) { start -= 1 }
                let indicator = bytes[start]
                if (indicator == UInt8(ascii: "|") || indicator == UInt8(ascii: ">")) && (start == 0 || bytes[start - 1] == UInt8(ascii: " ")) {
                    blockIndent = indent
                }
            }
        }
        return nil
    }
}

/// The guard, for tests.
public enum YAMLAliasProbe {
    public static func line(_ text: String) -> Int? { YAMLAliasGuard.firstAlias(in: text) }
}
