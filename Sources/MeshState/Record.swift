import MeshCore
import Sodium
import Wire

/// What one node tells the mesh about itself (PROTOCOL.md §6). Prices and capabilities, never
/// credentials: `providers` names the accounts a node holds, not their keys.
public struct CapabilityRecord: Sendable, Equatable {
    public struct Model: Sendable, Equatable {
        public var name: String
        /// The provider on the origin node that serves it (e.g. "local", "groq").
        public var provider: String
        /// The provider's type: local (a GPU server on that machine) or which cloud.
        public var providerKind: String
        public var local: Bool
        public var inputPer1M: Double
        public var outputPer1M: Double
        public var contextWindow: UInt32
        public var capabilities: [String]

        public init(name: String, provider: String, providerKind: String, local: Bool, inputPer1M: Double, outputPer1M: Double,
                    contextWindow: UInt32 = 0, capabilities: [String] = ["chat"]) {
            self.name = name
            self.provider = provider
            self.providerKind = providerKind
            self.local = local
            self.inputPer1M = inputPer1M
            self.outputPer1M = outputPer1M
            self.contextWindow = contextWindow
            self.capabilities = capabilities
        }
    }

    public struct GPU: Sendable, Equatable {
        public var name: String
        public var memoryTotalMB: UInt32
        public var memoryUsedMB: UInt32
        public var utilizationPercent: UInt8
        public init(name: String, memoryTotalMB: UInt32, memoryUsedMB: UInt32, utilizationPercent: UInt8) {
            self.name = name
            self.memoryTotalMB = memoryTotalMB
            self.memoryUsedMB = memoryUsedMB
            self.utilizationPercent = utilizationPercent
        }
    }

    public struct ProviderHealth: Sendable, Equatable {
        public var name: String
        public var kind: String
        public var up: Bool
        public var errorRate: Double
        public var latencyMillis: Double
        public init(name: String, kind: String, up: Bool, errorRate: Double, latencyMillis: Double) {
            self.name = name
            self.kind = kind
            self.up = up
            self.errorRate = errorRate
            self.latencyMillis = latencyMillis
        }
    }

    /// Grow-only spend of one API key on this node for one UTC day (mesh-wide budgets sum them).
    public struct SpendCounter: Sendable, Equatable {
        public var key: String
        /// Days since 1970-01-01 (UTC).
        public var day: UInt32
        public var amount: Double
        public init(key: String, day: UInt32, amount: Double) {
            self.key = key
            self.day = day
            self.amount = amount
        }
    }

    static let magic: [UInt8] = Array("AMK1".utf8)

    public var origin: NodeID
    /// Monotonic per origin, never backwards across restarts (persisted, and at least the wall clock in ms).
    public var version: UInt64
    public var incarnation: UInt64
    public var issuedAtMillis: Int64
    public var expiresAtMillis: Int64
    /// The node's HTTP API base URL, for forwarding.
    public var apiAddress: String
    public var gossipAddress: PeerAddress
    public var name: String
    public var region: String
    public var nodeType: String
    public var models: [Model]
    public var maxConcurrency: UInt32
    public var inFlight: UInt32
    public var queued: UInt32
    public var gpus: [GPU]
    public var providers: [ProviderHealth]
    public var spend: [SpendCounter] = []

    public init(origin: NodeID, version: UInt64, incarnation: UInt64 = 0, issuedAtMillis: Int64, expiresAtMillis: Int64, apiAddress: String,
                gossipAddress: PeerAddress, name: String = "", region: String = "", nodeType: String = "standalone", models: [Model] = [],
                maxConcurrency: UInt32 = 0, inFlight: UInt32 = 0, queued: UInt32 = 0, gpus: [GPU] = [], providers: [ProviderHealth] = [], spend: [SpendCounter] = []) {
        self.spend = spend
        self.origin = origin
        self.version = version
        self.incarnation = incarnation
        self.issuedAtMillis = issuedAtMillis
        self.expiresAtMillis = expiresAtMillis
        self.apiAddress = apiAddress
        self.gossipAddress = gossipAddress
        self.name = name
        self.region = region
        self.nodeType = nodeType
        self.models = models
        self.maxConcurrency = maxConcurrency
        self.inFlight = inFlight
        self.queued = queued
        self.gpus = gpus
        self.providers = providers
    }

    static let maxModels = 2048
    static let maxCapabilities = 32
    static let maxGPUs = 64
    static let maxProviders = 255
    static let maxSpend = 4096

    /// The canonical bytes the signature covers.
    public var canonicalBytes: [UInt8] {
        var w = ByteWriter(capacity: 256 + models.count * 64)
        w.raw(CapabilityRecord.magic)
        w.nodeID(origin)
        w.u64(version)
        w.u64(incarnation)
        w.i64(issuedAtMillis)
        w.i64(expiresAtMillis)
        w.string8(apiAddress)
        w.address(gossipAddress)
        w.string8(name)
        w.string8(region)
        w.string8(nodeType)
        w.u16(UInt16(min(models.count, CapabilityRecord.maxModels)))
        for model in models.prefix(CapabilityRecord.maxModels) {
            w.string8(model.name)
            w.string8(model.provider)
            w.string8(model.providerKind)
            w.bool(model.local)
            w.f64(model.inputPer1M)
            w.f64(model.outputPer1M)
            w.u32(model.contextWindow)
            w.u8(UInt8(min(model.capabilities.count, CapabilityRecord.maxCapabilities)))
            for capability in model.capabilities.prefix(CapabilityRecord.maxCapabilities) { w.string8(capability) }
        }
        w.u32(maxConcurrency)
        w.u32(inFlight)
        w.u32(queued)
        w.u8(UInt8(min(gpus.count, CapabilityRecord.maxGPUs)))
        for gpu in gpus.prefix(CapabilityRecord.maxGPUs) {
            w.string8(gpu.name)
            w.u32(gpu.memoryTotalMB)
            w.u32(gpu.memoryUsedMB)
            w.u8(gpu.utilizationPercent)
        }
        w.u8(UInt8(min(providers.count, CapabilityRecord.maxProviders)))
        for provider in providers.prefix(CapabilityRecord.maxProviders) {
            w.string8(provider.name)
            w.string8(provider.kind)
            w.bool(provider.up)
            w.f64(provider.errorRate)
            w.f64(provider.latencyMillis)
        }
        w.u16(UInt16(min(spend.count, CapabilityRecord.maxSpend)))
        for counter in spend.prefix(CapabilityRecord.maxSpend) {
            w.string8(counter.key)
            w.u32(counter.day)
            w.f64(counter.amount)
        }
        return w.bytes
    }

    /// What decides whether a changed record is worth re-advertising: everything but version and
    /// times, with load, GPU memory and utilisation, error rate and latency coarsened (in-flight and
    /// queued in steps of 4, memory per GiB, utilisation per 25 %, error rate to 0.1, latency ignored),
    /// so that jitter does not flood the mesh with new versions.
    public var materialFingerprint: [UInt8] {
        var coarse = self
        coarse.version = 0
        coarse.issuedAtMillis = 0
        coarse.expiresAtMillis = 0
        coarse.inFlight /= 4
        coarse.queued /= 4
        coarse.gpus = gpus.map { var gpu = $0; gpu.memoryUsedMB /= 1024; gpu.utilizationPercent /= 25; return gpu }
        coarse.providers = providers.map { .init(name: $0.name, kind: $0.kind, up: $0.up, errorRate: ($0.errorRate * 10).rounded(), latencyMillis: 0) }
        return coarse.canonicalBytes
    }

    /// Canonical bytes plus the origin's signature: what travels and is relayed unchanged.
    public func signed(by key: Ed25519.KeyPair) -> [UInt8] {
        precondition(key.nodeID == origin, "a record is signed by its origin")
        let body = canonicalBytes
        return body + key.sign(body)
    }

    /// Parses and verifies the origin's signature. Trust (certificates) is the table's business.
    public init(signed bytes: [UInt8]) throws(Rejection) {
        guard bytes.count <= WireLimits.maxRecordBytes else { throw .oversized }
        guard bytes.count > 64 else { throw .malformed }
        let bodyEnd = bytes.count - 64
        var r = ByteReader(bytes, offset: 0, end: bodyEnd)
        do {
            guard try r.raw(4) == CapabilityRecord.magic else { throw Rejection.malformed }
            origin = try r.nodeID()
            version = try r.u64()
            incarnation = try r.u64()
            issuedAtMillis = try r.i64()
            expiresAtMillis = try r.i64()
            apiAddress = try r.string8(what: "api address")
            gossipAddress = try r.address()
            name = try r.string8(what: "name")
            region = try r.string8(what: "region")
            nodeType = try r.string8(what: "node type")
            let modelCount = try r.count16(max: CapabilityRecord.maxModels, what: "models")
            models = []
            for _ in 0..<modelCount {
                let name = try r.string8(what: "model name"), provider = try r.string8(what: "provider"), kind = try r.string8(what: "provider kind")
                let local = try r.bool()
                let input = try r.f64(), output = try r.f64()
                guard input >= 0, output >= 0 else { throw Rejection.malformed }
                let context = try r.u32()
                let capabilityCount = Int(try r.u8())
                guard capabilityCount <= CapabilityRecord.maxCapabilities else { throw Rejection.malformed }
                var capabilities: [String] = []
                for _ in 0..<capabilityCount { capabilities.append(try r.string8(what: "capability")) }
                models.append(Model(name: name, provider: provider, providerKind: kind, local: local, inputPer1M: input, outputPer1M: output,
                                    contextWindow: context, capabilities: capabilities))
            }
            maxConcurrency = try r.u32()
            inFlight = try r.u32()
            queued = try r.u32()
            let gpuCount = Int(try r.u8())
            guard gpuCount <= CapabilityRecord.maxGPUs else { throw Rejection.malformed }
            gpus = []
            for _ in 0..<gpuCount {
                gpus.append(GPU(name: try r.string8(what: "gpu"), memoryTotalMB: try r.u32(), memoryUsedMB: try r.u32(), utilizationPercent: try r.u8()))
            }
            let providerCount = Int(try r.u8())
            providers = []
            for _ in 0..<providerCount {
                providers.append(ProviderHealth(name: try r.string8(what: "provider"), kind: try r.string8(what: "provider kind"), up: try r.bool(),
                                                errorRate: try r.f64(), latencyMillis: try r.f64()))
            }
            let spendCount = try r.count16(max: CapabilityRecord.maxSpend, what: "spend counters")
            spend = []
            for _ in 0..<spendCount {
                let counter = SpendCounter(key: try r.string8(what: "key"), day: try r.u32(), amount: try r.f64())
                guard counter.amount >= 0 else { throw Rejection.malformed }
                spend.append(counter)
            }
            try r.expectEnd()
        } catch let error as Rejection {
            throw error
        } catch {
            throw .malformed
        }
        guard Ed25519.verify(signature: Array(bytes[bodyEnd...]), message: Array(bytes[..<bodyEnd]), publicKey: origin.bytes) else {
            throw .badSignature
        }
    }
}

/// The mesh table: the newest signed record per origin (scuttlebutt: digests of versions, deltas of
/// records). Pure: the caller passes the wall clock for expiry and the trust store for admission.
public struct RecordTable: Sendable {
    public struct Entry: Sendable {
        public var record: CapabilityRecord
        /// The bytes as the origin signed them, relayed unchanged.
        public var bytes: [UInt8]
        public var receivedAtMillis: Int64
    }

    public enum MergeResult: Sendable, Equatable {
        case accepted(CapabilityRecord)
        case stale
        case rejected(Rejection)
    }

    public private(set) var entries: [NodeID: Entry] = [:]

    public init() {}

    /// Verifies and stores a record if it is newer than what is held.
    public mutating func merge(_ bytes: [UInt8], trust: TrustStore, nowMillis: Int64) -> MergeResult {
        let record: CapabilityRecord
        do {
            record = try CapabilityRecord(signed: bytes)
            try trust.check(record.origin, nowMillis: nowMillis)
        } catch {
            return .rejected(error)
        }
        guard record.expiresAtMillis > nowMillis else { return .rejected(.expiredRecord) }
        if let held = entries[record.origin], held.record.version >= record.version {
            return held.record.version == record.version ? .stale : .rejected(.replay)
        }
        entries[record.origin] = Entry(record: record, bytes: bytes, receivedAtMillis: nowMillis)
        return .accepted(record)
    }

    /// Stores this node's own record (already signed) without the checks.
    public mutating func setOwn(_ bytes: [UInt8], record: CapabilityRecord, nowMillis: Int64) {
        entries[record.origin] = Entry(record: record, bytes: bytes, receivedAtMillis: nowMillis)
    }

    public func digest() -> [DigestEntry] {
        entries.values.map { DigestEntry(origin: $0.record.origin, version: $0.record.version) }.sorted { $0.origin < $1.origin }
    }

    /// Records this table holds that are newer than the peer's digest says it has.
    public func newer(than digest: [DigestEntry]) -> [[UInt8]] {
        var theirs: [NodeID: UInt64] = [:]
        for entry in digest { theirs[entry.origin] = entry.version }
        return entries.values.filter { entry in (theirs[entry.record.origin] ?? 0) < entry.record.version }
            .sorted { $0.record.origin < $1.record.origin }.map(\.bytes)
    }

    /// Origins for which the peer's digest shows a newer version than held here.
    public func wanted(from digest: [DigestEntry]) -> [NodeID] {
        digest.filter { (entries[$0.origin]?.record.version ?? 0) < $0.version }.map(\.origin)
    }

    /// Drops expired records and those of revoked or untrusted origins; returns the origins dropped.
    public mutating func prune(trust: TrustStore, nowMillis: Int64, keep: NodeID? = nil) -> [NodeID] {
        var dropped: [NodeID] = []
        for (origin, entry) in entries where origin != keep {
            if entry.record.expiresAtMillis <= nowMillis || !trust.isTrusted(origin, nowMillis: nowMillis) {
                entries[origin] = nil
                dropped.append(origin)
            }
        }
        return dropped
    }

    public mutating func remove(_ origin: NodeID) { entries[origin] = nil }
}
