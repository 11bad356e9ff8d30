import Foundation
import Gateway
import Logging
import MeshCore
import MeshState
import Membership
import NodeConfig
import Sodium
import Synchronization
import Transport
import Wire

/// Builds the mesh service from `node.mesh` (identity, trust, keys, seeds) and joins it to the gateway.
enum MeshSetup {
    /// Whether this configuration asks for the mesh at all.
    static func wanted(_ configuration: NodeConfiguration) -> Bool {
        let mesh = configuration.node.mesh
        return mesh.enabled || mesh.listenAddr != nil || !mesh.peers.isEmpty
    }

    static func make(configuration: NodeConfiguration, dataDir: String, logger: Logger, metrics: NodeMetrics) throws -> MeshService {
        let mesh = configuration.node.mesh
        let identity: Ed25519.KeyPair
        let created: Bool
        do {
            (identity, created) = try KeyFile.loadOrCreate(path: "\(dataDir)/node.key", kind: "node")
        } catch {
            throw NodeStartupError(error.description)
        }
        if created { logger.notice("created this node's key", metadata: ["node": "\(identity.nodeID.hex)", "file": "\(dataDir)/node.key"]) }

        var certificateBytes: [UInt8] = []
        let trust: TrustStore
        switch mesh.trustMode {
        case .open:
            trust = TrustStore(mode: .open)
            logger.warning("mesh trust mode is open: any node that can reach the gossip port may join; use trust.mode: ca outside a lab")
        case .ca:
            guard let adminText = mesh.adminPublicKey, let admin = NodeID(hex: adminText) else {
                throw NodeStartupError("node.mesh.trust.admin_public_key must be the mesh admin's public key (64 hex digits, printed by `aimesh mesh init`)")
            }
            guard let path = mesh.certificatePath else {
                throw NodeStartupError("node.mesh.trust.certificate is required in ca mode: ask the mesh admin for one with `aimesh mesh admit \(identity.nodeID.hex) --name NAME`")
            }
            guard let text = readSmallFile(path), let certificate = try? Certificate(fileText: text) else {
                throw NodeStartupError("\(path): not an aimesh node certificate")
            }
            guard certificate.node == identity.nodeID else {
                throw NodeStartupError("\(path): the certificate is for node \(certificate.node.short), but this node is \(identity.nodeID.short) (\(dataDir)/node.key)")
            }
            guard certificate.admin == admin, certificate.isSignatureValid else {
                throw NodeStartupError("\(path): the certificate is not signed by the mesh admin key in node.mesh.trust.admin_public_key")
            }
            guard certificate.expiresAtMillis > wallClockMillis() else {
                throw NodeStartupError("\(path): the certificate expired; ask the mesh admin for a new one")
            }
            certificateBytes = certificate.bytes
            trust = TrustStore(mode: .ca(admin: admin))
        }

        var keys: [Packet.MeshKey] = []
        for (index, secret) in mesh.secretKeys.enumerated() {
            guard let key = Packet.MeshKey(text: secret.value) else {
                throw NodeStartupError("node.mesh.secret_keys[\(index)] must be 32 bytes as 64 hex digits or base64 (make one with `aimesh mesh keygen`)")
            }
            keys.append(key)
        }

        let listen = mesh.listenAddr ?? HostPort(host: "127.0.0.1", port: 7946)
        var advertise: PeerAddress?
        if let addr = mesh.advertiseAddr { advertise = PeerAddress(host: addr.host, port: UInt16(clamping: addr.port)) }
        var seeds: [PeerAddress] = []
        for peer in mesh.peers {
            guard let address = PeerAddress(parsing: peer.address) else { throw NodeStartupError("node.mesh.peers: '\(peer.address)' is not HOST:PORT") }
            seeds.append(address)
        }
        var swim = SwimSettings()
        swim.probeInterval = mesh.probeInterval
        swim.probeTimeout = mesh.probeTimeout
        swim.indirectChecks = mesh.indirectChecks
        swim.suspicionMultiplier = mesh.suspicionMultiplier
        swim.gossipInterval = mesh.gossipInterval
        swim.gossipFanout = mesh.gossipFanout
        swim.retransmitMultiplier = mesh.retransmitMultiplier
        var agent = AgentSettings()
        agent.pushPullInterval = mesh.pushPullInterval
        var settings = MeshServiceSettings(listenHost: listen.host, listenPort: listen.port, advertise: advertise, seeds: seeds, meshKeys: keys,
                                           swim: swim, agent: agent, recordTTL: mesh.recordTTL)
        settings.maxHops = mesh.maxHops
        settings.keyAdmin = mesh.adminPublicKey.flatMap(NodeID.init(hex:))
        let persistence: MeshPersistence?
        do { persistence = try MeshPersistence(path: "\(dataDir)/mesh.sqlite") } catch {
            throw NodeStartupError("cannot open \(dataDir)/mesh.sqlite: \(error)")
        }
        // Resolved once: the traffic callback runs for every gossip packet.
        let traffic = Dictionary(uniqueKeysWithValues: ["udp", "tcp"].map { transport in
            (transport, Dictionary(uniqueKeysWithValues: ["sent", "received"].map { direction in
                let labels = [("transport", transport), ("direction", direction)]
                return (direction, (bytes: metrics.counter("aimesh_gossip_bytes_total", labels), packets: metrics.counter("aimesh_gossip_packets_total", labels)))
            }))
        })
        return MeshService(identity: identity, certificate: certificateBytes, trust: trust, settings: settings, persistence: persistence, logger: logger,
                           onRejection: { reason in metrics.counter("aimesh_gossip_rejected_total", [("reason", reason)]).increment() },
                           onEvent: { event, _ in metrics.counter("aimesh_mesh_events_total", [("event", event)]).increment() },
                           onTraffic: { transport, direction, bytes in
                               guard let counters = traffic[transport]?[direction] else { return }
                               counters.bytes.increment(by: Int64(bytes))
                               counters.packets.increment()
                           })
    }

    /// What this node advertises: its models with prices, providers' health (never credentials), load, GPUs.
    static func recordContent(gateway: Gateway, configuration: NodeConfiguration, apiAddress: @escaping @Sendable () -> String, gpus: GPUProbe) -> RecordContent {
        { () -> CapabilityRecord in
            let now = ContinuousClock.now
            var models: [CapabilityRecord.Model] = []
            for (name, entries) in gateway.catalog.entries.sorted(by: { $0.key < $1.key }) {
                for entry in entries {
                    models.append(.init(name: name, provider: entry.provider.name, providerKind: entry.provider.vendor, local: entry.provider.isLocal,
                                        inputPer1M: entry.model.price.inputPer1M, outputPer1M: entry.model.price.outputPer1M,
                                        contextWindow: UInt32(clamping: entry.model.contextWindow ?? 0), capabilities: entry.route.candidate.capabilities))
                }
            }
            let snapshots = Dictionary(uniqueKeysWithValues: gateway.board.snapshot(now: now).map { ($0.id, $0) })
            var providers: [CapabilityRecord.ProviderHealth] = []
            var inFlight = 0
            var capacity = 0
            for provider in gateway.catalog.providers where provider.enabled {
                let snapshot = snapshots["provider/\(provider.name)"]
                inFlight += snapshot?.inFlight ?? 0
                capacity += provider.maxConcurrency ?? 0
                let up: Bool
                switch snapshot?.breaker {
                case .open?: up = false
                default: up = true
                }
                providers.append(.init(name: provider.name, kind: provider.vendor, up: up, errorRate: snapshot?.errorRate ?? 0,
                                       latencyMillis: snapshot?.latency.map { $0.millisecondsRounded } ?? 0))
            }
            let today = KeyBudgets.day(millis: wallClockMillis())
            let minute = KeyRequestCounts.minute(millis: wallClockMillis())
            let spend = gateway.keyBudgets.counters(days: [today, today &- 1]).map { CapabilityRecord.SpendCounter(key: $0.key, day: $0.day, amount: $0.amount) }
                + gateway.keyRequests.counters(minutes: [minute]).map {
                    CapabilityRecord.SpendCounter(key: $0.key.hasPrefix("tokens:") ? $0.key : "requests:" + $0.key, day: $0.minute, amount: Double($0.count))
                }
            return CapabilityRecord(origin: NodeID(testNumber: 0), version: 0, issuedAtMillis: 0, expiresAtMillis: 0, apiAddress: apiAddress(),
                                    gossipAddress: PeerAddress(host: "0.0.0.0", port: 1), name: configuration.node.name ?? configuration.node.id,
                                    region: configuration.node.region, nodeType: configuration.node.type.rawValue, models: models,
                                    maxConcurrency: UInt32(clamping: capacity), inFlight: UInt32(clamping: inFlight), queued: 0, gpus: gpus.current(), providers: providers,
                                    spend: spend)
        }
    }

    /// The AIProxy standard's `peers` list for `/aiproxy/mesh/status`, plus this node's mesh identity.
    static func statusJSON(_ service: MeshService) -> JSON {
        let records = Dictionary(uniqueKeysWithValues: service.records().map { ($0.record.origin, $0.record) })
        let peers: [JSON] = service.members().map { member in
            let record = records[member.id]
            var object: JSONObject = [
                "id": .string(record?.name.isEmpty == false ? record!.name : member.id.short), "node_id": .string(member.id.hex),
                "addr": .string(member.address.description), "status": .string(peerStatus(member.status)), "incarnation": .int(Int(member.incarnation)),
            ]
            object["latency_ms"] = service.roundTrip(to: member.id).map { .double($0.millisecondsRounded) } ?? .null
            if let record {
                let load = record.maxConcurrency > 0 ? min(1, Double(record.inFlight) / Double(record.maxConcurrency)) : (record.inFlight > 0 ? 1 : 0)
                object["load"] = .double((load * 1000).rounded() / 1000)
                object["models_available"] = .array(Array(Set(record.models.map(\.name))).sorted().map(JSON.string))
                object["region"] = .string(record.region)
                object["api"] = .string(record.apiAddress)
            } else {
                object["load"] = .null
                object["models_available"] = []
            }
            return .object(object)
        }
        return ["peers": .array(peers), "mesh": ["node_id": .string(service.nodeID.hex), "gossip": .string(service.address.description),
                                                   "incarnation": .int(Int(service.incarnation)), "members": .int(service.members().filter { $0.status == .alive }.count + 1)]]
    }

    static func peerStatus(_ status: MemberStatus) -> String {
        switch status {
        case .alive: "healthy"
        case .suspect: "suspect"
        case .dead: "unreachable"
        case .left: "left"
        }
    }

    /// `GET /aiproxy/mesh/topology`: every node this one knows (itself first) and the edges it measured.
    static func topologyJSON(_ service: MeshService, selfName: String) -> JSON {
        let members = Dictionary(uniqueKeysWithValues: service.members().map { ($0.id, $0) })
        let records = Dictionary(uniqueKeysWithValues: service.records().map { ($0.record.origin, $0.record) })
        func name(_ id: NodeID) -> String {
            if id == service.nodeID { return selfName }
            if let record = records[id], !record.name.isEmpty { return record.name }
            return id.short
        }
        var ids = [service.nodeID]
        ids += members.keys.sorted { name($0) < name($1) }
        for id in records.keys where !ids.contains(id) { ids.append(id) }
        let nodes: [JSON] = ids.map { id in
            var object: JSONObject = ["id": .string(id.hex), "name": .string(name(id)), "self": .bool(id == service.nodeID)]
            if id == service.nodeID {
                object["status"] = "healthy"
                object["gossip"] = .string(service.address.description)
            } else if let member = members[id] {
                object["status"] = .string(peerStatus(member.status))
                object["gossip"] = .string(member.address.description)
            } else {
                object["status"] = "unknown"
            }
            if let record = records[id] {
                object["api"] = .string(record.apiAddress)
                object["region"] = .string(record.region)
                object["type"] = .string(record.nodeType)
                let load = record.maxConcurrency > 0 ? min(1, Double(record.inFlight) / Double(record.maxConcurrency)) : 0
                object["load"] = .double((load * 1000).rounded() / 1000)
                object["in_flight"] = .int(Int(record.inFlight))
                object["models"] = .array(record.models.map { ["name": .string($0.name), "provider": .string($0.provider), "kind": .string($0.providerKind),
                                                               "local": .bool($0.local), "input_cost_per_1m": .double($0.inputPer1M),
                                                               "output_cost_per_1m": .double($0.outputPer1M)] })
                object["gpus"] = .array(record.gpus.map { ["name": .string($0.name), "memory_total_mb": .int(Int($0.memoryTotalMB)),
                                                           "memory_used_mb": .int(Int($0.memoryUsedMB)), "utilization_percent": .int(Int($0.utilizationPercent))] })
            } else {
                object["models"] = []
                object["gpus"] = []
            }
            return .object(object)
        }
        let edges: [JSON] = members.values.filter { $0.status == .alive || $0.status == .suspect }.sorted { name($0.id) < name($1.id) }.map { member in
            ["from": .string(selfName), "to": .string(name(member.id)),
             "rtt_ms": service.roundTrip(to: member.id).map { .double($0.millisecondsRounded) } ?? .null,
             "status": .string(peerStatus(member.status))]
        }
        return ["node": .string(selfName), "nodes": .array(nodes), "edges": .array(edges)]
    }

    /// `GET /aiproxy/mesh/table`: every record with this node's own view of its origin.
    static func tableJSON(_ service: MeshService, board: RouteBoard? = nil) -> JSON {
        let now = ContinuousClock.now
        let members = Dictionary(uniqueKeysWithValues: service.members().map { ($0.id, $0) })
        let rows: [JSON] = service.records().map { entry in
            let record = entry.record
            var object: JSONObject = [
                "origin": .string(record.origin.hex), "name": .string(record.name), "version": .int(Int(record.version)),
                "incarnation": .int(Int(record.incarnation)), "issued_at_ms": .int(Int(record.issuedAtMillis)), "expires_at_ms": .int(Int(record.expiresAtMillis)),
                "api": .string(record.apiAddress), "gossip": .string(record.gossipAddress.description), "region": .string(record.region),
                "type": .string(record.nodeType), "self": .bool(record.origin == service.nodeID),
                "capacity": ["max_concurrency": .int(Int(record.maxConcurrency)), "in_flight": .int(Int(record.inFlight)), "queued": .int(Int(record.queued))],
            ]
            object["models"] = .array(record.models.map { model in
                ["name": .string(model.name), "provider": .string(model.provider), "provider_kind": .string(model.providerKind), "local": .bool(model.local),
                 "input_cost_per_1m": .double(model.inputPer1M), "output_cost_per_1m": .double(model.outputPer1M),
                 "context_window": .int(Int(model.contextWindow)), "capabilities": .array(model.capabilities.map(JSON.string))]
            })
            object["gpus"] = .array(record.gpus.map { ["name": .string($0.name), "memory_total_mb": .int(Int($0.memoryTotalMB)),
                                                       "memory_used_mb": .int(Int($0.memoryUsedMB)), "utilization_percent": .int(Int($0.utilizationPercent))] })
            object["providers"] = .array(record.providers.map { ["name": .string($0.name), "kind": .string($0.kind), "up": .bool($0.up),
                                                                 "error_rate": .double($0.errorRate), "latency_ms": .double($0.latencyMillis)] })
            var observed: JSONObject = [:]
            if let member = members[record.origin] {
                observed["status"] = .string(peerStatus(member.status))
                observed["rtt_ms"] = service.roundTrip(to: record.origin).map { .double($0.millisecondsRounded) } ?? .null
                // How forwarding to it has gone from here (the route `peer/NAME` of this node's board).
                if let forwards = board?.snapshot(of: "peer/\(record.name.isEmpty ? record.origin.short : record.name)", now: now) {
                    observed["forwards"] = ["successes": .int(forwards.successes), "failures": .int(forwards.failures),
                                            "error_rate": .double((forwards.errorRate * 1000).rounded() / 1000), "breaker": .string(forwards.breaker.name)]
                } else {
                    observed["forwards"] = ["successes": 0, "failures": 0, "error_rate": 0, "breaker": "closed"]
                }
            } else if record.origin == service.nodeID {
                observed["status"] = "self"
            } else {
                observed["status"] = "unknown"
            }
            object["observed"] = .object(observed)
            return .object(object)
        }
        return ["node_id": .string(service.nodeID.hex), "records": .array(rows)]
    }
}

/// GPUs from `nvidia-smi` (when it is on PATH), refreshed in the background every 15 seconds.
public final class GPUProbe: Sendable {
    /// The program asked (looked up on PATH unless a path). Tests point it at a fake one: changing PATH
    /// with `setenv` while another thread starts a process (this prober, a test's child) can crash it.
    public static let command = Mutex("nvidia-smi")

    private let cached = Mutex<[CapabilityRecord.GPU]>([])
    private let started = Mutex(false)

    /// The GPUs as last probed. The first call starts the prober on its own thread and returns at once
    /// (it may be called on an event loop); the next re-advertise check picks the result up.
    func current() -> [CapabilityRecord.GPU] {
        let first = started.withLock { value -> Bool in defer { value = true }; return !value }
        if first {
            Thread.detachNewThread { [self] in
                while true {
                    let gpus = GPUProbe.query()
                    cached.withLock { $0 = gpus }
                    Thread.sleep(forTimeInterval: 15)
                }
            }
        }
        return cached.withLock { $0 }
    }

    /// Runs `nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits`.
    static func query() -> [CapabilityRecord.GPU] {
        let arguments = [command.withLock { $0 }, "--query-gpu=name,memory.total,memory.used,utilization.gpu", "--format=csv,noheader,nounits"]
        guard let child = try? ChildProcess(program: "/usr/bin/env", arguments: arguments, stdout: .pipe, stderr: .discard) else { return [] }
        let output = child.readOutput(limit: 1 << 20)
        guard child.wait() == .exited(0) else { return [] }
        return parse(String(decoding: output, as: UTF8.self))
    }

    static func parse(_ text: String) -> [CapabilityRecord.GPU] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard fields.count >= 4, let total = UInt32(fields[1]), let used = UInt32(fields[2]), let util = UInt8(fields[3]) else { return nil }
            return CapabilityRecord.GPU(name: fields[0], memoryTotalMB: total, memoryUsedMB: used, utilizationPercent: util)
        }
    }
}
