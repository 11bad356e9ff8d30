import MeshCore
import MeshState
import Sodium
import Testing
import Wire
#if canImport(Glibc)
import Glibc
#endif

@Suite struct TrustTests {
    static let admin = Ed25519.KeyPair(seed: [UInt8](repeating: 1, count: 32))!
    static let rogueAdmin = Ed25519.KeyPair(seed: [UInt8](repeating: 2, count: 32))!
    static let nodeKey = Ed25519.KeyPair(seed: [UInt8](repeating: 3, count: 32))!
    static let otherNode = Ed25519.KeyPair(seed: [UInt8](repeating: 4, count: 32))!
    static let now: Int64 = 1_800_000_000_000
    static let day: Int64 = 86_400_000

    static func record(_ key: Ed25519.KeyPair = nodeKey, version: UInt64, expires: Int64 = now + day) -> [UInt8] {
        CapabilityRecord(origin: key.nodeID, version: version, incarnation: 1, issuedAtMillis: now, expiresAtMillis: expires,
                         apiAddress: "http://10.0.0.5:8080", gossipAddress: PeerAddress(host: "10.0.0.5", port: 7946), name: "gpu-1", region: "eu-west",
                         nodeType: "gpu",
                         models: [.init(name: "llama-3.1-8b", provider: "local", providerKind: "local", local: true, inputPer1M: 0, outputPer1M: 0, contextWindow: 131072),
                                  .init(name: "claude-sonnet", provider: "anthropic", providerKind: "anthropic", local: false, inputPer1M: 3, outputPer1M: 15)],
                         maxConcurrency: 8, inFlight: 2, gpus: [.init(name: "RTX 4090", memoryTotalMB: 24564, memoryUsedMB: 1000, utilizationPercent: 12)],
                         providers: [.init(name: "anthropic", kind: "anthropic", up: true, errorRate: 0.01, latencyMillis: 420)]).signed(by: key)
    }

    static func caStore() throws -> TrustStore {
        var store = TrustStore(mode: .ca(admin: admin.nodeID))
        let certificate = Certificate.issue(node: nodeKey.nodeID, name: "gpu-1", issuedAtMillis: now, expiresAtMillis: now + 90 * day, admin: admin)
        try store.admit(certificateBytes: certificate.bytes, for: nodeKey.nodeID, nowMillis: now)
        return store
    }

    @Test func record_roundTripsAndIsSignedByItsOrigin() throws {
        let bytes = Self.record(version: 3)
        let record = try CapabilityRecord(signed: bytes)
        #expect(record.origin == Self.nodeKey.nodeID)
        #expect(record.models.count == 2 && record.models[1].outputPer1M == 15)
        #expect(record.gpus.first?.name == "RTX 4090")
        #expect(record.canonicalBytes + Array(bytes.suffix(64)) == bytes, "canonical bytes are stable")
        var tampered = bytes
        tampered[60] ^= 1
        #expect(throws: Rejection.badSignature) { _ = try CapabilityRecord(signed: tampered) }
        #expect(throws: Rejection.malformed) { _ = try CapabilityRecord(signed: Array(bytes.prefix(50))) }
    }

    @Test func materialFingerprint_ignoresJitter_seesRealChanges() throws {
        let base = try CapabilityRecord(signed: Self.record(version: 1))
        var jitter = base
        jitter.version = 99
        jitter.issuedAtMillis += 5000
        jitter.inFlight = 3                                  // 2 → 3: same step of 4
        jitter.providers[0].latencyMillis = 900              // latency is not material
        jitter.providers[0].errorRate = 0.03                 // 0.01 → 0.03: same tenth
        jitter.gpus[0].memoryUsedMB = 1020                   // 1000 → 1020 MB: same GiB
        #expect(jitter.materialFingerprint == base.materialFingerprint)
        var load = base
        load.inFlight = 8
        #expect(load.materialFingerprint != base.materialFingerprint)
        var price = base
        price.models[1].outputPer1M = 16
        #expect(price.materialFingerprint != base.materialFingerprint)
        var down = base
        down.providers[0].up = false
        #expect(down.materialFingerprint != base.materialFingerprint)
        var memory = base
        memory.gpus[0].memoryUsedMB = 2100                   // into the next GiB
        #expect(memory.materialFingerprint != base.materialFingerprint)
        var spend = base
        spend.spend = [.init(key: "k", day: 1, amount: 0.5)]
        #expect(spend.materialFingerprint != base.materialFingerprint)
    }

    @Test func record_neverCarriesCredentials() {
        let text = String(decoding: Self.record(version: 1), as: UTF8.self)
        #expect(!text.contains("sk-"), "only names and prices travel")
    }

    @Test func certificate_admitsTheNode() throws {
        let store = try Self.caStore()
        #expect(store.isTrusted(Self.nodeKey.nodeID, nowMillis: Self.now))
        #expect(!store.isTrusted(Self.otherNode.nodeID, nowMillis: Self.now))
    }

    @Test func certificate_fromAnotherAdmin_isUntrusted() {
        var store = TrustStore(mode: .ca(admin: Self.admin.nodeID))
        let rogue = Certificate.issue(node: Self.nodeKey.nodeID, name: "x", issuedAtMillis: Self.now, expiresAtMillis: Self.now + Self.day, admin: Self.rogueAdmin)
        #expect(throws: Rejection.untrustedKey) { try store.admit(certificateBytes: rogue.bytes, for: Self.nodeKey.nodeID, nowMillis: Self.now) }
    }

    @Test func certificate_forAnotherNode_orTampered_isRefused() {
        var store = TrustStore(mode: .ca(admin: Self.admin.nodeID))
        let certificate = Certificate.issue(node: Self.nodeKey.nodeID, name: "x", issuedAtMillis: Self.now, expiresAtMillis: Self.now + Self.day, admin: Self.admin)
        #expect(throws: Rejection.untrustedKey) { try store.admit(certificateBytes: certificate.bytes, for: Self.otherNode.nodeID, nowMillis: Self.now) }
        var tampered = certificate.bytes
        tampered[tampered.count - 100] ^= 1  // inside the expiry field
        #expect(throws: Rejection.badSignature) { try store.admit(certificateBytes: tampered, for: Self.nodeKey.nodeID, nowMillis: Self.now) }
        #expect(throws: Rejection.malformed) { try store.admit(certificateBytes: [1, 2, 3], for: Self.nodeKey.nodeID, nowMillis: Self.now) }
    }

    @Test func certificate_expires() throws {
        let store = try Self.caStore()
        #expect(throws: Rejection.expiredCertificate) { try store.check(Self.nodeKey.nodeID, nowMillis: Self.now + 91 * Self.day) }
    }

    @Test func certificate_fileFormRoundTrips() throws {
        let certificate = Certificate.issue(node: Self.nodeKey.nodeID, name: "gpu-1", issuedAtMillis: Self.now, expiresAtMillis: Self.now + Self.day, admin: Self.admin)
        #expect(try Certificate(fileText: certificate.fileText) == certificate)
    }

    @Test func revocation_bansTheNode_andOnlyTheAdminMayRevoke() throws {
        var store = try Self.caStore()
        let forged = Revocation.issue(node: Self.nodeKey.nodeID, issuedAtMillis: Self.now, admin: Self.rogueAdmin)
        #expect(throws: Rejection.untrustedKey) { _ = try store.apply(revocationBytes: forged.bytes) }
        #expect(store.isTrusted(Self.nodeKey.nodeID, nowMillis: Self.now))
        let real = Revocation.issue(node: Self.nodeKey.nodeID, issuedAtMillis: Self.now, admin: Self.admin)
        #expect(try store.apply(revocationBytes: real.bytes) == true)
        #expect(try store.apply(revocationBytes: real.bytes) == false, "known already: not relayed again")
        #expect(throws: Rejection.revoked) { try store.check(Self.nodeKey.nodeID, nowMillis: Self.now) }
        var open = TrustStore(mode: .open)
        #expect(throws: Rejection.untrustedKey) { _ = try open.apply(revocationBytes: real.bytes) }
    }

    @Test func table_acceptsNewer_refusesReplay_untrusted_expired() throws {
        let store = try Self.caStore()
        var table = RecordTable()
        guard case .accepted = table.merge(Self.record(version: 5), trust: store, nowMillis: Self.now) else { Issue.record("v5 refused"); return }
        #expect(table.merge(Self.record(version: 5), trust: store, nowMillis: Self.now) == .stale)
        #expect(table.merge(Self.record(version: 4), trust: store, nowMillis: Self.now) == .rejected(.replay))
        if case .accepted(let record) = table.merge(Self.record(version: 6), trust: store, nowMillis: Self.now) { #expect(record.version == 6) } else { Issue.record("v6 refused") }
        #expect(table.merge(Self.record(Self.otherNode, version: 1), trust: store, nowMillis: Self.now) == .rejected(.untrustedKey))
        #expect(table.merge(Self.record(version: 7, expires: Self.now - 1), trust: store, nowMillis: Self.now) == .rejected(.expiredRecord))
        var open = RecordTable()
        if case .accepted = open.merge(Self.record(Self.otherNode, version: 1), trust: TrustStore(mode: .open), nowMillis: Self.now) {} else { Issue.record("open mode refused") }
    }

    @Test func table_scuttlebuttDigestsAndDeltas() throws {
        let trust = TrustStore(mode: .open)
        var mine = RecordTable(), theirs = RecordTable()
        _ = mine.merge(Self.record(version: 3), trust: trust, nowMillis: Self.now)
        _ = mine.merge(Self.record(Self.otherNode, version: 1), trust: trust, nowMillis: Self.now)
        _ = theirs.merge(Self.record(version: 2), trust: trust, nowMillis: Self.now)
        let delta = mine.newer(than: theirs.digest())
        #expect(delta.count == 2, "both records are newer than what they hold")
        #expect(theirs.wanted(from: mine.digest()).count == 2)
        for bytes in delta { _ = theirs.merge(bytes, trust: trust, nowMillis: Self.now) }
        #expect(theirs.digest() == mine.digest())
        #expect(mine.newer(than: theirs.digest()).isEmpty)
    }

    @Test func table_prunesRevokedAndExpired() throws {
        var store = try Self.caStore()
        var table = RecordTable()
        _ = table.merge(Self.record(version: 1, expires: Self.now + 1000), trust: store, nowMillis: Self.now)
        #expect(table.prune(trust: store, nowMillis: Self.now + 2000) == [Self.nodeKey.nodeID])
        _ = table.merge(Self.record(version: 2), trust: store, nowMillis: Self.now)
        _ = try store.apply(revocationBytes: Revocation.issue(node: Self.nodeKey.nodeID, issuedAtMillis: Self.now, admin: Self.admin).bytes)
        #expect(table.prune(trust: store, nowMillis: Self.now) == [Self.nodeKey.nodeID])
    }

    @Test func keyFile_isCreated0600_andRefusedWhenReadableByOthers() throws {
        let dir = temporaryDirectory("keys")
        let path = dir + "/sub/node.key"
        let (created, isNew) = try KeyFile.loadOrCreate(path: path, kind: "node")
        #expect(isNew)
        let (loaded, isNewAgain) = try KeyFile.loadOrCreate(path: path, kind: "node")
        #expect(!isNewAgain && loaded.publicKey == created.publicKey)
        var info = stat()
        stat(path, &info)
        #expect(info.st_mode & 0o777 == 0o600)
        chmod(path, 0o644)
        #expect(throws: IdentityError.self) { _ = try KeyFile.load(path: path, kind: "node") }
        do { _ = try KeyFile.load(path: path, kind: "node") } catch { #expect(error.description.contains("chmod 600")) }
        chmod(path, 0o600)
        _ = writeSmallFile(path, "garbage\n", mode: 0o600)
        #expect(throws: IdentityError.self) { _ = try KeyFile.load(path: path, kind: "node") }
    }
}
