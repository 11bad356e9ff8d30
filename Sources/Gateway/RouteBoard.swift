import MeshCore
import Providers
import Routing
import Synchronization

/// A route the executor can try: the planner's view of it plus the adapter that speaks to it.
public struct ExecutableRoute: Sendable {
    public var candidate: RouteCandidate
    public var adapter: any ProviderAdapter
    public var connectTimeout: Duration
    public var firstByteTimeout: Duration
    public var idleTimeout: Duration
    /// `max_tokens` default for APIs that need one.
    public var defaultMaxTokens: Int
    /// Names for `x_aiproxy.route` beyond this node (a peer's node name, then its provider).
    public var pathSuffix: [String]

    public init(candidate: RouteCandidate, adapter: any ProviderAdapter, connectTimeout: Duration = .seconds(5), firstByteTimeout: Duration = .seconds(60),
                idleTimeout: Duration = .seconds(120), defaultMaxTokens: Int = 4096, pathSuffix: [String] = []) {
        self.candidate = candidate
        self.adapter = adapter
        self.connectTimeout = connectTimeout
        self.firstByteTimeout = firstByteTimeout
        self.idleTimeout = idleTimeout
        self.defaultMaxTokens = defaultMaxTokens
        self.pathSuffix = pathSuffix
    }
}

/// What this node has observed of every route: latency, errors, in-flight count, circuit breaker.
/// One lock around a dictionary of pure `RouteStats` values.
public final class RouteBoard: Sendable {
    private let stats = Mutex<[String: RouteStats]>([:])
    private let rotations = Mutex<[String: UInt64]>([:])
    let breakerSettings: CircuitBreaker.Settings

    public init(breakerSettings: CircuitBreaker.Settings) {
        self.breakerSettings = breakerSettings
    }

    /// Fills in this node's live observations of each candidate, in place and under one lock.
    public func observe(_ candidates: inout [RouteCandidate], now: ContinuousClock.Instant) {
        stats.withLock { all in
            for index in candidates.indices {
                guard let entry = all[candidates[index].id] else { continue }
                candidates[index].expectedLatency = entry.latencyEWMA ?? candidates[index].expectedLatency
                candidates[index].inFlight = entry.inFlight
                candidates[index].errorRate = max(entry.errorRate(at: now), candidates[index].errorRate)
                candidates[index].breaker = entry.breaker.peek(at: now)
            }
        }
    }

    /// Admits a request on the route (false while its breaker is open or a half-open probe runs)
    /// and counts it in flight.
    public func begin(_ id: String, now: ContinuousClock.Instant) -> Bool {
        // In place (the `default:` subscript): a copy out and back would copy the breaker's outcome
        // window, up to 1,000 entries, on every request.
        stats.withLock { all in all[id, default: RouteStats(breaker: breakerSettings)].begin(at: now) }
    }

    public func succeeded(_ id: String, latency: Duration, now: ContinuousClock.Instant) {
        stats.withLock { all in all[id, default: RouteStats(breaker: breakerSettings)].recordSuccess(latency: latency, at: now) }
    }

    public func failed(_ id: String, now: ContinuousClock.Instant) {
        stats.withLock { all in all[id, default: RouteStats(breaker: breakerSettings)].recordFailure(at: now) }
    }

    public func ended(_ id: String) {
        stats.withLock { all in
            // Through the index: `all[id]?.end()` moved the entry out and back (six allocations a request).
            if let index = all.index(forKey: id) { all.values[index].end() }
        }
    }

    /// The next round-robin position for a model.
    public func nextRotation(for model: String) -> UInt64 {
        rotations.withLock { all in
            let value = all[model, default: 0]
            all[model] = value &+ 1
            return value
        }
    }

    public struct Snapshot: Sendable {
        public var id: String
        public var latency: Duration?
        public var errorRate: Double
        public var inFlight: Int
        public var successes: Int
        public var failures: Int
        public var breaker: CircuitBreaker.State
    }

    public func snapshot(now: ContinuousClock.Instant) -> [Snapshot] {
        stats.withLock { all in
            all.map { id, entry in
                Snapshot(id: id, latency: entry.latencyEWMA, errorRate: entry.errorRate(at: now), inFlight: entry.inFlight,
                         successes: entry.successes, failures: entry.failures, breaker: entry.breaker.peek(at: now))
            }.sorted { $0.id < $1.id }
        }
    }

    public func snapshot(of id: String, now: ContinuousClock.Instant) -> Snapshot? {
        stats.withLock { all in
            all[id].map { entry in
                Snapshot(id: id, latency: entry.latencyEWMA, errorRate: entry.errorRate(at: now), inFlight: entry.inFlight,
                         successes: entry.successes, failures: entry.failures, breaker: entry.breaker.peek(at: now))
            }
        }
    }
}
