import NIOCore
import Synchronization

/// Where a loop sleeps until its next deadline, and is woken earlier when someone rings.
///
/// The timer is the event loop's own (`scheduleCallback`, no promise), so a sleeper that wakes on time costs
/// one wake-up of that loop. `Task.sleep` goes through the default executor's timer thread on Linux: each
/// wake-up of the mesh's run loop touched four threads (the timer thread, a worker, the event loop, the timer
/// thread again to arm the next one).
///
/// A ring with nobody waiting is kept for the next `wait`, which then returns at once; rings do not add up.
/// One waiter at a time.
final class Doorbell: Sendable {
    private struct State {
        var waiter: CheckedContinuation<Void, Never>?
        /// Which wait the waiter is: a timer that fires after its wait was rung out must not end the next one.
        var generation: UInt64 = 0
        var timer: NIOScheduledCallback?
        var rung = false
    }

    /// The timer of one wait.
    private struct Alarm: NIOScheduledCallbackHandler, Sendable {
        let doorbell: Doorbell
        let generation: UInt64
        func handleScheduledCallback(eventLoop: some EventLoop) { doorbell.fire(generation) }
    }

    private let loop: any EventLoop
    private let state = Mutex(State())

    init(loop: any EventLoop) {
        self.loop = loop
    }

    /// Returns after `delay`, or earlier when `ring()` is called (or was called since the last wait returned).
    func wait(for delay: Duration) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let generation = state.withLock { state -> UInt64? in
                if state.rung {
                    state.rung = false
                    return nil
                }
                precondition(state.waiter == nil, "Doorbell has one waiter at a time")
                state.generation &+= 1
                state.waiter = continuation
                return state.generation
            }
            guard let generation else {
                continuation.resume()
                return
            }
            let nanoseconds = max(0, delay.components.seconds) * 1_000_000_000 + max(0, delay.components.attoseconds / 1_000_000_000)
            let timer: NIOScheduledCallback
            do {
                timer = try loop.scheduleCallback(at: loop.now + .nanoseconds(nanoseconds), handler: Alarm(doorbell: self, generation: generation))
            } catch {
                // The loop is shutting down (the node's never does): the default executor's timer instead.
                Task { [self] in
                    try? await Task.sleep(for: delay)
                    fire(generation)
                }
                return
            }
            let stale = state.withLock { state -> Bool in
                guard state.generation == generation, state.waiter != nil else { return true }
                state.timer = timer
                return false
            }
            if stale { timer.cancel() }
        }
    }

    /// Whether a wait is in progress (tests).
    var isWaiting: Bool { state.withLock { $0.waiter != nil } }
    /// Whether a ring is kept for the next wait (tests).
    var isRung: Bool { state.withLock { $0.rung } }

    /// Ends the current wait now, or the next one as soon as it starts.
    func ring() {
        let (waiter, timer) = state.withLock { state -> (CheckedContinuation<Void, Never>?, NIOScheduledCallback?) in
            guard let waiter = state.waiter else {
                state.rung = true
                return (nil, nil)
            }
            state.waiter = nil
            defer { state.timer = nil }
            return (waiter, state.timer)
        }
        timer?.cancel()
        waiter?.resume()
    }

    /// Ends the wait `generation` if it is still the current one (its timer).
    func fire(_ generation: UInt64) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard state.generation == generation, let waiter = state.waiter else { return nil }
            state.waiter = nil
            state.timer = nil
            return waiter
        }
        waiter?.resume()
    }
}
