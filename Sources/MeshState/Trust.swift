import MeshCore
import Sodium
import Wire

/// Why a record, certificate or packet was refused (metrics label values).
public enum Rejection: String, Error, Sendable, CaseIterable {
    case malformed
    case badSignature = "bad_signature"
    case untrustedKey = "untrusted_key"
    case revoked
    case expiredCertificate = "expired_certificate"
    case expiredRecord = "expired_record"
    case replay
    case wrongMesh = "wrong_mesh_key"
    case oversized
}

extension Rejection {
    /// Runs a parser over untrusted bytes: a `Rejection` it throws stays, any wire error is `.malformed`.
    static func decoding<T>(_ parse: () throws -> T) throws(Rejection) -> T {
        do {
            return try parse()
        } catch let error as Rejection {
            throw error
        } catch {
            throw .malformed
        }
    }

    /// Reads `magic` first, or refuses.
    static func expect(_ magic: [UInt8], in reader: inout ByteReader) throws {
        guard try reader.raw(magic.count) == magic else { throw Rejection.malformed }
    }
}

/// A signed document stored as one line of base64 (certificates, revocations, key records).
public protocol Base64File {
    init(bytes: [UInt8]) throws(Rejection)
    var bytes: [UInt8] { get }
}

extension Base64File {
    public var fileText: String { ByteEncoding.base64(bytes) + "\n" }

    public init(fileText: String) throws(Rejection) {
        guard let bytes = ByteEncoding.fromBase64(fileText.trimmingWhitespace()) else { throw .malformed }
        try self.init(bytes: bytes)
    }
}

/// An admin-signed statement that a node key belongs to the mesh until `expiresAtMillis`.
///
///     "AMC1" | node (32) | name (string8) | issued_at ms (i64) | expires_at ms (i64) | admin (32) | signature (64)
public struct Certificate: Sendable, Equatable, Base64File {
    static let magic: [UInt8] = Array("AMC1".utf8)
    public var node: NodeID
    public var name: String
    public var issuedAtMillis: Int64
    public var expiresAtMillis: Int64
    public var admin: NodeID
    public var signature: [UInt8]

    public static func issue(node: NodeID, name: String, issuedAtMillis: Int64, expiresAtMillis: Int64, admin: Ed25519.KeyPair) -> Certificate {
        var certificate = Certificate(node: node, name: name, issuedAtMillis: issuedAtMillis, expiresAtMillis: expiresAtMillis, admin: admin.nodeID, signature: [])
        certificate.signature = admin.sign(certificate.signedBytes)
        return certificate
    }

    var signedBytes: [UInt8] {
        var writer = ByteWriter(capacity: 160)
        writer.raw(Certificate.magic)
        writer.nodeID(node)
        writer.string8(name)
        writer.i64(issuedAtMillis)
        writer.i64(expiresAtMillis)
        writer.nodeID(admin)
        return writer.bytes
    }

    public var bytes: [UInt8] { signedBytes + signature }

    public init(node: NodeID, name: String, issuedAtMillis: Int64, expiresAtMillis: Int64, admin: NodeID, signature: [UInt8]) {
        self.node = node
        self.name = name
        self.issuedAtMillis = issuedAtMillis
        self.expiresAtMillis = expiresAtMillis
        self.admin = admin
        self.signature = signature
    }

    /// Parses without checking the signature (see `TrustStore.check`).
    public init(bytes: [UInt8]) throws(Rejection) {
        guard bytes.count <= WireLimits.maxCertificateBytes else { throw .oversized }
        self = try Rejection.decoding {
            var reader = ByteReader(bytes)
            try Rejection.expect(Certificate.magic, in: &reader)
            let certificate = Certificate(node: try reader.nodeID(), name: try reader.string8(what: "certificate name"), issuedAtMillis: try reader.i64(),
                                          expiresAtMillis: try reader.i64(), admin: try reader.nodeID(), signature: try reader.raw(64))
            try reader.expectEnd()
            return certificate
        }
    }

    public var isSignatureValid: Bool { Ed25519.verify(signature: signature, message: signedBytes, publicKey: admin.bytes) }
}

/// An admin-signed revocation of a node key; gossiped like a record, relayed byte for byte.
///
///     "AMR1" | node (32) | issued_at ms (i64) | admin (32) | signature (64)
public struct Revocation: Sendable, Equatable, Base64File {
    static let magic: [UInt8] = Array("AMR1".utf8)
    public var node: NodeID
    public var issuedAtMillis: Int64
    public var admin: NodeID
    public var signature: [UInt8]

    public static func issue(node: NodeID, issuedAtMillis: Int64, admin: Ed25519.KeyPair) -> Revocation {
        var revocation = Revocation(node: node, issuedAtMillis: issuedAtMillis, admin: admin.nodeID, signature: [])
        revocation.signature = admin.sign(revocation.signedBytes)
        return revocation
    }

    init(node: NodeID, issuedAtMillis: Int64, admin: NodeID, signature: [UInt8]) {
        self.node = node
        self.issuedAtMillis = issuedAtMillis
        self.admin = admin
        self.signature = signature
    }

    var signedBytes: [UInt8] {
        var writer = ByteWriter(capacity: 80)
        writer.raw(Revocation.magic)
        writer.nodeID(node)
        writer.i64(issuedAtMillis)
        writer.nodeID(admin)
        return writer.bytes
    }

    public var bytes: [UInt8] { signedBytes + signature }

    public init(bytes: [UInt8]) throws(Rejection) {
        self = try Rejection.decoding {
            var reader = ByteReader(bytes)
            try Rejection.expect(Revocation.magic, in: &reader)
            let revocation = Revocation(node: try reader.nodeID(), issuedAtMillis: try reader.i64(), admin: try reader.nodeID(), signature: try reader.raw(64))
            try reader.expectEnd()
            return revocation
        }
    }
}

/// Who may speak in this mesh. `open`: any key (labs). `ca`: keys with a valid, unexpired,
/// unrevoked certificate from the mesh's admin key.
public struct TrustStore: Sendable {
    public enum Mode: Sendable, Equatable {
        case open
        case ca(admin: NodeID)
    }

    public let mode: Mode
    public private(set) var certificates: [NodeID: Certificate] = [:]
    public private(set) var revocations: [NodeID: Revocation] = [:]

    public init(mode: Mode) { self.mode = mode }

    /// Checks a certificate and remembers it for its node.
    public mutating func admit(certificateBytes: [UInt8], for node: NodeID, nowMillis: Int64) throws(Rejection) {
        guard case .ca(let admin) = mode else { return }
        if certificateBytes.isEmpty {
            guard certificates[node] != nil else { throw .untrustedKey }
            try check(node, nowMillis: nowMillis)
            return
        }
        let certificate = try Certificate(bytes: certificateBytes)
        guard certificate.node == node, certificate.admin == admin else { throw .untrustedKey }
        guard certificate.isSignatureValid else { throw .badSignature }
        if let known = certificates[node], known.expiresAtMillis > certificate.expiresAtMillis {
            // Keep the longer-lived one; the shorter is still fine to accept.
        } else {
            certificates[node] = certificate
        }
        try check(node, nowMillis: nowMillis)
    }

    /// Whether `node` may speak now.
    public func check(_ node: NodeID, nowMillis: Int64) throws(Rejection) {
        guard case .ca = mode else { return }
        if revocations[node] != nil { throw .revoked }
        guard let certificate = certificates[node] else { throw .untrustedKey }
        guard certificate.expiresAtMillis > nowMillis else { throw .expiredCertificate }
    }

    public func isTrusted(_ node: NodeID, nowMillis: Int64) -> Bool {
        (try? check(node, nowMillis: nowMillis)) != nil
    }

    /// Verifies and applies a revocation; returns false when it was already known.
    public mutating func apply(revocationBytes: [UInt8]) throws(Rejection) -> Bool {
        let revocation = try Revocation(bytes: revocationBytes)
        // An open mesh has no admin, so nobody may revoke anybody there.
        guard case .ca(let admin) = mode, revocation.admin == admin else { throw .untrustedKey }
        guard Ed25519.verify(signature: revocation.signature, message: revocation.signedBytes, publicKey: admin.bytes) else { throw .badSignature }
        guard revocations[revocation.node] == nil else { return false }
        revocations[revocation.node] = revocation
        return true
    }
}
