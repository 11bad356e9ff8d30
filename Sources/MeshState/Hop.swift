import MeshCore
import Sodium
import Wire

/// The `x-aiproxy-hop` header a node puts on every request it forwards to a peer (PROTOCOL.md §9): who
/// forwards, to whom, which request, when, a digest of the exact body, and the nodes the request has passed
/// through, authenticated for the receiver.
///
///     "AMH2" | from NodeID | to NodeID | request_id string8 | timestamp_ms i64 | body_sha256[32] | count u8 | visited NodeID × count | mac[32]
///
/// The MAC is keyed BLAKE2b-256 under the pair's hop key (`HopKey`: both ends derive it from X25519 of
/// their node keys), so only the two nodes can make or check it — what a hop needs, at a few microseconds
/// instead of an Ed25519 signature and verification (≈ 80 µs per forwarded request on the project's
/// machine). Version 1 ("AMH1", no `to`, an Ed25519 signature[64] of `from` instead of the MAC) is still
/// accepted, from nodes that predate version 2.
public struct HopHeader: Sendable, Equatable {
    static let magicV1: [UInt8] = Array("AMH1".utf8)
    static let magicV2: [UInt8] = Array("AMH2".utf8)
    public static let name = "x-aiproxy-hop"
    public static let maxVisited = 16

    public var from: NodeID
    /// The receiver (version 2); nil in a version 1 header.
    public var to: NodeID?
    public var requestID: String
    public var timestampMillis: Int64
    public var bodyDigest: [UInt8]
    /// Every node the request passed through, the sender last.
    public var visited: [NodeID]
    /// Version 2: the MAC (32 bytes); version 1: `from`'s Ed25519 signature (64 bytes).
    public var proof: [UInt8]

    /// A version 2 header for `to`, under the hop key `from` and `to` share.
    public static func authenticate(from: NodeID, to: NodeID, key: SecretBytes, requestID: String, timestampMillis: Int64, body: [UInt8],
                                    visited: [NodeID]) -> HopHeader {
        var header = HopHeader(from: from, to: to, requestID: requestID, timestampMillis: timestampMillis, bodyDigest: Sodium.sha256(body),
                               visited: Array(visited.prefix(maxVisited)), proof: [])
        header.proof = key.withBytes { Sodium.hash(header.authenticatedBytes, outputBytes: 32, key: $0) }
        return header
    }

    /// A version 1 header, signed with the sender's Ed25519 key.
    public static func sign(from key: Ed25519.KeyPair, requestID: String, timestampMillis: Int64, body: [UInt8], visited: [NodeID]) -> HopHeader {
        var header = HopHeader(from: key.nodeID, to: nil, requestID: requestID, timestampMillis: timestampMillis, bodyDigest: Sodium.sha256(body),
                               visited: Array(visited.prefix(maxVisited)), proof: [])
        header.proof = key.sign(header.authenticatedBytes)
        return header
    }

    init(from: NodeID, to: NodeID?, requestID: String, timestampMillis: Int64, bodyDigest: [UInt8], visited: [NodeID], proof: [UInt8]) {
        self.from = from
        self.to = to
        self.requestID = requestID
        self.timestampMillis = timestampMillis
        self.bodyDigest = bodyDigest
        self.visited = visited
        self.proof = proof
    }

    /// Every byte before the proof.
    var authenticatedBytes: [UInt8] {
        var writer = ByteWriter(capacity: 160 + visited.count * 32)
        if let to {
            writer.raw(HopHeader.magicV2)
            writer.nodeID(from)
            writer.nodeID(to)
        } else {
            writer.raw(HopHeader.magicV1)
            writer.nodeID(from)
        }
        writer.string8(requestID)
        writer.i64(timestampMillis)
        writer.raw(bodyDigest)
        writer.u8(UInt8(visited.count))
        for node in visited { writer.nodeID(node) }
        return writer.bytes
    }

    /// The header value: URL-safe base64 without padding.
    public var value: String { ByteEncoding.base64(authenticatedBytes + proof, url: true) }

    /// Parses a header value of either version (the proof is checked by `isValid`).
    public init(value: String) throws(Rejection) {
        guard value.utf8.count <= 2048, let bytes = ByteEncoding.fromBase64(value) else { throw .malformed }
        self = try Rejection.decoding {
            var reader = ByteReader(bytes)
            let magic = try reader.raw(4)
            guard magic == HopHeader.magicV1 || magic == HopHeader.magicV2 else { throw Rejection.malformed }
            let v2 = magic == HopHeader.magicV2
            let from = try reader.nodeID()
            var header = HopHeader(from: from, to: v2 ? try reader.nodeID() : nil, requestID: try reader.string8(max: 128, what: "request id"),
                                   timestampMillis: try reader.i64(), bodyDigest: try reader.raw(32), visited: [], proof: [])
            let count = Int(try reader.u8())
            guard count <= HopHeader.maxVisited else { throw Rejection.oversized }
            for _ in 0..<count { header.visited.append(try reader.nodeID()) }
            header.proof = try reader.raw(v2 ? 32 : 64)
            try reader.expectEnd()
            return header
        }
    }

    /// Whether the proof holds: version 2 under `key` (the hop key this node shares with `from`), version 1
    /// by `from`'s signature (`key` unused).
    public func isValid(key: SecretBytes?) -> Bool {
        if to == nil { return Ed25519.verify(signature: proof, message: authenticatedBytes, publicKey: from.bytes) }
        guard let key else { return false }
        let expected = key.withBytes { Sodium.hash(authenticatedBytes, outputBytes: 32, key: $0) }
        return Sodium.constantTimeEqual(expected, proof)
    }
}

/// The key two nodes share for `x-aiproxy-hop` MACs: BLAKE2b-256 of a label, X25519 of their node keys
/// (Ed25519 converted to Curve25519) and both ids in ascending order — the same at either end, different
/// for every pair, nothing sent over the wire.
public enum HopKey {
    static let label: [UInt8] = Array("aimesh hop key v2".utf8)

    public static func derive(own: SealedBox.KeyPair, ownID: NodeID, peer: NodeID) -> SecretBytes? {
        guard let peerCurve = SealedBox.curve25519PublicKey(fromEd25519: peer.bytes), let shared = own.sharedSecret(with: peerCurve) else { return nil }
        let (low, high) = ownID < peer ? (ownID, peer) : (peer, ownID)
        return Sodium.deriveKey(label: label, secret: shared, context: low.bytes + high.bytes)
    }
}

/// `x-aiproxy-admin`: a request to an admin endpoint signed by the mesh admin key or a certified node's
/// key (PROTOCOL.md §11).
///
///     "AMA1" | signer NodeID | timestamp_ms i64 | sha256("METHOD PATH?QUERY")[32] | signature[64]
public struct AdminSignature: Sendable {
    static let magic: [UInt8] = Array("AMA1".utf8)
    public static let name = "x-aiproxy-admin"

    public static func sign(method: String, target: String, key: Ed25519.KeyPair, timestampMillis: Int64) -> String {
        var w = ByteWriter(capacity: 140)
        w.raw(magic)
        w.nodeID(key.nodeID)
        w.i64(timestampMillis)
        w.raw(Sodium.sha256(Array("\(method.uppercased()) \(target)".utf8)))
        return ByteEncoding.base64(w.bytes + key.sign(w.bytes), url: true)
    }

    /// The signer, when the header is well formed, signed, recent and for this request.
    public static func verify(_ value: String, method: String, target: String, nowMillis: Int64, windowMillis: Int64 = 60_000) -> NodeID? {
        guard value.utf8.count <= 512, let bytes = ByteEncoding.fromBase64(value), bytes.count == 4 + 32 + 8 + 32 + 64 else { return nil }
        var r = ByteReader(bytes)
        guard (try? r.raw(4)) == magic, let signer = try? r.nodeID(), let timestamp = try? r.i64(), let digest = try? r.raw(32) else { return nil }
        guard Units.isWithin(timestamp, of: nowMillis, by: windowMillis), digest == Sodium.sha256(Array("\(method.uppercased()) \(target)".utf8)) else { return nil }
        guard Ed25519.verify(signature: Array(bytes[76...]), message: Array(bytes[..<76]), publicKey: signer.bytes) else { return nil }
        return signer
    }
}

/// Remembers which forwarded requests (sender and request id) a node has accepted, long enough to refuse
/// a replayed `x-aiproxy-hop` header for as long as its timestamp would pass (`window` either side of
/// now), at O(1) per request: two generations of `2 × window`, the older dropped whole when time moves on.
/// A header first seen at t can be replayed until its timestamp + window ≤ t + 2 × window, and an entry
/// outlives its insertion by at least one generation. Entries are 64-bit hashes (Swift's `Hasher`, seeded
/// at random per process), so a busy node keeps 8 bytes per request, not a string.
public struct HopReplayFilter: Sendable {
    public let generationMillis: Int64
    private var current: Set<UInt64> = []
    private var previous: Set<UInt64> = []
    private var currentStart: Int64?

    public init(windowMillis: Int64) {
        generationMillis = max(1, 2 * windowMillis)
    }

    /// True the first time (sender, request id) is seen within the remembered span; false for a replay.
    public mutating func firstSighting(from sender: NodeID, requestID: String, nowMillis: Int64) -> Bool {
        rotate(nowMillis: nowMillis)
        var hasher = Hasher()
        hasher.combine(sender)
        hasher.combine(requestID)
        let key = UInt64(bitPattern: Int64(hasher.finalize()))
        if previous.contains(key) { return false }
        return current.insert(key).inserted
    }

    /// Requests remembered now.
    public var count: Int { current.count + previous.count }

    private mutating func rotate(nowMillis: Int64) {
        guard let start = currentStart else {
            currentStart = nowMillis
            return
        }
        let age = nowMillis - start
        guard age >= generationMillis else { return }
        previous = age >= 2 * generationMillis ? [] : current
        current = []
        currentStart = nowMillis
    }
}
