import Synchronization

/// A small, fast, seedable generator (SplitMix64) so that planners and simulators are replayable.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { self.state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random numbers for what must differ but need not be secret: request ids, the planner's choices,
/// retry jitter. `SystemRandomNumberGenerator` makes a `getrandom` system call for every number, and a
/// request drew several; this draws none. Each number is SplitMix64's output function applied to a
/// process-wide counter offset by a seed from the system generator: the function is a bijection, so no
/// two draws in one process return the same number (a request id never repeats), and the sequence
/// differs from one process start to the next. Not for keys or anything an attacker must not predict:
/// use `Sodium.randomBytes` for those.
public struct FastRandom: RandomNumberGenerator, Sendable {
    private static let seed: UInt64 = {
        var system = SystemRandomNumberGenerator()
        return system.next()
    }()
    private static let counter = Atomic<UInt64>(0)

    public init() {}

    public mutating func next() -> UInt64 {
        let draw = FastRandom.counter.wrappingAdd(1, ordering: .relaxed).oldValue
        var z = FastRandom.seed &+ draw &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Hex and base64 spellings of bytes.
public enum ByteEncoding {
    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Lowercase hex of `bytes`, after `prefix` (ASCII) in the same string: one allocation for both.
    public static func hex(_ bytes: some Sequence<UInt8>, prefix: StaticString = "") -> String {
        // Contiguous bytes go through a buffer: a generic loop is not specialized across modules and
        // allocated once per byte.
        bytes.withContiguousStorageIfAvailable { hex(buffer: $0, prefix: prefix) }
            ?? [UInt8](bytes).withUnsafeBufferPointer { hex(buffer: $0, prefix: prefix) }
    }

    private static func hex(buffer: UnsafeBufferPointer<UInt8>, prefix: StaticString) -> String {
        let start = prefix.utf8CodeUnitCount
        return String(unsafeUninitializedCapacity: start + buffer.count * 2) { out in
            for index in 0..<start { out[index] = prefix.utf8Start[index] }
            hexDigits.withUnsafeBufferPointer { digits in
                for (index, byte) in buffer.enumerated() {
                    out[start + 2 * index] = digits[Int(byte >> 4)]
                    out[start + 2 * index + 1] = digits[Int(byte & 0xF)]
                }
            }
            return start + buffer.count * 2
        }
    }

    public static func fromHex(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static let base64URLAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Base64 (RFC 4648 §4, padded) or, with `url`, the URL-safe alphabet without padding (§5).
    public static func base64(_ bytes: [UInt8], url: Bool = false) -> String {
        let alphabet = url ? base64URLAlphabet : base64Alphabet
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index + 2 < bytes.count {
            let n = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
            out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)])
            out.append(alphabet[Int(n >> 6 & 63)]); out.append(alphabet[Int(n & 63)])
            index += 3
        }
        let rest = bytes.count - index
        if rest == 1 {
            let n = UInt32(bytes[index]) << 16
            out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)])
            if !url { out.append(contentsOf: [61, 61]) }
        } else if rest == 2 {
            let n = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8
            out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)]); out.append(alphabet[Int(n >> 6 & 63)])
            if !url { out.append(61) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Each byte's value in either alphabet; `skip` for padding and line breaks, `invalid` for the rest.
    private static let base64Values: [UInt8] = {
        var table = [UInt8](repeating: invalid, count: 256)
        for (value, character) in base64Alphabet.enumerated() { table[Int(character)] = UInt8(value) }
        table[Int(UInt8(ascii: "-"))] = 62
        table[Int(UInt8(ascii: "_"))] = 63
        for character in ["=", "\n", "\r"] { table[Int(character.utf8.first!)] = skip }
        return table
    }()
    private static let invalid: UInt8 = 0xFF
    private static let skip: UInt8 = 0xFE

    /// Decodes either alphabet, with or without padding. Nil on any other character.
    public static func fromBase64(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { characters in
            base64Values.withUnsafeBufferPointer { table -> [UInt8]? in
                var out: [UInt8] = []
                out.reserveCapacity(characters.count / 4 * 3 + 2)
                var bits: UInt32 = 0
                var pending = 0
                for character in characters {
                    let value = table[Int(character)]
                    if value == skip { continue }
                    if value == invalid { return nil }
                    bits = bits << 6 | UInt32(value)
                    pending += 1
                    if pending == 4 {
                        out.append(UInt8(truncatingIfNeeded: bits >> 16))
                        out.append(UInt8(truncatingIfNeeded: bits >> 8))
                        out.append(UInt8(truncatingIfNeeded: bits))
                        bits = 0
                        pending = 0
                    }
                }
                switch pending {
                case 1: return nil
                case 2: out.append(UInt8(truncatingIfNeeded: bits >> 4))
                case 3:
                    out.append(UInt8(truncatingIfNeeded: bits >> 10))
                    out.append(UInt8(truncatingIfNeeded: bits >> 2))
                default: break
                }
                return out
            }
        }
    }
}
