/// A node's identity: its Ed25519 public key (32 bytes). Shown short as the first 12 hex digits.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let byteCount = 32
    // Four words: cheap to hash, compare and copy.
    public let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == NodeID.byteCount else { return nil }
        // No heap array and no generic iteration: this runs for every forwarded request (hop headers) and
        // every gossip record, and a generic loop over the bytes, not specialized across modules, cost a
        // heap allocation per byte (32 per id). Contiguous bytes are read as four big-endian words.
        if let id = bytes.withContiguousStorageIfAvailable({ NodeID(words: UnsafeRawBufferPointer($0)) }) {
            self = id
        } else {
            self = [UInt8](bytes).withUnsafeBytes { NodeID(words: $0) }
        }
    }

    /// From exactly 32 bytes.
    public init(words raw: UnsafeRawBufferPointer) {
        precondition(raw.count == NodeID.byteCount)
        a = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        b = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        c = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        d = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
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
        [UInt8](unsafeUninitializedCapacity: NodeID.byteCount) { buffer, count in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            raw.storeBytes(of: a.bigEndian, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: b.bigEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: c.bigEndian, toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: d.bigEndian, toByteOffset: 24, as: UInt64.self)
            count = NodeID.byteCount
        }
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
