/// Why bytes were refused. Every decoder failure is one of these, so the shell can count drops by reason.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated
    case oversized(String)
    case malformed(String)
    case badMagic
    case unsupportedVersion(UInt8)
    case unknownType(UInt8)
    case trailingBytes(Int)
    case noKey
    case decryptFailed

    /// A short stable label for metrics.
    public var reason: String {
        switch self {
        case .truncated: return "truncated"
        case .oversized: return "oversized"
        case .malformed: return "malformed"
        case .badMagic: return "bad_magic"
        case .unsupportedVersion: return "bad_version"
        case .unknownType: return "unknown_type"
        case .trailingBytes: return "trailing_bytes"
        case .noKey: return "wrong_mesh_key"
        case .decryptFailed: return "wrong_mesh_key"
        }
    }

    public var description: String {
        switch self {
        case .truncated: return "truncated"
        case .oversized(let what): return "oversized \(what)"
        case .malformed(let what): return "malformed \(what)"
        case .badMagic: return "not an aimesh packet"
        case .unsupportedVersion(let v): return "unsupported protocol version \(v)"
        case .unknownType(let t): return "unknown message type \(t)"
        case .trailingBytes(let n): return "\(n) unexpected trailing bytes"
        case .noKey: return "sealed with a key this node does not hold"
        case .decryptFailed: return "authentication failed"
        }
    }
}

/// Big-endian writer.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func u16(_ value: UInt16) { bytes.append(UInt8(value >> 8)); bytes.append(UInt8(value & 0xff)) }
    public mutating func u32(_ value: UInt32) { for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8((value >> UInt32(shift)) & 0xff)) } }
    public mutating func u64(_ value: UInt64) { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8((value >> UInt64(shift)) & 0xff)) } }
    public mutating func i64(_ value: Int64) { u64(UInt64(bitPattern: value)) }
    public mutating func f64(_ value: Double) { u64(value.bitPattern) }
    public mutating func bool(_ value: Bool) { u8(value ? 1 : 0) }
    public mutating func raw(_ value: [UInt8]) { bytes.append(contentsOf: value) }
    public mutating func raw(_ value: ArraySlice<UInt8>) { bytes.append(contentsOf: value) }

    /// Bytes with a u16 length. Callers keep within their own limits; this only guards the field.
    public mutating func blob16(_ value: [UInt8]) {
        precondition(value.count <= Int(UInt16.max), "blob too long for a u16 length")
        u16(UInt16(value.count))
        raw(value)
    }

    public mutating func blob32(_ value: [UInt8]) {
        u32(UInt32(value.count))
        raw(value)
    }

    /// UTF-8 text with a u8 length (at most 255 bytes; longer text is cut at a character boundary).
    public mutating func string8(_ value: String) {
        var utf8 = Array(value.utf8)
        if utf8.count > 255 {
            var cut = 255
            while cut > 0 && (utf8[cut] & 0xC0) == 0x80 { cut -= 1 }
            utf8 = Array(utf8[..<cut])
        }
        u8(UInt8(utf8.count))
        raw(utf8)
    }

    /// Patches a u32 at `offset` (for lengths written after their content).
    public mutating func patchU32(at offset: Int, _ value: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8((value >> UInt32(24 - 8 * i)) & 0xff) }
    }

    /// Patches a u16 at `offset` (for lengths written after their content).
    public mutating func patchU16(at offset: Int, _ value: UInt16) {
        bytes[offset] = UInt8(value >> 8)
        bytes[offset + 1] = UInt8(value & 0xff)
    }
}

/// Big-endian reader over untrusted bytes: every read is bounds-checked and every length is capped.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    public let end: Int

    public init(_ bytes: [UInt8], offset: Int = 0, end: Int? = nil) {
        self.bytes = bytes
        self.offset = offset
        self.end = end ?? bytes.count
    }

    public var remaining: Int { end - offset }
    public var isAtEnd: Bool { offset >= end }

    public mutating func u8() throws(WireError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16() throws(WireError) -> UInt16 {
        guard remaining >= 2 else { throw .truncated }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    public mutating func u32() throws(WireError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated }
        var value: UInt32 = 0
        for i in 0..<4 { value = value << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return value
    }

    public mutating func u64() throws(WireError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated }
        var value: UInt64 = 0
        for i in 0..<8 { value = value << 8 | UInt64(bytes[offset + i]) }
        offset += 8
        return value
    }

    public mutating func i64() throws(WireError) -> Int64 { Int64(bitPattern: try u64()) }

    public mutating func f64() throws(WireError) -> Double {
        let value = Double(bitPattern: try u64())
        guard value.isFinite else { throw .malformed("number") }
        return value
    }

    public mutating func bool() throws(WireError) -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        default: throw .malformed("boolean")
        }
    }

    public mutating func raw(_ count: Int) throws(WireError) -> [UInt8] {
        guard count >= 0, remaining >= count else { throw .truncated }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    public mutating func skip(_ count: Int) throws(WireError) {
        guard count >= 0, remaining >= count else { throw .truncated }
        offset += count
    }

    public mutating func blob16(max: Int, what: String) throws(WireError) -> [UInt8] {
        let count = Int(try u16())
        guard count <= max else { throw .oversized(what) }
        return try raw(count)
    }

    public mutating func blob32(max: Int, what: String) throws(WireError) -> [UInt8] {
        let count = Int(try u32())
        guard count <= max else { throw .oversized(what) }
        return try raw(count)
    }

    public mutating func string8(max: Int = 255, what: String) throws(WireError) -> String {
        let count = Int(try u8())
        guard count <= max else { throw .oversized(what) }
        let utf8 = try raw(count)
        guard let text = String(validating: utf8, as: UTF8.self) else { throw .malformed("\(what) (not UTF-8)") }
        return text
    }

    /// A count prefix (u16) that must not exceed `max`.
    public mutating func count16(max: Int, what: String) throws(WireError) -> Int {
        let count = Int(try u16())
        guard count <= max else { throw .oversized(what) }
        return count
    }

    public func expectEnd() throws(WireError) {
        guard remaining == 0 else { throw .trailingBytes(remaining) }
    }
}
