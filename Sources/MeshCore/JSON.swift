/// A JSON value that keeps what a pass-through gateway must not lose: the order of object members and
/// the exact text of every number. Parsing and encoding are in `JSON+Parser.swift` and `JSON+Encoder.swift`.
public enum JSON: Sendable, Hashable {
    case null
    case bool(Bool)
    /// The number's text exactly as it appeared (already checked against RFC 8259's grammar).
    case number(String)
    case string(String)
    case array([JSON])
    case object(JSONObject)

    /// An integer value.
    public static func int(_ value: Int) -> JSON { .number(String(value)) }

    /// A floating-point value, written in Swift's shortest round-tripping form (always valid JSON).
    public static func double(_ value: Double) -> JSON {
        guard value.isFinite else { return .null }
        if value == value.rounded(), abs(value) < 1e15 { return .number(String(Int64(value))) }
        return .number(thousandthsText(value) ?? String(describing: value))
    }

    /// `value` as `String(describing:)` writes it, when it is a whole number of thousandths below a billion
    /// in magnitude and not a whole number (latencies in milliseconds, several a request): the digits come
    /// from an integer instead of the general shortest-representation search. Such a value is the double
    /// nearest to `n / 1000`, and far coarser than its spacing, so that decimal with its trailing zeros
    /// trimmed is its shortest representation. nil for any other value.
    public static func thousandthsText(_ value: Double) -> String? {
        guard abs(value) < 1e9 else { return nil }
        let scaled = (value * 1000).rounded()
        guard scaled / 1000 == value else { return nil }
        let thousandths = Int64(scaled).magnitude
        var fraction = Int(thousandths % 1000)
        guard fraction != 0 else { return nil }
        var digits = 3
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        // sign, up to 9 whole digits, the point, up to 3 fraction digits
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { buffer in
            var end = 16
            for _ in 0..<digits {
                end -= 1
                buffer[end] = UInt8(ascii: "0") + UInt8(fraction % 10)
                fraction /= 10
            }
            end -= 1
            buffer[end] = UInt8(ascii: ".")
            var whole = thousandths / 1000
            repeat {
                end -= 1
                buffer[end] = UInt8(ascii: "0") + UInt8(whole % 10)
                whole /= 10
            } while whole > 0
            if value < 0 {
                end -= 1
                buffer[end] = UInt8(ascii: "-")
            }
            return String(decoding: UnsafeBufferPointer(rebasing: buffer[end...]), as: UTF8.self)
        }
    }

    /// A dollar amount, rounded to 1e-12 so that sums do not print as 9.699999999999999e-06.
    public static func money(_ value: Double) -> JSON {
        .double((value * 1e12).rounded() / 1e12)
    }

    public subscript(key: String) -> JSON? {
        get {
            if case .object(let object) = self { return object[key] }
            return nil
        }
        set {
            if case .object(var object) = self {
                object[key] = newValue
                self = .object(object)
            }
        }
    }

    public subscript(index: Int) -> JSON? {
        if case .array(let items) = self, items.indices.contains(index) { return items[index] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let string) = self { return string }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let bool) = self { return bool }
        return nil
    }

    public var doubleValue: Double? {
        if case .number(let text) = self { return Double(text) }
        return nil
    }

    /// The value as an integer when it is a number with no fractional part (`3`, `3.0`, `3e2`).
    public var intValue: Int? {
        guard case .number(let text) = self else { return nil }
        if let int = Int(text) { return int }
        if let double = Double(text), double == double.rounded(), abs(double) < 9e15 { return Int(double) }
        return nil
    }

    public var arrayValue: [JSON]? {
        if case .array(let items) = self { return items }
        return nil
    }

    public var objectValue: JSONObject? {
        if case .object(let object) = self { return object }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The JSON type name used in error messages ("string", "number", …).
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

/// An object whose members keep their order. Lookups are linear: request and response objects are small.
public struct JSONObject: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public struct Member: Sendable, Hashable {
        public var key: String
        public var value: JSON
        public init(key: String, value: JSON) {
            self.key = key
            self.value = value
        }
    }

    public var members: [Member]

    public init() { self.members = [] }
    public init(_ members: [Member]) { self.members = members }

    public init(dictionaryLiteral elements: (String, JSON)...) {
        self.members = elements.map { Member(key: $0.0, value: $0.1) }
    }

    public var count: Int { members.count }
    public var isEmpty: Bool { members.isEmpty }
    public var keys: [String] { members.map(\.key) }

    /// Reading gives the last member with that key (what most parsers do with duplicates); writing
    /// replaces it in place, appends a new key, and removes the key when given `nil`.
    public subscript(key: String) -> JSON? {
        get {
            for member in members.reversed() where member.key == key { return member.value }
            return nil
        }
        set {
            if let index = members.lastIndex(where: { $0.key == key }) {
                if let newValue {
                    members[index].value = newValue
                } else {
                    members.removeAll { $0.key == key }
                }
            } else if let newValue {
                members.append(Member(key: key, value: newValue))
            }
        }
    }

    public func makeIterator() -> IndexingIterator<[Member]> { members.makeIterator() }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSON)...) {
        self = .object(JSONObject(elements.map { JSONObject.Member(key: $0.0, value: $0.1) }))
    }
    public init(nilLiteral: ()) { self = .null }
}
