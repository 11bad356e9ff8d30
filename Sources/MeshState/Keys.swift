import MeshCore
import Sodium
import Wire

/// A mesh-wide API key, signed by the mesh admin and gossiped like any record (PROTOCOL.md §10).
/// Only the key's SHA-256 travels; the key itself is shown once, by `aimesh keys create`.
///
///     "AMY1" | key_sha256[32] | name string8 | issued_at_ms i64 | expires_at_ms i64 (0 = never) | revoked u8
///     | requests_per_minute u32 | tokens_per_minute u32 (0 = no limit) | daily_budget f64 (0 = none)
///     | model_count u8 | model string8 × count | admin NodeID | signature[64]
public struct KeyRecord: Sendable, Equatable, Base64File {
    static let magic: [UInt8] = Array("AMY1".utf8)
    public var keyHash: [UInt8]
    public var name: String
    public var issuedAtMillis: Int64
    public var expiresAtMillis: Int64
    public var revoked: Bool
    public var requestsPerMinute: UInt32
    public var tokensPerMinute: UInt32
    public var dailyBudget: Double
    /// Models the key may use (empty: all).
    public var models: [String]
    public var admin: NodeID
    public var signature: [UInt8]

    public init(keyHash: [UInt8], name: String, issuedAtMillis: Int64, expiresAtMillis: Int64 = 0, revoked: Bool = false, requestsPerMinute: UInt32 = 0,
                tokensPerMinute: UInt32 = 0, dailyBudget: Double = 0, models: [String] = [], admin: NodeID, signature: [UInt8] = []) {
        self.keyHash = keyHash
        self.name = name
        self.issuedAtMillis = issuedAtMillis
        self.expiresAtMillis = expiresAtMillis
        self.revoked = revoked
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.dailyBudget = dailyBudget
        self.models = models
        self.admin = admin
        self.signature = signature
    }

    public func signed(by admin: Ed25519.KeyPair) -> KeyRecord {
        var copy = self
        copy.admin = admin.nodeID
        copy.signature = admin.sign(copy.signedBytes)
        return copy
    }

    var signedBytes: [UInt8] {
        var w = ByteWriter(capacity: 160)
        w.raw(KeyRecord.magic)
        w.raw(keyHash)
        w.string8(name)
        w.i64(issuedAtMillis)
        w.i64(expiresAtMillis)
        w.bool(revoked)
        w.u32(requestsPerMinute)
        w.u32(tokensPerMinute)
        w.f64(dailyBudget)
        w.u8(UInt8(min(models.count, 64)))
        for model in models.prefix(64) { w.string8(model) }
        w.nodeID(admin)
        return w.bytes
    }

    public var bytes: [UInt8] { signedBytes + signature }

    public init(bytes: [UInt8]) throws(Rejection) {
        guard bytes.count <= 8192 else { throw .oversized }
        self = try Rejection.decoding {
            var r = ByteReader(bytes)
            try Rejection.expect(KeyRecord.magic, in: &r)
            var record = KeyRecord(keyHash: try r.raw(32), name: try r.string8(what: "key name"), issuedAtMillis: try r.i64(), expiresAtMillis: try r.i64(),
                                   revoked: try r.bool(), requestsPerMinute: try r.u32(), tokensPerMinute: try r.u32(), dailyBudget: try r.f64(),
                                   admin: NodeID(testNumber: 0))
            guard record.dailyBudget >= 0 else { throw Rejection.malformed }
            let count = Int(try r.u8())
            guard count <= 64 else { throw Rejection.malformed }
            for _ in 0..<count { record.models.append(try r.string8(what: "model")) }
            record.admin = try r.nodeID()
            record.signature = try r.raw(64)
            try r.expectEnd()
            return record
        }
    }

    public var isSignatureValid: Bool { Ed25519.verify(signature: signature, message: signedBytes, publicKey: admin.bytes) }

    /// The 32-byte id the gossip layer keys broadcasts by.
    public var id: NodeID { NodeID(bytes: keyHash)! }

    public func isUsable(nowMillis: Int64) -> Bool { !revoked && (expiresAtMillis == 0 || expiresAtMillis > nowMillis) }
}

/// The mesh's API keys by hash: the newest admin-signed record per key wins (a revocation is a newer
/// record with `revoked` set).
public struct KeyStore: Sendable {
    public let admin: NodeID?
    public private(set) var keys: [NodeID: KeyRecord] = [:]

    public init(admin: NodeID?) { self.admin = admin }

    /// Applies a record; true when it was news (to be relayed).
    public mutating func apply(_ bytes: [UInt8]) throws(Rejection) -> Bool {
        let record = try KeyRecord(bytes: bytes)
        guard let admin, record.admin == admin else { throw .untrustedKey }
        guard record.keyHash.count == 32, record.isSignatureValid else { throw .badSignature }
        if let held = keys[record.id] {
            guard record.issuedAtMillis > held.issuedAtMillis else { return false }
            // Revocations are final.
            if held.revoked && !record.revoked { return false }
        }
        keys[record.id] = record
        return true
    }

    public func lookup(keyHash: [UInt8]) -> KeyRecord? {
        guard let id = NodeID(bytes: keyHash) else { return nil }
        return keys[id]
    }
}
