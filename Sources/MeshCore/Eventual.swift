import Synchronization

/// A value that arrives once (a bound port, say), or a failure; any number of tasks may wait for it.
public final class Eventual<Value: Sendable>: Sendable {
    private let state = Mutex<(result: Result<Value, any Error>?, waiters: [CheckedContinuation<Value, any Error>])>((nil, []))

    public init() {}

    /// The value, if it has arrived.
    public var current: Value? { state.withLock { state in (try? state.result?.get()) ?? nil } }

    /// Waits for the value (or throws the failure).
    public func value() async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            let ready: Result<Value, any Error>? = state.withLock { state in
                if let result = state.result { return result }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// Settles it; the first settlement wins.
    public func settle(_ result: Result<Value, any Error>) {
        let waiters = state.withLock { state -> [CheckedContinuation<Value, any Error>] in
            guard state.result == nil else { return [] }
            state.result = result
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }
}

/// Polls `condition` every `interval` until it holds or `timeout` passes, for state that another node or
/// process reaches in its own time and announces to no one (gossip spreading, a peer's first probe, a
/// failure detected); returns the last answer. Where there is an event to wait on, wait on that instead.
public func eventually(_ timeout: Duration = .seconds(15), every interval: Duration = .milliseconds(25),
                       _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await condition()
}
