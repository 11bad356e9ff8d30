import MeshCore
import Yams

/// A YAML node with the dotted path that leads to it, so every message can name its field and line.
struct Field {
    let node: Node
    let path: String
    /// The line of the key that names this value (mappings and lists start below their key).
    var keyLine: Int? = nil

    var line: Int { keyLine ?? node.mark?.line ?? 0 }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
}

/// Walks a composed YAML tree, converting scalars and collecting diagnostics instead of stopping at
/// the first problem.
final class YAMLReader {
    let file: String
    let environment: [String: String]
    private(set) var diagnostics: [ConfigDiagnostic] = []
    /// Fields whose `${VAR}` named an unset variable (the provider loader decides what that means).
    private(set) var unsetVariables: [String: String] = [:]

    init(file: String, environment: [String: String]) {
        self.file = file
        self.environment = environment
    }

    func error(_ field: Field, _ message: String) {
        diagnostics.append(ConfigDiagnostic(file: file, line: field.line, field: field.path, message: message))
    }

    func error(line: Int, path: String, _ message: String) {
        diagnostics.append(ConfigDiagnostic(file: file, line: line, field: path, message: message))
    }

    func warning(_ field: Field, _ message: String) {
        diagnostics.append(ConfigDiagnostic(file: file, line: field.line, field: field.path, message: message, severity: .warning))
    }

    var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }

    // MARK: Collections

    /// The members of a mapping in file order. Keys not in `allowed` are reported (with a suggestion);
    /// keys in `unsupported` get their own message as a warning.
    func mapping(_ field: Field, allowed: [String], unsupported: [String: String] = [:]) -> [(key: String, field: Field)]? {
        guard case .mapping(let mapping) = field.node else {
            error(field, "expected a mapping (key: value pairs), found \(describe(field.node))")
            return nil
        }
        var members: [(String, Field)] = []
        var seen: Set<String> = []
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let scalar) = keyNode else {
                error(Field(node: keyNode, path: field.path), "mapping keys must be plain words")
                continue
            }
            let key = scalar.string
            let child = Field(node: valueNode, path: field.child(key), keyLine: keyNode.mark?.line)
            if !seen.insert(key).inserted {
                error(Field(node: keyNode, path: child.path), "duplicate key '\(key)'")
                continue
            }
            if let message = unsupported[key] {
                warning(Field(node: keyNode, path: child.path), message)
                continue
            }
            if !allowed.isEmpty && !allowed.contains(key) {
                let hint = suggestion(for: key, among: allowed).map { " (did you mean '\($0)'?)" } ?? ""
                error(Field(node: keyNode, path: child.path), "unknown field '\(key)'\(hint); expected one of: \(allowed.joined(separator: ", "))")
                continue
            }
            members.append((key, child))
        }
        return members
    }

    /// A mapping whose keys are names chosen by the user (for example `providers`).
    func namedMapping(_ field: Field) -> [(key: String, field: Field)]? { mapping(field, allowed: []) }

    func sequence(_ field: Field) -> [Field]? {
        guard case .sequence(let sequence) = field.node else {
            error(field, "expected a list, found \(describe(field.node))")
            return nil
        }
        return sequence.enumerated().map { Field(node: $0.element, path: "\(field.path)[\($0.offset)]") }
    }

    // MARK: Scalars

    /// The scalar's text with `${VAR}`, `${VAR:-default}` and `$$` expanded. Returns nil (and reports)
    /// when it is not a scalar. An unset variable without default is reported unless `unsetIsAllowed`,
    /// in which case it is recorded and nil is returned.
    func string(_ field: Field, unsetIsAllowed: Bool = false) -> String? {
        guard case .scalar(let scalar) = field.node else {
            error(field, "expected a single value, found \(describe(field.node))")
            return nil
        }
        if scalar.style == .plain, scalar.string == "~" || scalar.string == "null" || scalar.string.isEmpty {
            return nil
        }
        return expand(scalar.string, field: field, unsetIsAllowed: unsetIsAllowed)
    }

    func expand(_ text: String, field: Field, unsetIsAllowed: Bool) -> String? {
        guard text.contains("$") else { return text }
        var out = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            guard character == "$" else {
                out.append(character)
                index = text.index(after: index)
                continue
            }
            let next = text.index(after: index)
            if next < text.endIndex, text[next] == "$" {
                out.append("$")
                index = text.index(after: next)
                continue
            }
            guard next < text.endIndex, text[next] == "{", let close = text[next...].firstIndex(of: "}") else {
                out.append("$")
                index = next
                continue
            }
            let expression = text[text.index(after: next)..<close]
            var name = Substring(expression)
            var fallback: String?
            if let marker = expression.range(of: ":-") {
                name = expression[expression.startIndex..<marker.lowerBound]
                fallback = String(expression[marker.upperBound...])
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                error(field, "invalid variable reference '${\(expression)}'")
                return nil
            }
            if let value = environment[String(name)], !value.isEmpty {
                out += value
            } else if let fallback {
                out += fallback
            } else {
                if unsetIsAllowed {
                    unsetVariables[field.path] = String(name)
                } else {
                    error(field, "environment variable \(name) is not set")
                }
                return nil
            }
            index = text.index(after: close)
        }
        return out
    }

    func int(_ field: Field, range: ClosedRange<Int>? = nil) -> Int? {
        guard let text = string(field) else { return nil }
        guard let value = Int(text) else {
            error(field, "expected a whole number, found '\(text)'")
            return nil
        }
        if let range, !range.contains(value) {
            error(field, "\(value) is out of range \(range.lowerBound)…\(range.upperBound)")
            return nil
        }
        return value
    }

    func double(_ field: Field, minimum: Double? = nil, maximum: Double? = nil) -> Double? {
        guard let text = string(field) else { return nil }
        guard let value = Double(text), value.isFinite else {
            error(field, "expected a number, found '\(text)'")
            return nil
        }
        if let minimum, value < minimum {
            error(field, "must be at least \(minimum), found \(text)")
            return nil
        }
        if let maximum, value > maximum {
            error(field, "must be at most \(maximum), found \(text)")
            return nil
        }
        return value
    }

    func bool(_ field: Field) -> Bool? {
        guard let text = string(field) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default:
            error(field, "expected true or false, found '\(text)'")
            return nil
        }
    }

    func duration(_ field: Field) -> Duration? {
        guard let text = string(field) else { return nil }
        guard let value = Units.parseDuration(text) else {
            error(field, "expected a duration such as 200ms, 30s, 5m or 2h, found '\(text)'")
            return nil
        }
        return value
    }

    func byteSize(_ field: Field) -> Int? {
        guard let text = string(field) else { return nil }
        guard let value = Units.parseByteSize(text) else {
            error(field, "expected a size such as 512KB or 10MB, found '\(text)'")
            return nil
        }
        return value
    }

    func hostPort(_ field: Field) -> HostPort? {
        guard let text = string(field) else { return nil }
        guard let value = HostPort(parsing: text) else {
            error(field, "expected HOST:PORT (for example 127.0.0.1:8080 or :8080), found '\(text)'")
            return nil
        }
        return value
    }

    /// A list of strings, also accepting a single string or a comma-separated one.
    func stringList(_ field: Field) -> [String]? {
        if case .scalar = field.node {
            guard let text = string(field) else { return [] }
            return text.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }
        }
        guard let items = sequence(field) else { return nil }
        return items.compactMap { string($0) }
    }

    func oneOf<T>(_ field: Field, _ choices: [String: T], what: String) -> T? {
        guard let text = string(field) else { return nil }
        if let value = choices[text.lowercased()] { return value }
        error(field, "unknown \(what) '\(text)'; expected one of: \(choices.keys.sorted().joined(separator: ", "))")
        return nil
    }

    private func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): return "'\(scalar.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    private func suggestion(for key: String, among allowed: [String]) -> String? {
        let scored = allowed.map { ($0, editDistance(key.lowercased(), $0)) }.min { $0.1 < $1.1 }
        guard let (best, distance) = scored, distance <= max(2, key.count / 3) else { return nil }
        return best
    }

    private func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}

extension Substring {
    fileprivate func range(of needle: String) -> Range<Index>? {
        var index = startIndex
        while index < endIndex {
            if self[index...].hasPrefix(needle) { return index..<self.index(index, offsetBy: needle.count) }
            index = self.index(after: index)
        }
        return nil
    }
}
