/// A circuit breaker for one route, as a pure state machine over a clock the caller hands in.
///
/// Transitions:
/// - closed → open: `consecutiveFailures` failures in a row, or a failure ratio ≥ `failureRatio` over
///   the last `window` with at least `minimumRequests` outcomes;
/// - open → half-open: once `openDuration` has passed (checked lazily by `state(at:)`);
/// - half-open → closed: the probe succeeds; half-open → open: the probe fails (the open period doubles,
///   up to 8×, so a dead upstream is probed ever less often).
public struct CircuitBreaker: Sendable, Equatable {
    public struct Settings: Sendable, Equatable {
        public var consecutiveFailures: Int
        public var failureRatio: Double
        public var minimumRequests: Int
        public var window: Duration
        public var openDuration: Duration

        public init(consecutiveFailures: Int = 5, failureRatio: Double = 0.5, minimumRequests: Int = 10, window: Duration = .seconds(30), openDuration: Duration = .seconds(15)) {
            self.consecutiveFailures = consecutiveFailures
            self.failureRatio = failureRatio
            self.minimumRequests = minimumRequests
            self.window = window
            self.openDuration = openDuration
        }
    }

    public enum State: Sendable, Equatable {
        case closed
        case open(until: ContinuousClock.Instant)
        /// `probeInFlight` is true while the single trial request runs.
        case halfOpen(probeInFlight: Bool)

        public var name: String {
            switch self {
            case .closed: "closed"
            case .open: "open"
            case .halfOpen: "half_open"
            }
        }
    }

    public let settings: Settings
    public private(set) var storedState: State = .closed
    public private(set) var consecutive = 0
    /// Outcomes, oldest first: (time, success). Those before `head` have left the window; they are dropped
    /// in bulk, so a request costs O(1) instead of shifting the whole window.
    private var outcomes: [(ContinuousClock.Instant, Bool)] = []
    private var head = 0
    private var failuresInWindow = 0
    private var countInWindow: Int { outcomes.count - head }
    private var openCount = 0

    public init(settings: Settings) { self.settings = settings }

    public static func == (lhs: CircuitBreaker, rhs: CircuitBreaker) -> Bool {
        lhs.storedState == rhs.storedState && lhs.consecutive == rhs.consecutive && lhs.openCount == rhs.openCount
    }

    /// The state at `now`, moving open → half-open when the open period is over.
    public mutating func state(at now: ContinuousClock.Instant) -> State {
        if case .open(let until) = storedState, now >= until { storedState = .halfOpen(probeInFlight: false) }
        return storedState
    }

    /// The state at `now` without changing anything.
    public func peek(at now: ContinuousClock.Instant) -> State {
        if case .open(let until) = storedState, now >= until { return .halfOpen(probeInFlight: false) }
        return storedState
    }

    /// Whether a request may go now. In half-open, only one probe is admitted until it reports.
    public mutating func admit(at now: ContinuousClock.Instant) -> Bool {
        switch state(at: now) {
        case .closed: return true
        case .open: return false
        case .halfOpen(let probeInFlight):
            if probeInFlight { return false }
            storedState = .halfOpen(probeInFlight: true)
            return true
        }
    }

    public mutating func recordSuccess(at now: ContinuousClock.Instant) {
        consecutive = 0
        append(now, success: true)
        switch state(at: now) {
        case .halfOpen:
            storedState = .closed
            openCount = 0
            outcomes.removeAll(keepingCapacity: true)
            head = 0
            failuresInWindow = 0
        default: break
        }
    }

    public mutating func recordFailure(at now: ContinuousClock.Instant) {
        consecutive += 1
        append(now, success: false)
        switch state(at: now) {
        case .halfOpen:
            trip(at: now)
        case .closed:
            if consecutive >= settings.consecutiveFailures {
                trip(at: now)
            } else if countInWindow >= settings.minimumRequests {
                if failureRatio >= settings.failureRatio { trip(at: now) }
            }
        case .open:
            break
        }
    }

    /// Failure ratio over the window (0 when there are no outcomes).
    public var failureRatio: Double {
        guard countInWindow > 0 else { return 0 }
        return Double(failuresInWindow) / Double(countInWindow)
    }

    private mutating func trip(at now: ContinuousClock.Instant) {
        openCount = min(openCount + 1, 4)
        let factor = 1 << (openCount - 1)
        storedState = .open(until: now + settings.openDuration * factor)
    }

    private mutating func append(_ now: ContinuousClock.Instant, success: Bool) {
        outcomes.append((now, success))
        if !success { failuresInWindow += 1 }
        let horizon = now - settings.window
        while head < outcomes.count, outcomes[head].0 < horizon || countInWindow > 1000 {
            if !outcomes[head].1 { failuresInWindow -= 1 }
            head += 1
        }
        if head >= 512, head * 2 >= outcomes.count {
            outcomes.removeFirst(head)
            head = 0
        }
    }
}
