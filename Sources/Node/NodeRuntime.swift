import CurlHTTP
import Gateway
import Hummingbird
import HummingbirdCore
import Ledger
import Logging
import MeshCore
import NIOCore
import NodeConfig
import ServiceLifecycle
import MeshState
import Transport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Command-line values that override the configuration file.
public struct NodeOverrides: Sendable {
    public var apiListen: HostPort?
    public var dataDir: String?
    public var nodeID: String?
    public var gossipListen: HostPort?
    public var peers: [String]?
    public init(apiListen: HostPort? = nil, dataDir: String? = nil, nodeID: String? = nil, gossipListen: HostPort? = nil, peers: [String]? = nil) {
        self.apiListen = apiListen
        self.dataDir = dataDir
        self.nodeID = nodeID
        self.gossipListen = gossipListen
        self.peers = peers
    }

    public func apply(to configuration: inout NodeConfiguration) {
        if let apiListen { configuration.server.listenAddr = apiListen }
        if let dataDir { configuration.node.dataDir = dataDir }
        if let nodeID { configuration.node.id = nodeID }
        if let gossipListen {
            configuration.node.mesh.listenAddr = gossipListen
            configuration.node.mesh.enabled = true
        }
        if let peers {
            configuration.node.mesh.peers = peers.map { SeedPeer(address: $0) }
            configuration.node.mesh.enabled = true
        }
    }
}

public struct NodeStartupError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The composition root: configuration → ledger, HTTP client, gateway, HTTP server → one ServiceGroup.
public final class NodeRuntime: Sendable {
    public let configuration: NodeConfiguration
    public let gateway: Gateway
    public let ledger: Ledger?
    public let client: CurlClient
    /// The mesh service, when `node.mesh` is on.
    public let mesh: MeshService?
    let logger: Logger
    private let listening = Eventual<Int>()
    private let group = Mutex<ServiceGroup?>(nil)

    public init(configuration: NodeConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let dataDir = configuration.node.resolvedDataDir
        try NodeRuntime.makeDirectory(dataDir)
        var clientConfiguration = CurlClient.Configuration()
        clientConfiguration.batchScheduling = configuration.server.batchIOScheduling
        let client = CurlClient(configuration: clientConfiguration)
        self.client = client
        var ledger: Ledger?
        var spend: (day: Double, month: Double) = (0, 0)
        if configuration.budget.trackCosts {
            let path = configuration.budget.costDBPath ?? "\(dataDir)/ledger.sqlite"
            do {
                let opened = try Ledger(path: path, logger: logger)
                ledger = opened
                let reader = try LedgerReader(path: path)
                let now = wallClockMillis()
                spend = (try reader.spend(sinceMillis: BudgetPeriod.dayStart(millis: now)), try reader.spend(sinceMillis: BudgetPeriod.monthStart(millis: now)))
            } catch {
                throw NodeStartupError("cannot open the ledger at \(path): \(error)")
            }
        }
        self.ledger = ledger
        let metrics = NodeMetrics()
        var mesh: MeshService?
        if MeshSetup.wanted(configuration) {
            mesh = try MeshSetup.make(configuration: configuration, dataDir: dataDir, logger: logger, metrics: metrics)
        }
        self.mesh = mesh
        var meshStatus: (@Sendable () -> JSON)?
        var meshTable: (@Sendable () -> JSON)?
        var meshRevoke: (@Sendable (String) -> String?)?
        var meshTopology: (@Sendable () -> JSON)?
        var meshKeyLookup: (@Sendable ([UInt8]) -> ClientKey?)?
        var meshKeySubmit: (@Sendable (String) -> String?)?
        var meshKeySpend: (@Sendable (String, UInt32) -> Double)?
        var adminCheck: (@Sendable (String?, String, String) -> Bool)?
        var meshKeyRequests: (@Sendable (String, UInt32) -> Int)?
        var meshReachability: (@Sendable () -> (unreachable: Bool, nodes: Int))?
        let selfName = configuration.node.name ?? configuration.node.id
        // The gateway's route board (built just below) holds this node's forwarding record per peer.
        let boardBox = Eventual<RouteBoard>()
        if let service = mesh {
            meshTopology = { MeshSetup.topologyJSON(service, selfName: selfName) }
            meshKeySubmit = { text in service.submitKey(text: text) }
            meshKeyLookup = { hash in
                guard let record = service.apiKey(hash: hash) else { return nil }
                return ClientKey(name: record.name, models: record.models, requestsPerMinute: record.requestsPerMinute > 0 ? Int(record.requestsPerMinute) : nil,
                                 tokensPerMinute: record.tokensPerMinute > 0 ? Int(record.tokensPerMinute) : nil, usable: record.isUsable(nowMillis: wallClockMillis()),
                                 dailyBudget: record.dailyBudget > 0 ? record.dailyBudget : nil)
            }
            if let admin = configuration.node.mesh.adminPublicKey.flatMap(NodeID.init(hex:)) {
                adminCheck = { header, method, target in
                    guard let header, let signer = AdminSignature.verify(header, method: method, target: target, nowMillis: wallClockMillis()) else { return false }
                    // The admin, or a node the mesh certified (ca mode).
                    return signer == admin || (configuration.node.mesh.trustMode == .ca && service.trust.isTrusted(signer, nowMillis: wallClockMillis()))
                }
            }
            meshReachability = {
                let members = service.members().filter { $0.status != .left }
                return (members.contains { $0.status != .alive }, members.count + 1)
            }
            meshKeyRequests = { key, minute in
                let name = key.hasPrefix("tokens:") ? key : "requests:" + key
                return service.records().filter { $0.record.origin != service.nodeID }.reduce(0) { total, entry in
                    total + entry.record.spend.filter { $0.key == name && $0.day == minute }.reduce(0) { $0 + Int($1.amount) }
                }
            }
            meshKeySpend = { key, day in
                service.records().filter { $0.record.origin != service.nodeID }.reduce(0) { total, entry in
                    total + entry.record.spend.filter { $0.key == key && $0.day == day }.reduce(0) { $0 + $1.amount }
                }
            }
            meshStatus = { MeshSetup.statusJSON(service) }
            meshTable = { MeshSetup.tableJSON(service, board: boardBox.current) }
            meshRevoke = { text in service.submitRevocation(text: text) }
        }
        let remote: MeshRoutes? = mesh.map { MeshRoutes(service: $0, client: client, maxHops: configuration.node.mesh.maxHops) }
        let cache: ResponseCache?
        do { cache = try ResponseCache(path: "\(dataDir)/cache.sqlite") } catch { throw NodeStartupError("cannot open \(dataDir)/cache.sqlite: \(error)") }
        let gateway = Gateway(configuration: configuration, client: client, ledger: ledger, metrics: metrics, logger: logger, remote: remote,
                              meshStatus: meshStatus, meshTable: meshTable, meshRevoke: meshRevoke, meshTopology: meshTopology, cache: cache, meshKeyLookup: meshKeyLookup,
                              meshKeySubmit: meshKeySubmit, meshKeySpend: meshKeySpend, adminCheck: adminCheck, meshKeyRequests: meshKeyRequests, meshReachability: meshReachability, initialSpend: spend)
        self.gateway = gateway
        boardBox.settle(.success(gateway.board))
        // Per-key spend survives a restart: today's, from the ledger.
        if let ledger, let reader = try? LedgerReader(path: ledger.path) {
            let now = wallClockMillis()
            for row in (try? reader.usage(sinceMillis: BudgetPeriod.dayStart(millis: now), groupBy: .key)) ?? [] where !row.group.hasPrefix("node:") && row.group != "(none)" {
                gateway.keyBudgets.seed(key: row.group, day: KeyBudgets.day(millis: now), amount: row.cost)
            }
        }
        if let mesh {
            let listen = configuration.server.listenAddr
            let advertised = configuration.node.mesh.advertiseAPI
            mesh.setRecordContent(MeshSetup.recordContent(gateway: gateway, configuration: configuration, apiAddress: { [weak self] in
                if let advertised { return advertised }
                // Not known until the HTTP server listens (port 0): nothing to advertise yet.
                guard let port = self?.port ?? (listen.port == 0 ? nil : listen.port) else { return "" }
                let host = listen.host == "0.0.0.0" || listen.host == "::" ? "127.0.0.1" : listen.host
                return "http://\(host):\(port)"
            }, gpus: GPUProbe()))
        }
    }

    static func makeDirectory(_ path: String) throws {
        if let problem = makeDirectories(path) { throw NodeStartupError("cannot create the data directory \(path): \(problem)") }
    }

    /// The HTTP port once listening (useful with port 0).
    public var port: Int? { listening.current }

    /// Waits until the API listens (and the mesh's sockets are bound, when there is a mesh), and
    /// returns the API port.
    public func waitUntilListening() async throws -> Int {
        let port = try await waitForAPI()
        if let mesh { _ = try await mesh.waitUntilBound() }
        return port
    }

    func waitForAPI() async throws -> Int { try await listening.value() }

    /// Runs until SIGTERM/SIGINT (when `handleSignals`) or `shutdown()`.
    public func run(handleSignals: Bool = true) async throws {
        let listen = configuration.server.listenAddr
        // server.read_timeout: how long a connection may sit without sending a complete request — idle
        // keep-alive connections and slow senders (slowloris) alike are closed after it. A request being
        // answered (a long stream included) is never cut by it.
        // server.write_timeout: how long a client may leave its answer unread (WriteStallHandler).
        let readTimeout = TimeAmount(configuration.server.readTimeout)
        let writeTimeout = TimeAmount(configuration.server.writeTimeout)
        let stalled = gateway.metrics.counter("aimesh_http_write_timeouts_total")
        // The largest body any route reads: chat and embeddings take server.max_request_size, the key and
        // revocation endpoints at most 16 KiB.
        let channel = LeanHTTP1Channel.Configuration(
            maxBodyBytes: max(configuration.server.maxRequestSize, 16384), idleTimeout: readTimeout, serverName: "aimesh",
            additionalChannelHandlers: { [WriteStallHandler(timeout: writeTimeout, onTimeout: { stalled.increment() })] })
        let responder = gateway.buildResponder()
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { _ in LeanHTTP1Channel(responder: responder, configuration: channel) },
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "aimesh", backlog: 1024),
            onServerRunning: { [self] channel in
                let port = channel.localAddress?.port ?? listen.port
                self.listening.settle(.success(port))
                // Now peers can be told where this node's API is.
                self.mesh?.readvertise()
                self.logger.notice("aimesh node listening", metadata: ["node.id": "\(self.configuration.node.id)", "api": "\(HostPort(host: listen.host, port: port))"])
                // The curl thread asked for batch scheduling as it started; say so if the kernel refused.
                if self.configuration.server.batchIOScheduling, self.client.runsAsBatch == false {
                    self.logger.warning("server.io_scheduling is batch, but this kernel refused SCHED_BATCH: the upstream thread runs as an ordinary thread")
                }
            },
            logger: logger
        )
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let ledger { services.append(.init(service: LedgerService(ledger: ledger))) }
        services.append(.init(service: ClientService(client: client)))
        if let metricsPort = configuration.observability.prometheusPort {
            let metricsRouter = Router()
            let gateway = self.gateway
            metricsRouter.get(RouterPath(configuration.observability.metricsPath)) { _, _ in
                var buffer = ByteBuffer()
                buffer.writeBytes(gateway.metrics.render())
                return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: ResponseBody(byteBuffer: buffer))
            }
            services.append(.init(service: Application(router: metricsRouter, configuration: .init(address: .hostname(listen.host, port: metricsPort)), logger: logger)))
        }
        if let mesh { services.append(.init(service: mesh)) }
        services.append(.init(service: app))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [], logger: logger))
        self.group.withLock { $0 = group }
        do {
            try await group.run()
        } catch {
            listening.settle(.failure(error))
            throw error
        }
    }

    /// Graceful shutdown: stop accepting, finish requests, flush the ledger.
    public func shutdown() async {
        let group = self.group.withLock { $0 }
        await group?.triggerGracefulShutdown()
    }
}

/// Flushes and closes the ledger when the node stops.
struct LedgerService: Service {
    let ledger: Ledger
    func run() async throws {
        try? await gracefulShutdown()
        await ledger.flush()
        ledger.close()
    }
}

/// Stops the libcurl thread when the node stops.
struct ClientService: Service {
    let client: CurlClient
    func run() async throws {
        try? await gracefulShutdown()
        client.shutdown()
    }
}
