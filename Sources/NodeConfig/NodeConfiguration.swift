import MeshCore

/// A node's whole configuration, in the AIProxy standard's shape (see docs/CONFIGURATION.md).
public struct NodeConfiguration: Sendable {
    public var node = NodeSection()
    public var server = ServerSection()
    public var providers: [ProviderConfig] = []
    public var routing = RoutingSection()
    public var budget = BudgetSection()
    public var observability = ObservabilitySection()
    public var security = SecuritySection()
    /// The file it came from, if any.
    public var sourcePath: String?

    public init() {}

    public func provider(named name: String) -> ProviderConfig? { providers.first { $0.name == name } }
}

public enum NodeType: String, Sendable, CaseIterable, Codable {
    case standalone, gpu, edge, cloud, hybrid
}

/// host:port as written in the configuration.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "127.0.0.1:8080", ":8080" (all interfaces), "[::1]:8080", "localhost:8080" (the mesh's
    /// `PeerAddress` grammar, plus an empty host for every interface).
    public init?(parsing text: String) {
        let text = text.trimmingWhitespace()
        guard let address = PeerAddress(parsing: text.hasPrefix(":") ? "0.0.0.0" + text : text) else { return nil }
        self.init(host: address.host, port: Int(address.port))
    }

    public var description: String { PeerAddress(host: host, port: UInt16(clamping: port)).description }

    /// An http:// base URL for this address; a wildcard host becomes loopback.
    public var httpURL: String {
        let reachable: String
        switch host {
        case "0.0.0.0": reachable = "127.0.0.1"
        case "::": reachable = "::1"
        default: reachable = host
        }
        return reachable.contains(":") ? "http://[\(reachable)]:\(port)" : "http://\(reachable):\(port)"
    }
}

public struct NodeSection: Sendable {
    public var id: String = "aimesh-node"
    public var name: String?
    public var region: String = "local"
    public var type: NodeType = .standalone
    /// Where the ledger, the node key and other state live.
    public var dataDir: String?
    public var mesh = MeshSection()
    public init() {}

    /// `data_dir`, or `./data/<id>` when unset.
    public var resolvedDataDir: String { dataDir ?? "./data/\(id)" }
}

public struct SeedPeer: Sendable, Hashable {
    public var address: String
    public var id: String?
    public var priority: Int?
    public init(address: String, id: String? = nil, priority: Int? = nil) {
        self.address = address
        self.id = id
        self.priority = priority
    }
}

public struct MeshSection: Sendable {
    public enum TrustMode: String, Sendable { case ca, open }

    public var enabled = false
    public var listenAddr: HostPort?
    public var advertiseAddr: HostPort?
    /// Where peers reach this node's HTTP API; defaults to the server's listen address.
    public var advertiseAPI: String?
    public var peers: [SeedPeer] = []
    public var trustMode: TrustMode = .open
    public var adminPublicKey: String?
    public var certificatePath: String?
    public var secretKeys: [Secret] = []
    public var maxHops = 2
    public var shareLoad = true
    public var peerTimeout: Duration = .seconds(30)
    /// Membership timing (memberlist's LAN profile with probe and gossip periods halved; PROTOCOL.md §5).
    public var probeInterval: Duration = .milliseconds(500)
    public var probeTimeout: Duration = .milliseconds(250)
    public var indirectChecks = 3
    public var suspicionMultiplier = 4
    public var gossipInterval: Duration = .milliseconds(100)
    public var gossipFanout = 3
    public var retransmitMultiplier = 4
    public var pushPullInterval: Duration = .seconds(30)
    public var recordTTL: Duration = .seconds(300)
    public init() {}
}

public struct ServerSection: Sendable {
    public var listenAddr = HostPort(host: "127.0.0.1", port: 8080)
    public var readTimeout: Duration = .seconds(30)
    public var writeTimeout: Duration = .seconds(300)
    /// The overall deadline of one client request, failover included.
    public var requestTimeout: Duration = .seconds(300)
    public var maxRequestSize = 10 * 1024 * 1024
    /// `io_scheduling`: whether the thread that talks to upstreams (libcurl's) runs as batch work
    /// (`batch`, the default) or as an ordinary thread (`normal`). See `CurlClient.Configuration.batchScheduling`.
    public var batchIOScheduling = true
    /// Paths switched off with `endpoints: [{path, enabled: false}]`.
    public var disabledPaths: Set<String> = []
    public init() {}
}

/// A model one provider serves.
public struct ModelConfig: Sendable, Hashable {
    /// The name clients ask for.
    public var name: String
    /// The provider's own id for it (`upstream_model`, `openai_model`, `cloudflare_model`, …).
    public var upstreamModel: String
    public var capabilities: [String] = [Capability.textGeneration]
    public var price: Price = .free
    /// A flat price per call, for models billed that way (images).
    public var costPerGeneration: Double?
    public var contextWindow: Int?
    public var maxOutputTokens: Int?
    /// Cache answers for this long (opt-in per model).
    public var cacheTTL: Duration?

    public init(name: String, upstreamModel: String? = nil) {
        self.name = name
        self.upstreamModel = upstreamModel ?? name
    }
}

public struct Credentials: Sendable, Equatable {
    public var apiKey: Secret?
    public var accountID: String?
    public var apiToken: Secret?
    public init(apiKey: Secret? = nil, accountID: String? = nil, apiToken: Secret? = nil) {
        self.apiKey = apiKey
        self.accountID = accountID
        self.apiToken = apiToken
    }
    /// The bearer secret, whichever key carries it.
    public var bearer: Secret? { apiKey ?? apiToken }
}

public struct ProviderConfig: Sendable {
    public var name: String
    /// As written (`local`, `openai`, `groq`, `anthropic`, …).
    public var type: String
    public var wireFormat: WireFormat
    /// A local inference server (price 0 unless set, advertised as a GPU route).
    public var isLocal: Bool
    /// Which cloud, for the mesh table ("openai", "groq", "anthropic", …) or "local".
    public var vendor: String
    public var enabled = true
    /// Lower is tried first by the `availability` strategy.
    public var priority = 100
    public var weight = 1.0
    public var baseURL: String
    public var credentials = Credentials()
    public var models: [ModelConfig] = []
    /// Extra headers sent upstream (for example OpenRouter's `HTTP-Referer`).
    public var headers: [(name: String, value: String)] = []
    public var maxConcurrency: Int?
    public var connectTimeout: Duration = .seconds(5)
    public var firstByteTimeout: Duration = .seconds(60)
    public var idleTimeout: Duration = .seconds(120)
    /// Cloudflare only: `native` (`/ai/run/{model}`) or `openai` (`/ai/v1/chat/completions`).
    public var cloudflareAPI = "native"
    public var anthropicVersion = "2023-06-01"
    /// Why the provider is disabled, when the loader disabled it (a missing key, say).
    public var disabledReason: String?

    public init(name: String, type: String, wireFormat: WireFormat, isLocal: Bool, vendor: String, baseURL: String) {
        self.name = name
        self.type = type
        self.wireFormat = wireFormat
        self.isLocal = isLocal
        self.vendor = vendor
        self.baseURL = baseURL
    }
}

public struct RoutingSection: Sendable {
    public var strategy: RoutingStrategy = .costOptimized
    public var failover = Failover()
    public var loadBalancing = LoadBalancing()
    public var circuitBreaker = CircuitBreakerSettings()
    public init() {}

    public struct Failover: Sendable {
        public var enabled = true
        public var maxRetries = 3
        public var retryDelay: Duration = .milliseconds(100)
        public var maxRetryDelay: Duration = .seconds(2)
        /// Provider names (or `mesh_peer`) tried in this order after the planned routes.
        public var fallbackChain: [String] = []
        /// Limit of one attempt; nil = the provider's own timeouts.
        public var attemptTimeout: Duration?
        public init() {}
    }

    public struct LoadBalancing: Sendable {
        public var enabled = false
        public var strategy: RoutingStrategy?
        public var healthAware = true
        /// Error rate (0–1) above which a route counts as unhealthy.
        public var unhealthyThreshold = 0.5
        public init() {}
    }

    public struct CircuitBreakerSettings: Sendable {
        public var consecutiveFailures = 5
        public var failureRatio = 0.5
        public var minimumRequests = 10
        public var window: Duration = .seconds(30)
        public var openDuration: Duration = .seconds(15)
        public init() {}
    }
}

public struct BudgetSection: Sendable {
    public enum AlertAction: String, Sendable { case log, disablePaidProviders = "disable_paid_providers" }
    public struct Alert: Sendable, Equatable {
        public var thresholdPercent: Double
        public var action: AlertAction
        public init(thresholdPercent: Double, action: AlertAction) {
            self.thresholdPercent = thresholdPercent
            self.action = action
        }
    }

    public var enabled = false
    public var dailyLimit: Double?
    public var monthlyLimit: Double?
    public var trackCosts = true
    /// A path for the ledger database other than `data_dir/ledger.sqlite`.
    public var costDBPath: String?
    public var alerts: [Alert] = []
    public init() {}
}

public struct ObservabilitySection: Sendable {
    public enum LogFormat: String, Sendable { case text, json }
    public var logLevel = "info"
    public var logFormat: LogFormat = .text
    /// `stderr`, `stdout` or a file path.
    public var logOutput = "stderr"
    public var metricsEnabled = true
    public var metricsPath = "/metrics"
    /// Also serve metrics on this port, apart from the API.
    public var prometheusPort: Int?
    public init() {}
}

public struct SecuritySection: Sendable {
    public struct APIKey: Sendable {
        public var key: Secret
        public var name: String
        /// Requests per hour (the standard's unit); nil = unlimited.
        public var requestsPerHour: Int?
        public init(key: Secret, name: String, requestsPerHour: Int? = nil) {
            self.key = key
            self.name = name
            self.requestsPerHour = requestsPerHour
        }
    }

    public var authEnabled = false
    public var apiKeys: [APIKey] = []
    public var rateLimitingEnabled = false
    /// Requests per hour per client when no key-specific limit applies.
    public var defaultRequestsPerHour: Int?
    public var rateLimitByIP = true
    public var rateLimitByAPIKey = true
    public var corsEnabled = false
    public var corsAllowedOrigins: [String] = []
    public init() {}
}
