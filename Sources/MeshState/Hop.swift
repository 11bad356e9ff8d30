import MeshCore
import Sodium
import Wire

/// The signed `x-aiproxy-hop` header a node puts on every request it forwards to a peer
/// (PROTOCOL.md §9): who forwards, which request, when, a digest of the exact body, and the nodes the
/// request has passed through.
///
///     "AMH1" | from NodeID | request_id string8 | timestamp_ms i64 | body_sha256[32] | count u8 | visited NodeID × count | signature[64]
public struct HopHeader: Sendable, Equatable {
    static let magic: [UInt8] = Array("AMH1".utf8)
    public static let name = "x-aiproxy-hop"
    public static let maxVisited = 16

    public var from: NodeID
    public var requestID: String
    public var timestampMillis: Int64
    public var bodyDigest: [UInt8]
    /// Every node the request passed through, the sender last.
    public var visited: [NodeID]
    public var signature: [UInt8]

    public static func sign(from key: Ed25519.KeyPair, requestID: String, timestampMillis: Int64, body: [UInt8], visited: [NodeID]) -> HopHeader {
        var header = HopHeader(from: key.nodeID, requestID: requestID, timestampMillis: timestampMillis, bodyDigest: Sodium.sha256(body),
                               visited: Array(visited.prefix(maxVisited)), signature: [])
        header.signature = key.sign(header.signedBytes)
        return header
    }

    init(from: NodeID, requestID: String, timestampMillis: Int64, bodyDigest: [UInt8], visited: [NodeID], signature: [UInt8]) {
        self.from = from
        self.requestID = requestID
        self.timestampMillis = timestampMillis
        self.bodyDigest = bodyDigest
        self.visited = visited
        self.signature = signature
    }

    var signedBytes: [UInt8] {
        var writer = ByteWriter(capacity: 128 + visited.count * 32)
        writer.raw(HopHeader.magic)
        writer.nodeID(from)
        writer.string8(requestID)
        writer.i64(timestampMillis)
        writer.raw(bodyDigest)
        writer.u8(UInt8(visited.count))
        for node in visited { writer.nodeID(node) }
        return writer.bytes
    }

    /// The header value: URL-safe base64 without padding.
    public var value: String { ByteEncoding.base64(signedBytes + signature, url: true) }

    /// Parses a header value (the signature is checked by `verify`).
    public init(value: String) throws(Rejection) {
        guard value.utf8.count <= 2048, let bytes = ByteEncoding.fromBase64(value) else { throw .malformed }
        self = try Rejection.decoding {
            var reader = ByteReader(bytes)
            try Rejection.expect(HopHeader.magic, in: &reader)
            var header = HopHeader(from: try reader.nodeID(), requestID: try reader.string8(max: 128, what: "request id"), timestampMillis: try reader.i64(),
                                   bodyDigest: try reader.raw(32), visited: [], signature: [])
            let count = Int(try reader.u8())
            guard count <= HopHeader.maxVisited else { throw Rejection.oversized }
            for _ in 0..<count { header.visited.append(try reader.nodeID()) }
            header.signature = try reader.raw(64)
            try reader.expectEnd()
            return header
        }
    }

    public var isSignatureValid: Bool { Ed25519.verify(signature: signature, message: signedBytes, publicKey: from.bytes) }
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
        guard abs(nowMillis - timestamp) <= windowMillis, digest == Sodium.sha256(Array("\(method.uppercased()) \(target)".utf8)) else { return nil }
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
