import MeshCore
import MeshState
import Sodium
import Membership
import NIOCore
import NIOEmbedded
import Testing
@testable import Transport
import Wire

/// The mesh run loop's sleep: the event loop's timer, ended early by a ring. On a testing event loop with a
/// manual clock.
@Suite(.timeLimit(.minutes(1))) struct DoorbellTests {
    /// A doorbell on a fresh testing event loop, shut down after `body`.
    static func withDoorbell(_ body: (NIOAsyncTestingEventLoop, Doorbell) async throws -> Void) async throws {
        let loop = NIOAsyncTestingEventLoop()
        try await body(loop, Doorbell(loop: loop))
        try await loop.shutdownGracefully()
    }

    /// Yields until the doorbell has a waiter (its `wait` registers from another task), at most `tries` times.
    static func untilWaiting(_ doorbell: Doorbell, tries: Int = 10_000) async -> Bool {
        for _ in 0..<tries {
            if doorbell.isWaiting { return true }
            await Task.yield()
        }
        return doorbell.isWaiting
    }

    @Test func theTimer_endsTheWait() async throws {
        try await Self.withDoorbell { loop, doorbell in
            let waiting = Task { await doorbell.wait(for: .seconds(5)) }
            #expect(await Self.untilWaiting(doorbell))
            await loop.advanceTime(by: .seconds(4))
            #expect(doorbell.isWaiting, "not yet")
            await loop.advanceTime(by: .seconds(1))
            await waiting.value
            #expect(!doorbell.isWaiting)
        }
    }

    @Test func aRing_endsTheWaitEarly() async throws {
        try await Self.withDoorbell { _, doorbell in
            let waiting = Task { await doorbell.wait(for: .seconds(3600)) }
            #expect(await Self.untilWaiting(doorbell))
            doorbell.ring()
            await waiting.value
            #expect(!doorbell.isWaiting)
            #expect(!doorbell.isRung, "the ring was used by the wait it ended")
        }
    }

    @Test func aRingWithNobodyWaiting_endsTheNextWaitAtOnce_andRingsDoNotAddUp() async throws {
        try await Self.withDoorbell { _, doorbell in
            doorbell.ring()
            doorbell.ring()
            #expect(doorbell.isRung)
            await doorbell.wait(for: .seconds(3600))   // returns without the clock moving
            #expect(!doorbell.isRung)
            let second = Task { await doorbell.wait(for: .seconds(10)) }
            #expect(await Self.untilWaiting(doorbell), "two rings ended one wait, not two")
            doorbell.ring()
            await second.value
        }
    }

    /// A wait rung out early cancels its timer, and a timer that fires anyway (it was already running when the
    /// ring came) must not end the next wait.
    @Test func anEarlierWaitsTimer_doesNotEndTheNextWait() async throws {
        try await Self.withDoorbell { loop, doorbell in
            let first = Task { await doorbell.wait(for: .seconds(1)) }
            #expect(await Self.untilWaiting(doorbell))
            doorbell.ring()
            await first.value
            let second = Task { await doorbell.wait(for: .seconds(10)) }
            #expect(await Self.untilWaiting(doorbell))
            await loop.advanceTime(by: .seconds(2))
            #expect(doorbell.isWaiting, "the first wait's cancelled timer did not end the second")
            doorbell.fire(1)   // the first wait's timer, firing late
            #expect(doorbell.isWaiting, "a late timer of the first wait did not end the second")
            await loop.advanceTime(by: .seconds(8))
            await second.value
        }
    }

    /// The run loop is woken when a change leaves the agent a timer earlier than the one it sleeps until,
    /// and not otherwise; with nothing to gossip, that timer is not the next gossip round.
    @Test func mutate_ringsOnlyForAnEarlierDeadline() throws {
        let settings = MeshServiceSettings(listenHost: "127.0.0.1", listenPort: 0, advertise: nil, seeds: [], meshKeys: [], swim: SwimSettings())
        func service() -> MeshService {
            let service = MeshService(identity: .generate(), certificate: [], trust: TrustStore(mode: .open), settings: settings, persistence: nil,
                                      logger: .init(label: "doorbell-test"))
            service.state.withLock { _ = $0.agent.tick(now: .seconds(1)) }
            return service
        }
        let other = NodeID(testNumber: 7)
        let news = MeshMessage.alive(Alive(node: other, incarnation: 1, address: PeerAddress(host: "127.0.0.1", port: 9)))
        let round = Duration.seconds(1) + settings.swim.gossipInterval

        let asleep = service()
        let idle = asleep.state.withLock { $0.agent.nextDeadline }
        #expect(idle > round, "an idle node does not wake for gossip rounds with nothing to send")
        asleep.state.withLock { $0.sleepingUntil = idle }
        asleep.mutate { _ in }
        #expect(!asleep.doorbell.isRung, "a change that leaves the deadline where it was")
        asleep.mutate { $0.agent.swim.broadcast(news, key: .member(other)) }
        #expect(asleep.doorbell.isRung, "news to gossip")
        #expect(asleep.state.withLock { $0.agent.nextDeadline } <= round)

        // Awake (no wake-up recorded): the loop reads the deadline again before it sleeps; nothing rings.
        let awake = service()
        awake.mutate { $0.agent.swim.broadcast(news, key: .member(other)) }
        #expect(!awake.doorbell.isRung)
    }
}
