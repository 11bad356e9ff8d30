/// A token bucket on a caller's clock (pure, for rate limits): `capacity` tokens at most, refilled at
/// `refillPerSecond`. `take` spends tokens or says how long until they are there.
public struct TokenBucket: Sendable, Equatable {
    public let capacity: Double
    public let refillPerSecond: Double
    public private(set) var tokens: Double
    public private(set) var updated: Duration

    public init(capacity: Double, refillPerSecond: Double, now: Duration) {
        self.capacity = capacity
        self.refillPerSecond = refillPerSecond
        self.tokens = capacity
        self.updated = now
    }

    /// A limit of `count` per `period`, allowing the whole count as a burst.
    public init(count: Int, per period: Duration, now: Duration) {
        let seconds = Double(period.components.seconds) + Double(period.components.attoseconds) / 1e18
        self.init(capacity: Double(max(1, count)), refillPerSecond: Double(max(1, count)) / max(seconds, 0.001), now: now)
    }

    mutating func refill(_ now: Duration) {
        guard now > updated else { return }
        let elapsed = Double((now - updated).components.seconds) + Double((now - updated).components.attoseconds) / 1e18
        tokens = min(capacity, tokens + elapsed * refillPerSecond)
        updated = now
    }

    /// Spends `amount` if available (nil); otherwise spends nothing and returns the wait until it would be.
    public mutating func take(_ amount: Double = 1, now: Duration) -> Duration? {
        refill(now)
        if tokens >= amount {
            tokens -= amount
            return nil
        }
        let missing = min(amount, capacity) - tokens
        return .milliseconds(Int64((missing / refillPerSecond * 1000).rounded(.up)))
    }

    /// Spends unconditionally (tokens may go negative: a large answer is paid for afterwards).
    public mutating func charge(_ amount: Double, now: Duration) {
        refill(now)
        tokens -= amount
    }

    /// How long until at least one token is available (zero when there is one now).
    public mutating func wait(now: Duration) -> Duration {
        refill(now)
        guard tokens < 1 else { return .zero }
        return .milliseconds(Int64(((1 - tokens) / refillPerSecond * 1000).rounded(.up)))
    }
}
