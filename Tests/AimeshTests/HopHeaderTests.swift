import MeshCore
import MeshState
import Sodium
import Testing
import Wire

/// x-aiproxy-hop version 2: a MAC under a key only the two nodes of a hop can derive.
@Suite struct HopHeaderTests {
    static let a = Ed25519.KeyPair(seed: [UInt8](repeating: 1, count: 32))!
    static let b = Ed25519.KeyPair(seed: [UInt8](repeating: 2, count: 32))!
    static let c = Ed25519.KeyPair(seed: [UInt8](repeating: 3, count: 32))!

    static func key(_ own: Ed25519.KeyPair, _ peer: Ed25519.KeyPair) throws -> SecretBytes {
        try #require(HopKey.derive(own: SealedBox.KeyPair(converting: own), ownID: own.nodeID, peer: peer.nodeID))
    }

    @Test func bothEndsDeriveTheSameKey_andEveryPairAnother() throws {
        let ab = try Self.key(Self.a, Self.b), ba = try Self.key(Self.b, Self.a)
        let ac = try Self.key(Self.a, Self.c), bc = try Self.key(Self.b, Self.c)
        func bytes(_ key: SecretBytes) -> [UInt8] { key.withBytes { $0 } }
        #expect(bytes(ab) == bytes(ba))
        #expect(bytes(ab) != bytes(ac) && bytes(ab) != bytes(bc) && bytes(ac) != bytes(bc))
        #expect(bytes(ab).count == 32)
    }

    @Test func aHeaderRoundTrips_andOnlyTheRightKeyAcceptsIt() throws {
        let body = Array(#"{"model":"m","messages":[]}"#.utf8)
        let key = try Self.key(Self.a, Self.b)
        let header = HopHeader.authenticate(from: Self.a.nodeID, to: Self.b.nodeID, key: key, requestID: "req_1.00ff", timestampMillis: 1_800_000_000_000,
                                            body: body, visited: [Self.c.nodeID, Self.a.nodeID])
        let parsed = try HopHeader(value: header.value)
        #expect(parsed == header && parsed.to == Self.b.nodeID && parsed.visited == [Self.c.nodeID, Self.a.nodeID])
        #expect(parsed.bodyDigest == Sodium.sha256(body))
        #expect(parsed.isValid(key: try Self.key(Self.b, Self.a)), "the receiver's own derivation checks it")
        #expect(!parsed.isValid(key: try Self.key(Self.c, Self.a)), "a third node cannot check (or make) it")
        #expect(!parsed.isValid(key: nil))
        // Any changed field breaks the MAC.
        var changed = parsed
        changed.timestampMillis += 1
        #expect(!changed.isValid(key: key))
        changed = parsed
        changed.visited = [Self.a.nodeID]
        #expect(!changed.isValid(key: key))
        changed = parsed
        changed.to = Self.c.nodeID
        #expect(!changed.isValid(key: key))
        changed = parsed
        changed.bodyDigest = Sodium.sha256([1])
        #expect(!changed.isValid(key: key))
        // A flipped byte anywhere in the value is refused (malformed or invalid), never accepted.
        let raw = try #require(ByteEncoding.fromBase64(header.value))
        for index in stride(from: 0, to: raw.count, by: 7) {
            var flipped = raw
            flipped[index] ^= 0x20
            let value = ByteEncoding.base64(flipped, url: true)
            if let reparsed = try? HopHeader(value: value) { #expect(!reparsed.isValid(key: key), "byte \(index)") }
        }
    }

    @Test func versionOne_isStillReadAndVerifiedBySignature() throws {
        let body = Array("{}".utf8)
        let header = HopHeader.sign(from: Self.a, requestID: "r", timestampMillis: 5, body: body, visited: [Self.a.nodeID])
        let parsed = try HopHeader(value: header.value)
        #expect(parsed.to == nil && parsed.proof.count == 64)
        #expect(parsed.isValid(key: nil))
        var forged = parsed
        forged.requestID = "r2"
        #expect(!forged.isValid(key: nil))
    }

    /// The fuzzer's find: an x-aiproxy-admin header stamped Int64.min overflowed the time check and crashed
    /// the node (anyone may send that header to an admin endpoint).
    @Test func extremeTimestamps_areStale_notACrash() {
        for stamp in [Int64.min, Int64.max, Int64.min + 1] {
            var bytes = Array("AMA1".utf8) + Self.a.nodeID.bytes
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8((UInt64(bitPattern: stamp) >> UInt64(shift)) & 0xff)) }
            bytes += Sodium.sha256(Array("GET /aiproxy/usage".utf8))
            bytes += Self.a.sign(bytes)
            #expect(AdminSignature.verify(ByteEncoding.base64(bytes, url: true), method: "GET", target: "/aiproxy/usage", nowMillis: 1_800_000_000_000) == nil)
        }
        #expect(Units.isWithin(5, of: 10, by: 5) && !Units.isWithin(4, of: 10, by: 5))
        #expect(!Units.isWithin(.min, of: 1_800_000_000_000, by: 30_000) && !Units.isWithin(.max, of: -1, by: .max))
    }
}
