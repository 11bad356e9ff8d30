#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What this node has seen of one route: latency and error-rate moving averages and its breaker.
/// A pure value; the gateway keeps one per route behind a lock.
public struct RouteStats: Sendable {
    /// Exponentially weighted mean of the time to a full answer (non-streaming) or first token.
    public private(set) var latencyEWMA: Duration?
    /// Exponentially weighted failure ratio (0–1) as of `errorUpdated`; read it with `errorRate(at:)`,
    /// which also lets it fade with time, so a route demoted for its errors is not exiled for ever
    /// when healthier routes take all the traffic and it gets no new samples.
    public private(set) var errorEWMA: Double = 0
    public private(set) var errorUpdated: ContinuousClock.Instant?
    /// Time for an unrefreshed error ratio to halve.
    public var errorHalfLife: Duration = .seconds(30)
    public private(set) var inFlight = 0
    public private(set) var successes = 0
    public private(set) var failures = 0
    public var breaker: CircuitBreaker

    /// Weight of the newest sample.
    public let alpha: Double

    public init(breaker: CircuitBreaker.Settings, alpha: Double = 0.2) {
        self.breaker = CircuitBreaker(settings: breaker)
        self.alpha = alpha
    }

    /// Admits a request (false while the breaker is open or its half-open probe is out) and counts it in
    /// flight when admitted.
    public mutating func begin(at now: ContinuousClock.Instant) -> Bool {
        guard breaker.admit(at: now) else { return false }
        inFlight += 1
        return true
    }

    public mutating func end() { inFlight = max(0, inFlight - 1) }

    public mutating func recordSuccess(latency: Duration, at now: ContinuousClock.Instant) {
        successes += 1
        errorEWMA = errorRate(at: now) * (1 - alpha)
        errorUpdated = now
        if let current = latencyEWMA {
            latencyEWMA = current * (1 - alpha) + latency * alpha
        } else {
            latencyEWMA = latency
        }
        breaker.recordSuccess(at: now)
    }

    public mutating func recordFailure(at now: ContinuousClock.Instant) {
        failures += 1
        errorEWMA = errorRate(at: now) * (1 - alpha) + alpha
        errorUpdated = now
        breaker.recordFailure(at: now)
    }

    /// The failure ratio at `now`: the EWMA, halved for every `errorHalfLife` without a new sample.
    public func errorRate(at now: ContinuousClock.Instant) -> Double {
        guard let errorUpdated, errorEWMA > 0 else { return errorEWMA }
        let idle = now - errorUpdated
        guard idle > .zero else { return errorEWMA }
        return errorEWMA * pow(0.5, idle / errorHalfLife)
    }
}
