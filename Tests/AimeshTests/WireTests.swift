import MeshCore
import MeshState
import Sodium
import Testing
import Wire

@Suite struct WireTests {
    @Test func nodeID_roundTripsThroughBytesHexAndSlices() throws {
        let bytes = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let id = try #require(NodeID(bytes: bytes))
        #expect(id.bytes == bytes)
        #expect(NodeID(hex: id.hex) == id)
        #expect(id.a == 0x0b30_557a_9fc4_e90e, "big-endian words, first byte most significant")
        let framed = [0xEE] + bytes + [0xFF]
        #expect(NodeID(bytes: framed[1..<33]) == id, "a slice that does not start at 0")
        #expect(NodeID(bytes: bytes.dropLast()) == nil && NodeID(bytes: bytes + [0]) == nil)
    }

    static let key = Ed25519.KeyPair(seed: [UInt8](repeating: 7, count: 32))!
    static let other = Ed25519.KeyPair(seed: [UInt8](repeating: 8, count: 32))!
    static let meshKey = Packet.MeshKey([UInt8](repeating: 1, count: 32))!
    static let otherMeshKey = Packet.MeshKey([UInt8](repeating: 2, count: 32))!
    static let n1 = NodeID(testNumber: 1), n2 = NodeID(testNumber: 2)
    static let addr = PeerAddress(host: "10.1.2.3", port: 7946)

    static let everyMessage: [MeshMessage] = [
        .ping(seq: 1, target: n1),
        .ack(seq: 0xFFFF_FFFF),
        .pingReq(seq: 3, target: n2, address: addr),
        .nack(seq: 4),
        .alive(Alive(node: n1, incarnation: 9, address: PeerAddress(host: "::1", port: 1), certificate: [1, 2, 3])),
        .suspect(Accusation(node: n1, incarnation: 2, from: n2)),
        .dead(Accusation(node: n2, incarnation: 3, from: n2)),
        .record([9, 9, 9]),
        .revocation([8, 8]),
        .digest([DigestEntry(origin: n1, version: 5), DigestEntry(origin: n2, version: .max)]),
        .members([MemberState(alive: Alive(node: n2, incarnation: 1, address: addr), status: .suspect)]),
    ]

    @Test(arguments: [false, true])
    func everyMessage_roundTrips(sealed: Bool) throws {
        for message in Self.everyMessage {
            let bytes = Packet.encode([message], signer: Self.key, meshKey: sealed ? Self.meshKey : nil)
            let decoded = try Packet.decode(bytes, meshKeys: sealed ? [Self.meshKey] : [], maxBytes: WireLimits.maxTCPFrame)
            #expect(decoded.messages == [message], "\(message.name)")
            #expect(decoded.sender == Self.key.nodeID)
        }
        let all = Packet.encode(Self.everyMessage, signer: Self.key, meshKey: sealed ? Self.meshKey : nil)
        #expect(try Packet.decode(all, meshKeys: sealed ? [Self.meshKey] : []).messages == Self.everyMessage)
    }

    @Test func nodeID_hexAndShortForms() {
        let id = Self.key.nodeID
        #expect(NodeID(hex: id.hex) == id)
        #expect(id.short.count == 12 && id.hex.hasPrefix(id.short))
        #expect(NodeID(hex: "zz") == nil)
        #expect(PeerAddress(parsing: "[::1]:7946") == PeerAddress(host: "::1", port: 7946))
        #expect(PeerAddress(parsing: "host:0") != nil && PeerAddress(parsing: "nohost") == nil && PeerAddress(parsing: "h:99999") == nil)
    }

    static func expectRejected(_ bytes: [UInt8], keys: [Packet.MeshKey] = [], _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try Packet.decode(bytes, meshKeys: keys)
            Issue.record("accepted: \(reason)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.reason == reason, "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func everyMalformedShape_isRejectedWithAReason() {
        let good = Packet.encode([.ping(seq: 1, target: Self.n1)], signer: Self.key, meshKey: nil)
        Self.expectRejected([], "truncated")
        Self.expectRejected(Array(good.prefix(3)), "truncated")
        Self.expectRejected([0x42] + good.dropFirst(), "bad_magic")
        var version = good; version[2] = 9
        Self.expectRejected(version, "bad_version")
        var flags = good; flags[3] = 0x80
        Self.expectRejected(flags, "malformed")
        // Any flipped bit in the signed part breaks the signature.
        for index in [5, 40, good.count - 70, good.count - 1] {
            var tampered = good
            tampered[index] ^= 0x01
            Self.expectRejected(tampered, "malformed")
        }
        // Cut anywhere.
        for cut in stride(from: 4, to: good.count, by: 7) { Self.expectRejected(Array(good.prefix(cut)), cut < 109 ? "truncated" : "malformed") }
        Self.expectRejected(good + [0], "malformed")  // trailing byte shifts the signature
        Self.expectRejected([UInt8](repeating: 0x41, count: WireLimits.maxUDPPacket + 1), "oversized")
    }

    @Test func forgedSender_isRejected() {
        // A packet claiming to come from n2 but signed by another key.
        var packet = Packet.encode([.alive(Alive(node: Self.other.nodeID, incarnation: 1, address: Self.addr))], signer: Self.key, meshKey: nil)
        let senderRange = 4..<36
        packet.replaceSubrange(senderRange, with: Self.other.publicKey)
        Self.expectRejected(packet, "malformed")
    }

    @Test func meshKeys_wrongKeyIsRefused_rotationAcceptsEither() throws {
        let sealed = Packet.encode([.ack(seq: 1)], signer: Self.key, meshKey: Self.meshKey)
        Self.expectRejected(sealed, keys: [Self.otherMeshKey], "wrong_mesh_key")
        Self.expectRejected(sealed, keys: [], "wrong_mesh_key")  // a node without keys cannot open sealed traffic
        let plain = Packet.encode([.ack(seq: 1)], signer: Self.key, meshKey: nil)
        Self.expectRejected(plain, keys: [Self.meshKey], "wrong_mesh_key")
        // Rotation: new key first (sends), old key still accepted.
        let decoded = try Packet.decode(sealed, meshKeys: [Self.otherMeshKey, Self.meshKey])
        #expect(decoded.keyIndex == 1)
        // A sealed packet with a matching hint but a tampered body fails authentication.
        var tampered = sealed
        tampered[tampered.count - 3] ^= 0xFF
        Self.expectRejected(tampered, keys: [Self.meshKey], "wrong_mesh_key")
        #expect(Packet.MeshKey(text: String(repeating: "ab", count: 32)) != nil)
        #expect(Packet.MeshKey(text: "short") == nil)
    }

    @Test func messageBodies_areBounded() {
        // A digest claiming more entries than it carries, a member list over the limit, an unknown type.
        func packet(raw body: [UInt8]) -> [UInt8] {
            // Build a signed packet around a hand-made message.
            let header: [UInt8] = Packet.magic + [Packet.version, 0]
            var plain = ByteWriter()
            plain.raw(Self.key.publicKey)
            plain.u64(1)
            plain.u8(1)
            plain.raw(body)
            let signature = Self.key.sign(header + plain.bytes)
            return header + plain.bytes + signature
        }
        var lyingDigest = ByteWriter(); lyingDigest.u8(10); lyingDigest.u32(2 + 40); lyingDigest.u16(5); lyingDigest.nodeID(Self.n1); lyingDigest.u64(1)
        Self.expectRejected(packet(raw: lyingDigest.bytes), "truncated")
        var unknown = ByteWriter(); unknown.u8(99); unknown.u32(0)
        Self.expectRejected(packet(raw: unknown.bytes), "unknown_type")
        var longBody = ByteWriter(); longBody.u8(2); longBody.u32(100_000); longBody.u32(1)
        Self.expectRejected(packet(raw: longBody.bytes), "oversized")
        var extra = ByteWriter(); extra.u8(2); extra.u32(5); extra.u32(1); extra.u8(0)
        Self.expectRejected(packet(raw: extra.bytes), "trailing_bytes")
        var badHost = ByteWriter(); badHost.u8(3); badHost.u32(4 + 32 + 1 + 2); badHost.u32(1); badHost.nodeID(Self.n1); badHost.u8(0); badHost.u16(1)
        Self.expectRejected(packet(raw: badHost.bytes), "malformed")
        var badUTF8 = ByteWriter(); badUTF8.u8(3); badUTF8.u32(4 + 32 + 3 + 2); badUTF8.u32(1); badUTF8.nodeID(Self.n1); badUTF8.u8(2); badUTF8.raw([0xC3, 0x28]); badUTF8.u16(1)
        Self.expectRejected(packet(raw: badUTF8.bytes), "malformed")
    }

    @Test func frames_splitAndBound() throws {
        var buffer = Frame.wrap([1, 2, 3]) + Frame.wrap([4]) + [0, 0]
        let frames = try Frame.split(&buffer)
        #expect(frames == [[1, 2, 3], [4]])
        #expect(buffer == [0, 0])
        var huge: [UInt8] = [0x7F, 0xFF, 0xFF, 0xFF]
        #expect(throws: WireError.self) { _ = try Frame.split(&huge) }
    }

    @Test func randomCorruption_isAlwaysRefused_neverCrashes() {
        var random = SplitMix64(seed: 99)
        let good = Packet.encode(Self.everyMessage, signer: Self.key, meshKey: nil)
        for round in 0..<2000 {
            var bytes = good
            let flips = Int(random.next() % 8) + 1
            for _ in 0..<flips { bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next()) }
            if round % 3 == 0 { bytes = Array(bytes.prefix(Int(random.next() % UInt64(bytes.count)))) }
            // The signature covers every byte: any change, any cut, is refused (and nothing crashes).
            if bytes != good { #expect(throws: WireError.self, "round \(round)") { _ = try Packet.decode(bytes, meshKeys: []) } }
            // Bodies decoded directly (past the signature check) must fail cleanly too.
            var reader = ByteReader(Array(bytes.dropFirst(45)))
            _ = try? reader.message(maxBody: 1400)
        }
    }
}
