import MeshCore

/// What one request asks of the planner.
public struct PlanRequest: Sendable {
    public var model: String
    public var strategy: RoutingStrategy
    /// Dollars this request may cost at most (estimated before sending); nil = no limit.
    public var maxCost: Double?
    /// Only this provider (or peer node) may serve.
    public var pinnedRoute: String?
    /// Only inference servers on this machine: nothing leaves it.
    public var localOnly: Bool
    /// Paid routes are off (a budget alert or a hard limit); free ones stay.
    public var paidAllowed: Bool
    public var requiredCapabilities: [String]
    /// Token estimate for max-cost checks.
    public var estimatedInputTokens: Int
    public var maxOutputTokens: Int
    /// Provider names in failover order after the first route (`mesh_peer` = every peer at that place).
    public var fallbackChain: [String]
    /// Rotating counter for round robin (the shell keeps one per model).
    public var rotation: UInt64
    /// Treat routes with a higher error rate as unhealthy; nil disables health tiers.
    public var unhealthyThreshold: Double?

    public init(
        model: String, strategy: RoutingStrategy = .costOptimized, maxCost: Double? = nil, pinnedRoute: String? = nil,
        localOnly: Bool = false, paidAllowed: Bool = true, requiredCapabilities: [String] = [], estimatedInputTokens: Int = 0,
        maxOutputTokens: Int = 1024, fallbackChain: [String] = [], rotation: UInt64 = 0, unhealthyThreshold: Double? = 0.5
    ) {
        self.model = model
        self.strategy = strategy
        self.maxCost = maxCost
        self.pinnedRoute = pinnedRoute
        self.localOnly = localOnly
        self.paidAllowed = paidAllowed
        self.requiredCapabilities = requiredCapabilities
        self.estimatedInputTokens = estimatedInputTokens
        self.maxOutputTokens = maxOutputTokens
        self.fallbackChain = fallbackChain
        self.rotation = rotation
        self.unhealthyThreshold = unhealthyThreshold
    }
}

/// The planner's answer: routes best first, and the reasons others were left out.
public struct RoutePlan: Sendable, Equatable {
    public var routes: [RouteCandidate]
    /// Route id → why it was excluded ("over max_cost", "paid routes disabled by budget", …).
    public var excluded: [(id: String, reason: String)]
    public var strategy: RoutingStrategy

    public static func == (lhs: RoutePlan, rhs: RoutePlan) -> Bool {
        lhs.routes == rhs.routes && lhs.strategy == rhs.strategy && lhs.excluded.map(\.id) == rhs.excluded.map(\.id)
    }
}

/// Pure route planning (DESIGN.md §5): filters, health tiers, then the strategy's order.
public enum RoutePlanner {
    public static func plan(_ request: PlanRequest, candidates: [RouteCandidate], using random: inout some RandomNumberGenerator) -> RoutePlan {
        var excluded: [(String, String)] = []
        // Health tiers: healthy, then degraded (error rate over the threshold), then open breakers,
        // which are tried only when nothing else is left.
        var healthy: [RouteCandidate] = []
        var degraded: [RouteCandidate] = []
        var open: [RouteCandidate] = []
        healthy.reserveCapacity(candidates.count)
        for candidate in candidates {
            if let reason = exclusionReason(candidate, request) {
                excluded.append((candidate.id, reason))
                continue
            }
            switch tier(of: candidate, request) {
            case 0: healthy.append(candidate)
            case 1: degraded.append(candidate)
            default: open.append(candidate)
            }
        }
        var ordered = order(healthy, request, random: &random)
        if !degraded.isEmpty { ordered += order(degraded, request, random: &random) }
        if ordered.isEmpty {
            ordered = order(open, request, random: &random)
        } else {
            for candidate in open { excluded.append((candidate.id, "circuit open")) }
        }
        if !request.fallbackChain.isEmpty, ordered.count > 1 {
            ordered = applyFallbackChain(ordered, chain: request.fallbackChain)
        }
        return RoutePlan(routes: ordered, excluded: excluded, strategy: request.strategy)
    }

    static func exclusionReason(_ candidate: RouteCandidate, _ request: PlanRequest) -> String? {
        if let pinned = request.pinnedRoute, candidate.name != pinned, candidate.id != pinned {
            return "not the requested provider \(pinned)"
        }
        if request.localOnly && !candidate.isLocalServer { return "local-only request" }
        if !request.paidAllowed && !candidate.price.isFree { return "paid routes are disabled by the budget" }
        for capability in request.requiredCapabilities where !candidate.capabilities.contains(capability) {
            return "lacks capability \(capability)"
        }
        if let maxCost = request.maxCost {
            let cost = candidate.maximumCost(inputTokens: request.estimatedInputTokens, outputTokens: request.maxOutputTokens)
            if cost > maxCost { return "may cost $\(format(cost)), over max_cost $\(format(maxCost))" }
        }
        return nil
    }

    static func tier(of candidate: RouteCandidate, _ request: PlanRequest) -> Int {
        switch candidate.breaker {
        case .open: return 2
        // A half-open route is due its one probe: it competes in the healthy tier (the strategy
        // still decides whether it is worth trying) — demoting it would starve it of the very
        // request that can close its breaker. Failover covers the client if the probe fails.
        case .halfOpen(let probeInFlight): return probeInFlight ? 2 : 0
        case .closed:
            if let threshold = request.unhealthyThreshold, candidate.errorRate > threshold { return 1 }
            return 0
        }
    }

    static func order(_ routes: [RouteCandidate], _ request: PlanRequest, random: inout some RandomNumberGenerator) -> [RouteCandidate] {
        guard routes.count > 1 else { return routes }
        switch request.strategy {
        case .costOptimized:
            return routes.sorted { lhs, rhs in
                let l = lhs.price.blended, r = rhs.price.blended
                if l != r { return l < r }
                return tieBreak(lhs, rhs)
            }
        case .latencyOptimized:
            // Unmeasured routes go first once, so every route gets measured.
            return routes.sorted { lhs, rhs in
                let l = lhs.expectedLatency.map { $0.seconds } ?? -1
                let r = rhs.expectedLatency.map { $0.seconds } ?? -1
                if abs(l - r) > 0.0005 { return l < r }
                return tieBreak(lhs, rhs)
            }
        case .availability:
            return routes.sorted { lhs, rhs in
                if lhs.priority != rhs.priority { return lhs.priority < rhs.priority }
                if lhs.isOnThisNode != rhs.isOnThisNode { return lhs.isOnThisNode }
                return lhs.order < rhs.order
            }
        case .roundRobin:
            let base = routes.sorted { $0.order < $1.order || ($0.order == $1.order && $0.id < $1.id) }
            let start = Int(request.rotation % UInt64(base.count))
            return Array(base[start...] + base[..<start])
        case .leastLoaded:
            // Power of two choices: two random routes, the less loaded one first; then by load.
            var rest = routes
            let a = Int.random(in: 0..<rest.count, using: &random)
            var b = Int.random(in: 0..<(rest.count - 1), using: &random)
            if b >= a { b += 1 }
            let first = rest[a].load <= rest[b].load ? a : b
            let chosen = rest.remove(at: first)
            rest.sort { lhs, rhs in
                if lhs.load != rhs.load { return lhs.load < rhs.load }
                return tieBreak(lhs, rhs)
            }
            return [chosen] + rest
        case .weighted:
            // Weighted sampling without replacement.
            var rest = routes
            var out: [RouteCandidate] = []
            while !rest.isEmpty {
                let total = rest.reduce(0) { $0 + max($1.weight, 0) }
                var index = 0
                if total > 0 {
                    var pick = Double.random(in: 0..<total, using: &random)
                    for (i, route) in rest.enumerated() {
                        pick -= max(route.weight, 0)
                        if pick < 0 {
                            index = i
                            break
                        }
                    }
                }
                out.append(rest.remove(at: index))
            }
            return out
        }
    }

    /// Equal on the strategy's key: this node before peers, then healthier, faster, less loaded,
    /// higher priority, and finally the configuration's order.
    static func tieBreak(_ lhs: RouteCandidate, _ rhs: RouteCandidate) -> Bool {
        if lhs.isOnThisNode != rhs.isOnThisNode { return lhs.isOnThisNode }
        if lhs.isLocalServer != rhs.isLocalServer { return lhs.isLocalServer }
        if abs(lhs.errorRate - rhs.errorRate) > 0.05 { return lhs.errorRate < rhs.errorRate }
        if let l = lhs.expectedLatency, let r = rhs.expectedLatency, abs((l - r).seconds) > 0.005 { return l < r }
        if abs(lhs.load - rhs.load) > 0.05 { return lhs.load < rhs.load }
        if lhs.priority != rhs.priority { return lhs.priority < rhs.priority }
        return lhs.order < rhs.order
    }

    /// Keeps the first route, then follows the chain, then whatever is left in plan order.
    static func applyFallbackChain(_ routes: [RouteCandidate], chain: [String]) -> [RouteCandidate] {
        var out = [routes[0]]
        var used: Set<String> = [routes[0].id]
        for entry in chain {
            for route in routes where !used.contains(route.id) {
                let matches: Bool
                if entry == "mesh_peer" {
                    if case .peer = route.kind { matches = true } else { matches = false }
                } else {
                    matches = route.name == entry
                }
                if matches {
                    out.append(route)
                    used.insert(route.id)
                }
            }
        }
        for route in routes where !used.contains(route.id) { out.append(route) }
        return out
    }

    static func format(_ value: Double) -> String {
        let scaled = (value * 1_000_000).rounded() / 1_000_000
        return String(describing: scaled)
    }
}

/// Exponential backoff with equal jitter: half the delay fixed, half random.
public enum Backoff {
    public static func delay(attempt: Int, base: Duration, maximum: Duration, using random: inout some RandomNumberGenerator) -> Duration {
        guard base > .zero else { return .zero }
        let exponent = min(attempt, 16)
        var delay = base * (1 << exponent)
        if delay > maximum { delay = maximum }
        let half = delay / 2
        let jitter = Double.random(in: 0...1, using: &random)
        return half + half * jitter
    }
}
