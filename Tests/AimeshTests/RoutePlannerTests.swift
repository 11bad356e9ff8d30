import MeshCore
import Routing
import Testing

@Suite struct RoutePlannerTests {
    static func route(_ name: String, kind: RouteCandidate.Kind = .cloud, in input: Double = 1, out output: Double = 1, priority: Int = 100,
                      latencyMS: Int64? = nil, load inFlight: Int = 0, capacity: Int? = 10, weight: Double = 1, order: Int = 0,
                      errorRate: Double = 0, breaker: CircuitBreaker.State = .closed, capabilities: [String] = [Capability.textGeneration]) -> RouteCandidate {
        RouteCandidate(id: "provider/\(name)", kind: kind, name: name, upstreamModel: "m", price: Price(inputPer1M: input, outputPer1M: output),
                       priority: priority, weight: weight, order: order, capabilities: capabilities, expectedLatency: latencyMS.map { .milliseconds($0) },
                       inFlight: inFlight, capacity: capacity, errorRate: errorRate, breaker: breaker)
    }

    func plan(_ request: PlanRequest, _ candidates: [RouteCandidate], seed: UInt64 = 1) -> [String] {
        var random = SplitMix64(seed: seed)
        return RoutePlanner.plan(request, candidates: candidates, using: &random).routes.map(\.name)
    }

    @Test func costOptimized_ordersByBlendedPrice() {
        let routes = [Self.route("pricey", in: 3, out: 15), Self.route("cheap", in: 0.05, out: 0.08), Self.route("mid", in: 0.3, out: 2.5)]
        #expect(plan(PlanRequest(model: "m"), routes) == ["cheap", "mid", "pricey"])
    }

    @Test func costOptimized_localWinsAtEqualPrice() {
        let routes = [Self.route("cloud", in: 0, out: 0, order: 0), Self.route("gpu", kind: .localServer, in: 0, out: 0, order: 1),
                      Self.route("peer", kind: .peer(nodeID: "n2"), in: 0, out: 0, order: 2)]
        #expect(plan(PlanRequest(model: "m"), routes) == ["gpu", "cloud", "peer"])
    }

    @Test func latencyOptimized_ordersByMeasuredLatency_unmeasuredFirst() {
        let routes = [Self.route("slow", latencyMS: 300), Self.route("fast", latencyMS: 20), Self.route("new")]
        #expect(plan(PlanRequest(model: "m", strategy: .latencyOptimized), routes) == ["new", "fast", "slow"])
    }

    @Test func availability_followsPriority() {
        let routes = [Self.route("b", priority: 2, order: 0), Self.route("a", priority: 1, order: 1), Self.route("c", priority: 3, order: 2)]
        #expect(plan(PlanRequest(model: "m", strategy: .availability), routes) == ["a", "b", "c"])
    }

    @Test func roundRobin_rotatesTheFirstRoute() {
        let routes = [Self.route("a", order: 0), Self.route("b", order: 1), Self.route("c", order: 2)]
        let firsts = (0..<6).map { plan(PlanRequest(model: "m", strategy: .roundRobin, rotation: UInt64($0)), routes)[0] }
        #expect(firsts == ["a", "b", "c", "a", "b", "c"])
    }

    @Test func leastLoaded_powerOfTwo_prefersTheLessLoadedOfItsSample() {
        let routes = [Self.route("busy", load: 9), Self.route("idle", load: 0)]
        for seed in 0..<20 { #expect(plan(PlanRequest(model: "m", strategy: .leastLoaded), routes, seed: UInt64(seed))[0] == "idle") }
    }

    @Test func leastLoaded_spreadsAmongEquals() {
        let routes = (0..<4).map { Self.route("r\($0)", load: 1, order: $0) }
        var counts: [String: Int] = [:]
        for seed in 0..<400 { counts[plan(PlanRequest(model: "m", strategy: .leastLoaded), routes, seed: UInt64(seed))[0], default: 0] += 1 }
        #expect(counts.count == 4)
        #expect(counts.values.allSatisfy { $0 > 50 })
    }

    @Test func weighted_followsWeights() {
        let routes = [Self.route("heavy", weight: 3), Self.route("light", weight: 1)]
        var heavy = 0
        for seed in 0..<1000 where plan(PlanRequest(model: "m", strategy: .weighted), routes, seed: UInt64(seed))[0] == "heavy" { heavy += 1 }
        #expect((650...850).contains(heavy))
    }

    @Test func openBreaker_isLeftOut_whileAnythingElseRemains() {
        let now = ContinuousClock.now
        let routes = [Self.route("broken", in: 0, out: 0, breaker: .open(until: now + .seconds(5))), Self.route("ok", in: 1, out: 1)]
        var random = SplitMix64(seed: 1)
        let result = RoutePlanner.plan(PlanRequest(model: "m"), candidates: routes, using: &random)
        #expect(result.routes.map(\.name) == ["ok"])
        #expect(result.excluded.map(\.reason) == ["circuit open"])
        #expect(plan(PlanRequest(model: "m"), [routes[0]]) == ["broken"])
    }

    @Test func unhealthyErrorRate_demotesBelowHealthyRoutes() {
        let routes = [Self.route("flaky", in: 0, out: 0, errorRate: 0.8), Self.route("steady", in: 5, out: 5)]
        #expect(plan(PlanRequest(model: "m"), routes) == ["steady", "flaky"])
        #expect(plan(PlanRequest(model: "m", unhealthyThreshold: nil), routes) == ["flaky", "steady"])
    }

    @Test func halfOpenRoute_getsItsProbe_evenWithAHighErrorRate() {
        // The preferred route failed until its breaker opened; now half-open, it must be offered the
        // probe that can close the breaker, not starved behind healthy routes.
        let routes = [Self.route("recovering", priority: 1, errorRate: 0.9, breaker: .halfOpen(probeInFlight: false)),
                      Self.route("backup", priority: 2)]
        #expect(plan(PlanRequest(model: "m", strategy: .availability), routes) == ["recovering", "backup"])
        let busy = [Self.route("recovering", priority: 1, breaker: .halfOpen(probeInFlight: true)), Self.route("backup", priority: 2)]
        #expect(plan(PlanRequest(model: "m", strategy: .availability), busy).first == "backup")
    }

    @Test func filters_maxCostLocalOnlyBudgetPinAndCapability() {
        let routes = [Self.route("gpu", kind: .localServer, in: 0, out: 0), Self.route("cloud", in: 3, out: 15),
                      Self.route("embedder", in: 0.1, out: 0, capabilities: [Capability.embeddings])]
        var random = SplitMix64(seed: 1)
        let capped = RoutePlanner.plan(PlanRequest(model: "m", maxCost: 0.001, estimatedInputTokens: 100, maxOutputTokens: 100), candidates: routes, using: &random)
        #expect(capped.routes.map(\.name) == ["gpu", "embedder"])
        #expect(capped.excluded.first?.reason.contains("max_cost") == true)
        #expect(plan(PlanRequest(model: "m", localOnly: true), routes) == ["gpu"])
        #expect(plan(PlanRequest(model: "m", paidAllowed: false), routes) == ["gpu"])
        #expect(plan(PlanRequest(model: "m", pinnedRoute: "cloud"), routes) == ["cloud"])
        #expect(plan(PlanRequest(model: "m", requiredCapabilities: [Capability.embeddings]), routes) == ["embedder"])
    }

    @Test func fallbackChain_ordersTheRoutesAfterTheFirst() {
        let routes = [Self.route("a", in: 1, out: 1), Self.route("b", in: 2, out: 2), Self.route("c", in: 3, out: 3),
                      Self.route("p", kind: .peer(nodeID: "n"), in: 4, out: 4)]
        #expect(plan(PlanRequest(model: "m", fallbackChain: ["mesh_peer", "c"]), routes) == ["a", "p", "c", "b"])
    }

    @Test func backoff_growsExponentially_withinJitterAndCap() {
        var random = SplitMix64(seed: 7)
        for attempt in 0..<6 {
            let delay = Backoff.delay(attempt: attempt, base: .milliseconds(100), maximum: .seconds(2), using: &random)
            let nominal = min(Duration.milliseconds(100) * (1 << attempt), .seconds(2))
            #expect(delay >= nominal / 2 && delay <= nominal)
        }
    }
}

@Suite struct CircuitBreakerTests {
    let settings = CircuitBreaker.Settings(consecutiveFailures: 3, failureRatio: 0.5, minimumRequests: 10, window: .seconds(30), openDuration: .seconds(10))

    @Test func consecutiveFailures_openTheBreaker() {
        var breaker = CircuitBreaker(settings: settings)
        let t0 = ContinuousClock.now
        breaker.recordFailure(at: t0)
        breaker.recordFailure(at: t0)
        #expect(breaker.state(at: t0) == .closed)
        breaker.recordFailure(at: t0)
        #expect(breaker.state(at: t0) == .open(until: t0 + .seconds(10)))
        let admitted = breaker.admit(at: t0 + .seconds(9))
        #expect(!admitted)
    }

    @Test func failureRatioOverTheWindow_opensTheBreaker() {
        var breaker = CircuitBreaker(settings: settings)
        let t0 = ContinuousClock.now
        for i in 0..<12 {
            if i % 2 == 0 { breaker.recordFailure(at: t0 + .seconds(i)) } else { breaker.recordSuccess(at: t0 + .seconds(i)) }
        }
        #expect(breaker.state(at: t0 + .seconds(12)) != .closed)
    }

    @Test func routeStatsBegin_admitsThroughTheBreakerAndCountsInFlight() {
        var stats = RouteStats(breaker: settings)
        let t0 = ContinuousClock.now
        let first = stats.begin(at: t0)
        #expect(first && stats.inFlight == 1)
        for _ in 0..<3 { stats.recordFailure(at: t0) }
        let whileOpen = stats.begin(at: t0 + .seconds(1))
        #expect(!whileOpen, "three failures opened the breaker")
        #expect(stats.inFlight == 1, "a refused request is not counted in flight")
        let probe = stats.begin(at: t0 + .seconds(11)), second = stats.begin(at: t0 + .seconds(11))
        #expect(probe, "half-open after the open period: one probe")
        #expect(!second && stats.inFlight == 2, "and only one")
    }

    /// The failure ratio counts the last 1,000 outcomes inside the window, across the bulk drops of old ones.
    @Test func failureRatio_countsOnlyTheWindow() {
        // A breaker that never opens, so only the window's arithmetic is seen (opening clears the window).
        var breaker = CircuitBreaker(settings: .init(consecutiveFailures: .max, failureRatio: 2, minimumRequests: 10, window: .seconds(30)))
        let t0 = ContinuousClock.now
        for _ in 0..<700 { breaker.recordFailure(at: t0) }
        #expect(breaker.failureRatio == 1)
        for _ in 0..<1000 { breaker.recordSuccess(at: t0) }
        #expect(breaker.failureRatio == 0, "the 700 failures fell out of the 1,000 kept")
        for _ in 0..<250 { breaker.recordFailure(at: t0 + .seconds(1)) }
        #expect(breaker.failureRatio == 0.25)
        breaker.recordSuccess(at: t0 + .seconds(20))
        #expect(abs(breaker.failureRatio - 250.0 / 1000.0) < 1e-9)
        breaker.recordSuccess(at: t0 + .seconds(30) + .milliseconds(500))
        #expect(abs(breaker.failureRatio - 250.0 / 252.0) < 1e-9, "outcomes at t0 are older than the 30 s window")
        breaker.recordSuccess(at: t0 + .seconds(60))
        #expect(breaker.failureRatio == 0, "only the last two successes are inside the window")
    }

    @Test func afterTheOpenPeriod_halfOpenAdmitsExactlyOneProbe() {
        var breaker = CircuitBreaker(settings: settings)
        let t0 = ContinuousClock.now
        for _ in 0..<3 { breaker.recordFailure(at: t0) }
        let later = t0 + .seconds(10)
        #expect(breaker.state(at: later) == .halfOpen(probeInFlight: false))
        let first = breaker.admit(at: later)
        let second = breaker.admit(at: later)
        #expect(first)
        #expect(!second)
    }

    @Test func probeSuccess_closes_probeFailure_reopensForTwiceAsLong() {
        let t0 = ContinuousClock.now
        var closing = CircuitBreaker(settings: settings)
        for _ in 0..<3 { closing.recordFailure(at: t0) }
        _ = closing.admit(at: t0 + .seconds(10))
        closing.recordSuccess(at: t0 + .seconds(10))
        #expect(closing.state(at: t0 + .seconds(10)) == .closed)

        var reopening = CircuitBreaker(settings: settings)
        for _ in 0..<3 { reopening.recordFailure(at: t0) }
        _ = reopening.admit(at: t0 + .seconds(10))
        reopening.recordFailure(at: t0 + .seconds(10))
        #expect(reopening.state(at: t0 + .seconds(10)) == .open(until: t0 + .seconds(30)))
    }

    @Test func routeStats_trackLatencyAndErrorEWMA() {
        var stats = RouteStats(breaker: settings, alpha: 0.5)
        let t0 = ContinuousClock.now
        stats.recordSuccess(latency: .milliseconds(100), at: t0)
        stats.recordSuccess(latency: .milliseconds(300), at: t0)
        #expect(stats.latencyEWMA == .milliseconds(200))
        stats.recordFailure(at: t0)
        #expect(stats.errorEWMA == 0.5)
        #expect(stats.errorRate(at: t0) == 0.5)
    }

    @Test func routeStats_errorRateFadesWithoutNewSamples() {
        var stats = RouteStats(breaker: settings, alpha: 0.5)
        stats.errorHalfLife = .seconds(30)
        let t0 = ContinuousClock.now
        stats.recordFailure(at: t0)
        stats.recordFailure(at: t0)
        #expect(stats.errorRate(at: t0) == 0.75)
        #expect(abs(stats.errorRate(at: t0 + .seconds(30)) - 0.375) < 1e-9)
        #expect(stats.errorRate(at: t0 + .seconds(300)) < 0.001)
        // A new sample starts from the faded value.
        stats.recordSuccess(latency: .milliseconds(10), at: t0 + .seconds(30))
        #expect(abs(stats.errorRate(at: t0 + .seconds(30)) - 0.1875) < 1e-9)
    }
}
