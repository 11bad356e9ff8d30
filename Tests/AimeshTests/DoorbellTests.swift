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
@Suite struct DoorbellTests {
    /// Yields until the doorbell has a waiter (its `wait` registers from another task), at most `tries` times.
    static func untilWaiting(_ doorbell: Doorbell, tries: Int = 10_000) async -> Bool {
        for _ in 0..<tries {
            if doorbell.isWaiting { return true }
            await Task.yield()
        }
        return doorbell.isWaiting
    }

    @Test func theTimer_endsTheWait() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let doorbell = Doorbell(loop: loop)
        let waiting = Task { await doorbell.wait(for: .seconds(5)) }
        #expect(await Self.untilWaiting(doorbell))
        await loop.advanceTime(by: .seconds(4))
        #expect(doorbell.isWaiting, "not yet")
        await loop.advanceTime(by: .seconds(1))
        await waiting.value
        #expect(!doorbell.isWaiting)
        try await loop.shutdownGracefully()
    }

    @Test func aRing_endsTheWaitEarly() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let doorbell = Doorbell(loop: loop)
        let waiting = Task { await doorbell.wait(for: .seconds(3600)) }
        #expect(await Self.untilWaiting(doorbell))
        doorbell.ring()
        await waiting.value
        #expect(!doorbell.isWaiting)
        #expect(!doorbell.isRung, "the ring was used by the wait it ended")
        try await loop.shutdownGracefully()
    }

    @Test func aRingWithNobodyWaiting_endsTheNextWaitAtOnce_andRingsDoNotAddUp() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let doorbell = Doorbell(loop: loop)
        doorbell.ring()
        doorbell.ring()
        #expect(doorbell.isRung)
        await doorbell.wait(for: .seconds(3600))   // returns without the clock moving
        #expect(!doorbell.isRung)
        let second = Task { await doorbell.wait(for: .seconds(10)) }
        #expect(await Self.untilWaiting(doorbell), "two rings ended one wait, not two")
        doorbell.ring()
        await second.value
        try await loop.shutdownGracefully()
    }

    /// A wait rung out early leaves its timer behind (cancelled, or already firing): that timer must not end
    /// the next wait.
    @Test func anEarlierWaitsTimer_doesNotEndTheNextWait() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let doorbell = Doorbell(loop: loop)
        let first = Task { await doorbell.wait(for: .seconds(1)) }
        #expect(await Self.untilWaiting(doorbell))
        doorbell.ring()
        await first.value
        let second = Task { await doorbell.wait(for: .seconds(10)) }
        #expect(await Self.untilWaiting(doorbell))
        await loop.advanceTime(by: .seconds(2))
        #expect(doorbell.isWaiting, "the first wait's timer did not end the second")
        await loop.advanceTime(by: .seconds(8))
        await second.value
        try await loop.shutdownGracefully()
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
