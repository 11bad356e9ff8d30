import CurlHTTP
import Hummingbird
import Ledger
import Logging
import MeshCore
import NodeConfig
import Providers
import Routing
import Sodium

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where routes beyond this node's own providers come from (the mesh plugs in here).
public protocol RemoteRouteSource: Sendable {
    /// Routes to peers that serve `model`, given the nodes (ids) this request already passed through.
    func routes(for model: String, visited: [String]) -> [ExecutableRoute]
    /// Every model the peers offer, for `/v1/models`.
    func remoteModels() -> [RemoteModel]
    /// Checks a forwarded request's `x-aiproxy-hop` header against its body.
    func verifyForward(hop: String, body: [UInt8]) -> Result<ForwardedBy, APIError>
}

/// An authenticated client key and its limits.
public struct ClientKey: Sendable {
    public var name: String
    /// Models the key may use (empty: all).
    public var models: [String]
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    public var usable: Bool
    /// Mesh-wide daily budget in dollars.
    public var dailyBudget: Double?
    public init(name: String, models: [String] = [], requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, usable: Bool = true, dailyBudget: Double? = nil) {
        self.dailyBudget = dailyBudget
        self.name = name
        self.models = models
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.usable = usable
    }
}

/// Who forwarded a request to this node.
public struct ForwardedBy: Sendable {
    /// The forwarding node's name (billed in the ledger as `node:NAME`).
    public var node: String
    /// Ids of the nodes the request passed through (never routed back to).
    public var visited: [String]
    public init(node: String, visited: [String]) {
        self.node = node
        self.visited = visited
    }
}

/// A model a peer offers, as `/v1/models` lists it.
public struct RemoteModel: Sendable {
    public var model: String
    public var node: String
    public var providerKind: String
    public var price: Price
    public var available: Bool
    public var latency: Duration?
    public init(model: String, node: String, providerKind: String, price: Price, available: Bool, latency: Duration?) {
        self.model = model
        self.node = node
        self.providerKind = providerKind
        self.price = price
        self.available = available
        self.latency = latency
    }
}

/// The OpenAI-compatible gateway of one node: everything a request touches between the HTTP server
/// and the upstream, built once from the configuration.
public final class Gateway: Sendable {
    public let configuration: NodeConfiguration
    public let nodeName: String
    public let catalog: ModelCatalog
    public let board: RouteBoard
    public let ledger: Ledger?
    public let metrics: NodeMetrics
    public let budget: BudgetGate
    public let client: CurlClient
    let logger: Logger
    let startedAt = ContinuousClock.now
    let startedAtMillis = wallClockMillis()
    let executor: RequestExecutor
    let rateLimiter: RateLimiter
    /// Per-key daily spend and reservations (advertised to the mesh in this node's record).
    public let keyBudgets = KeyBudgets()
    /// Per-key request counts per minute (advertised to the mesh).
    public let keyRequests = KeyRequestCounts()
    /// Optional: what peers advertise a key spent on a UTC day.
    let meshKeySpend: (@Sendable (String, UInt32) -> Double)?
    /// Optional: (peers not alive, all nodes known incl. this one), for partition-safe key budgets.
    let meshReachability: (@Sendable () -> (unreachable: Bool, nodes: Int))?
    /// Optional: how many requests peers advertise a key made in a minute.
    let meshKeyRequests: (@Sendable (String, UInt32) -> Int)?
    /// Exact-match answers, opt-in per model (`cache_ttl`) or per request (`x-aiproxy-cache-ttl`).
    public let cache: ResponseCache?
    let apiKeys: [(hash: [UInt8], name: String)]
    public let remote: (any RemoteRouteSource)?
    /// Optional: extra JSON for `/aiproxy/mesh/status` (the mesh fills in peers).
    let meshStatus: (@Sendable () -> JSON)?
    /// Optional: `/aiproxy/mesh/table` (the mesh's signed record table).
    let meshTable: (@Sendable () -> JSON)?
    /// Optional: who may use admin endpoints (usage, the record table, addresses in the topology): the
    /// mesh admin or a certified node, by their `x-aiproxy-admin` signature. nil: a normal API key is enough.
    let adminCheck: (@Sendable (_ header: String?, _ method: String, _ target: String) -> Bool)?
    /// Optional: mesh-wide API keys by SHA-256 (the mesh admin's key records).
    let meshKeyLookup: (@Sendable ([UInt8]) -> ClientKey?)?
    /// Optional: takes an admin-signed key record (file text) and gossips it; returns a problem or nil.
    let meshKeySubmit: (@Sendable (String) -> String?)?
    /// Optional: `/aiproxy/mesh/topology`.
    let meshTopology: (@Sendable () -> JSON)?
    /// Optional: takes an admin-signed revocation (file text) and gossips it; returns an error message or nil.
    public let meshRevoke: (@Sendable (String) -> String?)?

    public init(configuration: NodeConfiguration, client: CurlClient, ledger: Ledger?, metrics: NodeMetrics = NodeMetrics(), logger: Logger,
                remote: (any RemoteRouteSource)? = nil, meshStatus: (@Sendable () -> JSON)? = nil, meshTable: (@Sendable () -> JSON)? = nil,
                meshRevoke: (@Sendable (String) -> String?)? = nil, meshTopology: (@Sendable () -> JSON)? = nil, cache: ResponseCache? = nil, meshKeyLookup: (@Sendable ([UInt8]) -> ClientKey?)? = nil,
                meshKeySubmit: (@Sendable (String) -> String?)? = nil, meshKeySpend: (@Sendable (String, UInt32) -> Double)? = nil,
                adminCheck: (@Sendable (String?, String, String) -> Bool)? = nil, meshKeyRequests: (@Sendable (String, UInt32) -> Int)? = nil,
                meshReachability: (@Sendable () -> (unreachable: Bool, nodes: Int))? = nil, initialSpend: (day: Double, month: Double) = (0, 0)) {
        self.configuration = configuration
        self.nodeName = configuration.node.id
        self.client = client
        self.catalog = ModelCatalog(configuration: configuration, client: client)
        let breaker = configuration.routing.circuitBreaker
        self.board = RouteBoard(breakerSettings: CircuitBreaker.Settings(
            consecutiveFailures: breaker.consecutiveFailures, failureRatio: breaker.failureRatio,
            minimumRequests: breaker.minimumRequests, window: breaker.window, openDuration: breaker.openDuration))
        self.ledger = ledger
        self.metrics = metrics
        self.logger = logger
        self.budget = BudgetGate(settings: configuration.budget, logger: logger, nowMillis: wallClockMillis(), daySpend: initialSpend.day, monthSpend: initialSpend.month)
        self.executor = RequestExecutor(board: board, failover: configuration.routing.failover)
        self.rateLimiter = RateLimiter(security: configuration.security)
        self.cache = cache
        self.meshKeyLookup = meshKeyLookup
        self.meshKeySubmit = meshKeySubmit
        self.meshKeySpend = meshKeySpend
        self.adminCheck = adminCheck
        self.meshKeyRequests = meshKeyRequests
        self.meshReachability = meshReachability
        self.apiKeys = configuration.security.apiKeys.map { (Sodium.sha256(Array($0.key.value.utf8)), $0.name) }
        self.remote = remote
        self.meshStatus = meshStatus
        self.meshTable = meshTable
        self.meshRevoke = meshRevoke
        self.meshTopology = meshTopology
    }

    /// What a node serves: the router with every endpoint, the chat completions paths compared whole first
    /// (see `ExactPathResponder`).
    public func buildResponder() -> ExactPathResponder<GatewayContext> {
        ExactPathResponder(router: buildRouter(), exact: chatPaths.map { (.post, $0, chatHandler) })
    }

    /// Where chat completions are served (none when `/v1/chat/completions` is disabled): the router has
    /// them, and `buildResponder` compares them whole first.
    private var chatPaths: [String] {
        configuration.server.disabledPaths.contains("/v1/chat/completions") ? [] : ["/v1/chat/completions", "/chat/completions"]
    }

    private var chatHandler: @Sendable (Request, GatewayContext) async throws -> Response {
        { request, context in await self.chatCompletions(request, context: context) }
    }

    /// The Hummingbird router with every endpoint.
    public func buildRouter() -> Router<GatewayContext> {
        let router = Router(context: GatewayContext.self)
        router.add(middleware: ErrorShapeMiddleware())
        if configuration.security.corsEnabled {
            router.add(middleware: CORSMiddleware(allowedOrigins: configuration.security.corsAllowedOrigins))
        }
        // Each middleware is one more async layer around every request; these two can only act when keys
        // are checked (a mesh-wide key's limits ride on an authenticated key) or limits are on.
        if configuration.security.authEnabled {
            router.add(middleware: AuthMiddleware(gateway: self))
        }
        if configuration.security.authEnabled || configuration.security.rateLimitingEnabled {
            router.add(middleware: RateLimitMiddleware(limiter: rateLimiter, gateway: self))
        }
        let disabled = configuration.server.disabledPaths
        func enabled(_ path: String) -> Bool { !disabled.contains(path) }

        for path in chatPaths { router.post(RouterPath(path), use: chatHandler) }
        if enabled("/v1/embeddings") {
            router.post("/v1/embeddings") { request, context in await self.embeddings(request, context: context) }
        }
        if enabled("/v1/models") {
            router.get("/v1/models") { _, _ in self.modelsResponse() }
            router.get("/v1/models/{model}") { _, context in self.modelResponse(context.parameters.get("model") ?? "") }
        }
        if enabled("/aiproxy/predict") {
            router.post("/aiproxy/predict") { request, context in await self.predict(request, context: context) }
        }
        router.get("/aiproxy/mesh/status") { _, _ in JSONResponse.make(self.meshStatusJSON()) }
        router.get("/aiproxy/mesh/table") { request, _ in
            guard self.isAdmin(request) else { return Gateway.adminRequired() }
            guard let table = self.meshTable else {
                return APIError(status: 404, type: "not_found", code: "mesh_disabled",
                                message: "this node is not in a mesh; set node.mesh.enabled (or --gossip-listen / --peers)").response()
            }
            return JSONResponse.make(table())
        }
        router.get("/ui") { _, _ in
            var buffer = ByteBuffer()
            buffer.writeString(MeshPage.html)
            return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"], body: ResponseBody(byteBuffer: buffer))
        }
        router.get("/aiproxy/mesh/topology") { request, _ in
            guard let topology = self.meshTopology else {
                return APIError(status: 404, type: "not_found", code: "mesh_disabled",
                                message: "this node is not in a mesh; set node.mesh.enabled (or --gossip-listen / --peers)").response()
            }
            // Addresses are for admins; everyone else sees the map without them.
            return JSONResponse.make(self.isAdmin(request) ? topology() : Gateway.withoutAddresses(topology()))
        }
        router.post("/aiproxy/keys") { request, _ in
            guard let submit = self.meshKeySubmit else {
                return APIError(status: 404, type: "not_found", code: "mesh_disabled", message: "mesh-wide keys need the mesh (node.mesh) and its admin key").response()
            }
            var request = request
            guard let buffer = try? await request.collectBody(upTo: 16384) else { return APIError.tooLarge(limit: 16384).response() }
            if let problem = submit(String(decoding: buffer.readableBytesView, as: UTF8.self)) { return APIError.badRequest(problem).response() }
            return JSONResponse.make(["accepted": true])
        }
        router.post("/aiproxy/mesh/revocations") { request, _ in
            guard let revoke = self.meshRevoke else {
                return APIError(status: 404, type: "not_found", code: "mesh_disabled", message: "this node is not in a mesh").response()
            }
            var request = request
            guard let buffer = try? await request.collectBody(upTo: 4096) else { return APIError.tooLarge(limit: 4096).response() }
            if let problem = revoke(String(decoding: buffer.readableBytesView, as: UTF8.self)) {
                return APIError.badRequest(problem).response()
            }
            return JSONResponse.make(["accepted": true])
        }
        router.get("/aiproxy/routes") { _, _ in JSONResponse.make(self.routesJSON()) }
        router.get("/aiproxy/ledger/status") { _, _ in JSONResponse.make(self.ledgerStatusJSON()) }
        router.get("/aiproxy/usage") { request, _ in
            guard self.isAdmin(request) else { return Gateway.adminRequired() }
            return self.usageResponse(request)
        }
        router.get("/health") { _, _ in JSONResponse.make(self.healthJSON()) }
        if configuration.observability.metricsEnabled {
            router.get(RouterPath(configuration.observability.metricsPath)) { _, _ in self.metricsResponse() }
        }
        return router
    }

    // MARK: Shared helpers

    /// `req_` + the wall clock in milliseconds (12 hex digits) + 64 random bits (16 hex digits). The time
    /// first makes a node's ids sort by time, so the ledger's index on `request_id` grows at its right edge:
    /// with random ids each batch of rows dirtied one index page per row (1.5 page writes per request under
    /// load, counted with `strace -c`); the random part (`FastRandom`: no system call, never the same twice in
    /// one process) keeps ids unique across nodes. Ids name requests; nothing accepts one as a credential.
    static func makeRequestID(nowMillis: Int64 = wallClockMillis()) -> String {
        var generator = FastRandom()
        // 14 bytes, big-endian so the hex reads most significant first: the time's low 48 bits, then the random 64.
        let time = UInt64(clamping: max(0, nowMillis)) << 16
        let random = generator.next() as UInt64
        let words = ((time | random >> 48).bigEndian, (random << 16).bigEndian)
        return withUnsafeBytes(of: words) { ByteEncoding.hex($0[0..<14], prefix: "req_") }
    }

    /// Checks an API key; returns its name, or nil when unknown.
    /// Whether the request may use admin endpoints.
    func isAdmin(_ request: Request) -> Bool {
        guard let adminCheck else { return true }
        let target = request.uri.query.map { "\(request.uri.path)?\($0)" } ?? request.uri.path
        return adminCheck(request.headers[.aiproxyAdmin], request.method.rawValue, target)
    }

    static func adminRequired() -> Response {
        APIError(status: 403, type: "permission_denied", code: "admin_required",
                 message: "this endpoint needs the mesh admin key or a node certificate: sign the request (aimesh usage|topology --admin-key FILE)").response()
    }

    static func withoutAddresses(_ topology: JSON) -> JSON {
        guard case .object(var object) = topology, let nodes = object["nodes"]?.arrayValue else { return topology }
        object["nodes"] = .array(nodes.map { node in
            guard case .object(var fields) = node else { return node }
            fields["api"] = nil
            fields["gossip"] = nil
            return .object(fields)
        })
        return .object(object)
    }

    /// A client key: the config file's (`security.auth.api_keys`), or a mesh-wide one gossiped by the
    /// admin. Returns the key's name and what it may do, or why it may not.
    func authenticate(bearer: String) -> Result<ClientKey, APIError> {
        let hash = Sodium.sha256(Array(bearer.utf8))
        for key in apiKeys where Sodium.constantTimeEqual(key.hash, hash) { return .success(ClientKey(name: key.name)) }
        if let lookup = meshKeyLookup, let key = lookup(hash) {
            guard key.usable else { return .failure(APIError.unauthorized("this API key was revoked or has expired")) }
            return .success(key)
        }
        return .failure(APIError.unauthorized("invalid API key"))
    }

    /// Local routes plus peer routes for a model, as configured and advertised (the planner's candidates
    /// get this node's live observations, `RouteBoard.observe`). The catalog's array is shared, not copied,
    /// when no peer serves the model.
    func routes(for model: String, visited: [String]) -> [ExecutableRoute] {
        let local = catalog.routes(for: model)
        guard let remote else { return local }
        let peers = remote.routes(for: model, visited: visited)
        return peers.isEmpty ? local : local + peers
    }

    /// Every model name served here or by a peer.
    func allModelNames() -> [String] {
        var names = Set(catalog.modelNames)
        if let remote { for model in remote.remoteModels() { names.insert(model.model) } }
        return names.sorted()
    }

    func uptimeSeconds() -> Double { (ContinuousClock.now - startedAt).seconds }

    func metricsResponse() -> Response {
        metrics.gauge("aimesh_uptime_seconds").record(uptimeSeconds())
        if let ledger {
            metrics.gauge("aimesh_ledger_pending_rows").record(ledger.pendingCount)
            metrics.gauge("aimesh_ledger_committed_sequence").record(Int(ledger.committedSequence))
            metrics.gauge("aimesh_ledger_failed_writes").record(ledger.failedWrites)
        }
        let now = ContinuousClock.now
        for snapshot in board.snapshot(now: now) {
            let value: Int
            switch snapshot.breaker {
            case .closed: value = 0
            case .halfOpen: value = 1
            case .open: value = 2
            }
            metrics.gauge("aimesh_circuit_state", [("route", snapshot.id)]).record(value)
            metrics.gauge("aimesh_route_in_flight", [("route", snapshot.id)]).record(snapshot.inFlight)
        }
        var buffer = ByteBuffer()
        buffer.writeBytes(metrics.render())
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: ResponseBody(byteBuffer: buffer))
    }
}
