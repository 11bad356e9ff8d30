import MeshCore
import Sodium

/// The envelope of every UDP datagram and TCP frame (PROTOCOL.md §3):
///
///     "AM" | version=2 | flags | body
///     flags bit 0 clear: body = plain
///     flags bit 0 set:   body = key hint (4) | nonce (24) | XChaCha20-Poly1305(plain), AD = the 4 header bytes + key hint
///     plain = sender NodeID (32) | stamp u64 | count (1) | message × count | Ed25519 signature (64) over header + sender … messages
///
/// The signature proves the sender (its NodeID is its public key); the stamp (the sender's clock in
/// microseconds, strictly increasing) lets a receiver refuse a packet it has seen (`ReplayGuard`); the
/// optional mesh key keeps outsiders out and hides the content. Several mesh keys may be held: the first
/// seals, any opens. Version 1 had no stamp.
public enum Packet {
    public static let magic: [UInt8] = [0x41, 0x4D]
    public static let version: UInt8 = 2
    static let sealedFlag: UInt8 = 0x01
    static let headerBytes = 4
    static let signatureBytes = 64

    /// A mesh key and its hint (the first 4 bytes of its BLAKE2b hash), so a receiver tries one key.
    public struct MeshKey: Sendable {
        public let key: SecretBytes
        public let hint: UInt32

        public init?(_ bytes: [UInt8]) {
            guard bytes.count == XChaCha20Poly1305.keyBytes else { return nil }
            key = SecretBytes(bytes)
            let digest = Sodium.hash(bytes, outputBytes: 32)
            hint = UInt32(digest[0]) << 24 | UInt32(digest[1]) << 16 | UInt32(digest[2]) << 8 | UInt32(digest[3])
        }

        /// From configuration text: 64 hex digits or base64 of 32 bytes.
        public init?(text: String) {
            if let bytes = ByteEncoding.fromHex(text), bytes.count == 32 { self.init(bytes); return }
            if let bytes = ByteEncoding.fromBase64(text), bytes.count == 32 { self.init(bytes); return }
            return nil
        }
    }

    public struct Decoded: Sendable {
        public var sender: NodeID
        /// The sender's stamp (microseconds since 1970, strictly increasing per sender).
        public var stamp: UInt64
        public var messages: [MeshMessage]
        /// Which mesh key opened it (index into the keys given), nil when plain.
        public var keyIndex: Int?
    }

    /// Signs (and with a key, seals) messages from `signer`. A node passes strictly increasing stamps
    /// (`StampClock`); the default, the wall clock, is for tests and tools that send one packet.
    public static func encode(_ messages: [MeshMessage], signer: Ed25519.KeyPair, meshKey: MeshKey?, stamp: UInt64 = StampClock.wallMicros()) -> [UInt8] {
        let header: [UInt8] = magic + [version, meshKey == nil ? 0 : sealedFlag]
        var plain = ByteWriter(capacity: 512)
        plain.raw(signer.publicKey)
        plain.u64(stamp)
        plain.u8(UInt8(messages.count))
        for message in messages { plain.message(message) }
        let signature = signer.sign(header + plain.bytes)
        plain.raw(signature)
        guard let meshKey else { return header + plain.bytes }
        var out = ByteWriter(capacity: plain.bytes.count + 64)
        out.raw(header)
        out.u32(meshKey.hint)
        let additional = header + Array(out.bytes[4..<8])
        out.raw(XChaCha20Poly1305.seal(plain.bytes, additionalData: additional, key: meshKey.key))
        return out.bytes
    }

    /// Opens, verifies and decodes. With `meshKeys` non-empty, plain packets are refused.
    public static func decode(_ bytes: [UInt8], meshKeys: [MeshKey], maxBytes: Int = WireLimits.maxUDPPacket) throws(WireError) -> Decoded {
        guard bytes.count <= maxBytes else { throw .oversized("packet") }
        var reader = ByteReader(bytes)
        let m0 = try reader.u8(), m1 = try reader.u8()
        guard m0 == magic[0], m1 == magic[1] else { throw .badMagic }
        let version = try reader.u8()
        guard version == Packet.version else { throw .unsupportedVersion(version) }
        let flags = try reader.u8()
        guard flags & ~sealedFlag == 0 else { throw .malformed("flags") }
        let header = Array(bytes[0..<headerBytes])
        var plain: [UInt8]
        var keyIndex: Int?
        if flags & sealedFlag != 0 {
            let hint = try reader.u32()
            guard let index = meshKeys.firstIndex(where: { $0.hint == hint }) else { throw .noKey }
            let box = Array(bytes[reader.offset...])
            guard box.count >= XChaCha20Poly1305.nonceBytes + XChaCha20Poly1305.tagBytes else { throw .truncated }
            guard let opened = XChaCha20Poly1305.open(box, additionalData: header + Array(bytes[4..<8]), key: meshKeys[index].key) else {
                throw .decryptFailed
            }
            plain = opened
            keyIndex = index
        } else {
            guard meshKeys.isEmpty else { throw .noKey }
            plain = Array(bytes[headerBytes...])
        }
        guard plain.count >= NodeID.byteCount + 8 + 1 + signatureBytes else { throw .truncated }
        let signedEnd = plain.count - signatureBytes
        let signature = Array(plain[signedEnd...])
        var body = ByteReader(plain, offset: 0, end: signedEnd)
        let sender = try body.nodeID()
        guard Ed25519.verify(signature: signature, message: header + Array(plain[..<signedEnd]), publicKey: sender.bytes) else {
            throw .malformed("signature")
        }
        let stamp = try body.u64()
        let count = Int(try body.u8())
        guard count >= 1, count <= WireLimits.maxMessagesPerPacket else { throw count == 0 ? .malformed("empty packet") : .oversized("message count") }
        var messages: [MeshMessage] = []
        messages.reserveCapacity(count)
        for _ in 0..<count { messages.append(try body.message(maxBody: maxBytes)) }
        try body.expectEnd()
        plain.removeAll()
        return Decoded(sender: sender, stamp: stamp, messages: messages, keyIndex: keyIndex)
    }

    /// Bytes a packet adds around its messages (header, sender, count, signature, and sealing).
    public static func overhead(sealed: Bool) -> Int {
        headerBytes + NodeID.byteCount + 8 + 1 + signatureBytes + (sealed ? 4 + XChaCha20Poly1305.nonceBytes + XChaCha20Poly1305.tagBytes : 0)
    }
}

/// TCP framing: u32 big-endian length, then one packet.
public enum Frame {
    public static func wrap(_ packet: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: packet.count + 4)
        writer.blob32(packet)
        return writer.bytes
    }

    /// Splits complete frames off the front of `buffer`; throws on a length over the limit.
    public static func split(_ buffer: inout [UInt8], maxFrame: Int = WireLimits.maxTCPFrame) throws(WireError) -> [[UInt8]] {
        var frames: [[UInt8]] = []
        var offset = 0
        while buffer.count - offset >= 4 {
            let length = Int(buffer[offset]) << 24 | Int(buffer[offset + 1]) << 16 | Int(buffer[offset + 2]) << 8 | Int(buffer[offset + 3])
            guard length <= maxFrame else { throw .oversized("frame") }
            guard buffer.count - offset - 4 >= length else { break }
            frames.append(Array(buffer[(offset + 4)..<(offset + 4 + length)]))
            offset += 4 + length
        }
        if offset > 0 { buffer.removeFirst(offset) }
        return frames
    }
}
