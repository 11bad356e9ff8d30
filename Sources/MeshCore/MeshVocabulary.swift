/// A node's identity: its Ed25519 public key (32 bytes). Shown short as the first 12 hex digits.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let byteCount = 32
    // Four words: cheap to hash, compare and copy.
    public let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == NodeID.byteCount else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in bytes.enumerated() { words[index / 8] = words[index / 8] << 8 | UInt64(byte) }
        (a, b, c, d) = (words[0], words[1], words[2], words[3])
    }

    /// From 64 hex digits.
    public init?(hex: String) {
        guard let bytes = ByteEncoding.fromHex(hex), bytes.count == NodeID.byteCount else { return nil }
        self.init(bytes: bytes)
    }

    /// A node id for simulations and tests: `n` in the last word.
    public init(testNumber n: UInt64) {
        (a, b, c, d) = (0x5157_494d_0000_0000, 0, 0, n)
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for word in [a, b, c, d] { for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((word >> UInt64(shift)) & 0xff)) } }
        return out
    }

    public var hex: String { ByteEncoding.hex(bytes) }
    public var short: String { String(hex.prefix(12)) }
    public var description: String { short }

    public static func < (lhs: NodeID, rhs: NodeID) -> Bool { (lhs.a, lhs.b, lhs.c, lhs.d) < (rhs.a, rhs.b, rhs.c, rhs.d) }
}

/// Where a node's gossip (UDP and TCP) listens: a host name or IP literal and a port.
public struct PeerAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// "host:port" or "[v6]:port".
    public init?(parsing text: String) {
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            let host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), let port = UInt16(rest.dropFirst()), !host.isEmpty else { return nil }
            self.init(host: host, port: port)
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        let host = String(text[..<colon])
        guard !host.isEmpty, !host.contains(":") else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
