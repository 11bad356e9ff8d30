import MeshCore

/// One way to serve a model: a provider of this node, or (with the mesh) a peer that has one.
public struct RouteCandidate: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// An inference server on this machine (free unless priced).
        case localServer
        /// A cloud account this node holds credentials for.
        case cloud
        /// Another mesh node that advertises the model.
        case peer(nodeID: String)
    }

    /// Stable key for health, breakers and metrics: "provider/NAME" or "peer/NODE".
    public var id: String
    public var kind: Kind
    /// Provider name, or the peer's node name.
    public var name: String
    /// The upstream model id this route asks for.
    public var upstreamModel: String
    public var price: Price
    /// Lower is preferred by `availability`.
    public var priority: Int
    public var weight: Double
    /// Position in the configuration (a stable last tie-breaker).
    public var order: Int
    public var capabilities: [String]
    /// Expected time to a complete answer, from this node's observations (nil when not measured yet).
    public var expectedLatency: Duration?
    /// Requests this node has in flight on the route, and the route's own advertised load.
    public var inFlight: Int
    public var capacity: Int?
    /// Load the route advertises beyond ours (peers: their in-flight / capacity), 0–1.
    public var advertisedLoad: Double
    /// Recent failure ratio, 0–1.
    public var errorRate: Double
    public var breaker: CircuitBreaker.State

    public init(
        id: String, kind: Kind, name: String, upstreamModel: String, price: Price, priority: Int = 100, weight: Double = 1,
        order: Int = 0, capabilities: [String] = [Capability.textGeneration], expectedLatency: Duration? = nil, inFlight: Int = 0,
        capacity: Int? = nil, advertisedLoad: Double = 0, errorRate: Double = 0, breaker: CircuitBreaker.State = .closed
    ) {
        self.id = id
        self.kind = kind
        self.name = name
        self.upstreamModel = upstreamModel
        self.price = price
        self.priority = priority
        self.weight = weight
        self.order = order
        self.capabilities = capabilities
        self.expectedLatency = expectedLatency
        self.inFlight = inFlight
        self.capacity = capacity
        self.advertisedLoad = advertisedLoad
        self.errorRate = errorRate
        self.breaker = breaker
    }

    /// Served on this node (not forwarded to a peer).
    public var isOnThisNode: Bool {
        if case .peer = kind { return false }
        return true
    }

    public var isLocalServer: Bool { kind == .localServer }

    /// 0 = idle, 1 = at capacity (or beyond): ours plus what the route advertises.
    public var load: Double {
        let ours = capacity.map { Double(inFlight) / Double(max($0, 1)) } ?? Double(inFlight) / 64
        return ours + advertisedLoad
    }

    /// The most this route could cost for a call with these token counts.
    public func maximumCost(inputTokens: Int, outputTokens: Int) -> Double {
        price.cost(of: Usage(promptTokens: inputTokens, completionTokens: outputTokens))
    }
}
