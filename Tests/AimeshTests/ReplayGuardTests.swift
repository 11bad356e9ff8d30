import MeshCore
import MeshState
import Sodium
import Testing
import Wire

/// The replay guard as a pure state machine: stamps and "now" are given, nothing waits.
@Suite struct ReplayGuardTests {
    static let a = NodeID(testNumber: 1), b = NodeID(testNumber: 2)
    static let now: UInt64 = 1_800_000_000_000_000
    static let second: UInt64 = 1_000_000

    @Test func aPacketIsAcceptedOnce_perSender() {
        var guardian = ReplayGuard()
        #expect(guardian.check(Self.a, stamp: Self.now, nowMicros: Self.now) == .fresh)
        #expect(guardian.check(Self.a, stamp: Self.now, nowMicros: Self.now) == .replayed)
        // The same stamp from another sender is another packet.
        #expect(guardian.check(Self.b, stamp: Self.now, nowMicros: Self.now) == .fresh)
        #expect(guardian.check(Self.a, stamp: Self.now + 1, nowMicros: Self.now) == .fresh)
        #expect(guardian.check(Self.a, stamp: Self.now + 1, nowMicros: Self.now + Self.second) == .replayed)
    }

    @Test func reorderingWithinTheWindow_isAccepted_olderIsRefused() {
        var guardian = ReplayGuard()
        let newest = Self.now + 100 * Self.second
        #expect(guardian.check(Self.a, stamp: newest, nowMicros: newest) == .fresh)
        // 59 s late (a slow TCP frame overtaken by datagrams): fine, once.
        #expect(guardian.check(Self.a, stamp: newest - 59 * Self.second, nowMicros: newest) == .fresh)
        #expect(guardian.check(Self.a, stamp: newest - 59 * Self.second, nowMicros: newest) == .replayed)
        // At or past the window's floor nobody can tell, so it is refused.
        #expect(guardian.check(Self.a, stamp: newest - 60 * Self.second, nowMicros: newest) == .replayed)
        #expect(guardian.check(Self.a, stamp: Self.now, nowMicros: newest) == .replayed)
    }

    @Test func aFirstPacket_mustBeRecent() {
        var guardian = ReplayGuard()
        #expect(guardian.check(Self.a, stamp: Self.now - 11 * 60 * Self.second, nowMicros: Self.now) == .stale)
        #expect(guardian.senderCount == 0, "a stale packet takes no room")
        #expect(guardian.check(Self.a, stamp: Self.now - 9 * 60 * Self.second, nowMicros: Self.now) == .fresh)
        // A sender whose clock runs ahead is accepted (its stamps only need to grow).
        #expect(guardian.check(Self.b, stamp: Self.now + 3_600 * Self.second, nowMicros: Self.now) == .fresh)
        // Early in the epoch (a test clock) nothing underflows.
        var early = ReplayGuard()
        #expect(early.check(Self.a, stamp: 5, nowMicros: 10) == .fresh)
        #expect(early.check(Self.a, stamp: 4, nowMicros: 10) == .fresh)
        #expect(early.check(Self.a, stamp: 0, nowMicros: 10) == .replayed, "0 is at the floor")
    }

    @Test func memoryIsBounded_perSenderAndInSenders() {
        var settings = ReplayGuard.Settings()
        settings.maxSenders = 3
        settings.maxPerSender = 100
        var guardian = ReplayGuard(settings: settings)
        // A chatty sender: 1,000 stamps a millisecond apart, all within the window, all accepted.
        for i in 0..<1_000 {
            #expect(guardian.check(Self.a, stamp: Self.now + UInt64(i) * 1_000, nowMicros: Self.now) == .fresh)
        }
        // The oldest were forgotten and raised the floor: they now count as replays, the newest still do too.
        #expect(guardian.check(Self.a, stamp: Self.now, nowMicros: Self.now) == .replayed)
        #expect(guardian.check(Self.a, stamp: Self.now + 999_000, nowMicros: Self.now) == .replayed)
        // A gap between kept stamps above the floor is still free.
        #expect(guardian.check(Self.a, stamp: Self.now + 998_500, nowMicros: Self.now) == .fresh)
        // A fourth sender evicts the least recently heard one.
        for n in 2...4 { #expect(guardian.check(NodeID(testNumber: UInt64(n)), stamp: Self.now, nowMicros: Self.now) == .fresh) }
        #expect(guardian.senderCount == 3)
        #expect(guardian.check(NodeID(testNumber: 4), stamp: Self.now, nowMicros: Self.now) == .replayed, "recent senders are kept")
        #expect(guardian.check(Self.a, stamp: Self.now + 999_000, nowMicros: Self.now) == .fresh, "a, heard least recently, was forgotten")
    }

    @Test func stampClock_isStrictlyIncreasing_andStartsAboveItsFloor() {
        let clock = StampClock()
        var last: UInt64 = 0
        for _ in 0..<10_000 {
            let stamp = clock.next()
            #expect(stamp > last)
            last = stamp
        }
        #expect(last >= StampClock.wallMicros() - 60 * Self.second)
        // A node that persisted a stamp ahead of a clock that stepped back continues above it.
        let ahead = StampClock.wallMicros() + 3_600 * Self.second
        let restarted = StampClock(floor: ahead)
        #expect(restarted.next() == ahead + 1)
        #expect(restarted.next() == ahead + 2)
        #expect(restarted.latest == ahead + 2)
    }

    @Test func packetsCarryTheirStamp_andVersionOneIsRefused() throws {
        let key = Ed25519.KeyPair(seed: [UInt8](repeating: 7, count: 32))!
        let packet = Packet.encode([.ack(seq: 1)], signer: key, meshKey: nil, stamp: 123_456)
        #expect(try Packet.decode(packet, meshKeys: []).stamp == 123_456)
        var old = packet
        old[2] = 1
        #expect(throws: WireError.unsupportedVersion(1)) { _ = try Packet.decode(old, meshKeys: []) }
    }

    /// Forwarded requests (x-aiproxy-hop): each accepted once for as long as its timestamp passes the
    /// window (30 s either side), in O(1) per request at any rate.
    @Test func hopReplayFilter_remembersForTwoWindows_andForgetsLater() {
        let window: Int64 = 30_000
        var filter = HopReplayFilter(windowMillis: window)
        let start: Int64 = 1_800_000_000_000
        func fresh(_ sender: NodeID, _ id: String, _ now: Int64) -> Bool { filter.firstSighting(from: sender, requestID: id, nowMillis: now) }
        #expect(fresh(Self.a, "r1", start))
        #expect(!fresh(Self.a, "r1", start))
        #expect(fresh(Self.b, "r1", start), "another sender's id is another request")
        // Seen just before the generation turns over: still remembered a full two windows later, when a
        // header stamped at its first sighting minus the window has long stopped passing the time check.
        let late = start + 2 * window - 1
        #expect(fresh(Self.a, "r2", late))
        #expect(!fresh(Self.a, "r1", start + 2 * window), "r1 moved to the older generation")
        #expect(!fresh(Self.a, "r2", late + 2 * window - 1))
        // Long after, old entries are dropped whole and the memory is back to what is recent.
        let later = late + 10 * window
        #expect(fresh(Self.a, "r3", later))
        #expect(filter.count == 1)
        #expect(fresh(Self.a, "r1", later), "forgotten: its header is long stale")
    }

    @Test func hopReplayFilter_keepsEveryRequestOfABusyMinute() {
        var filter = HopReplayFilter(windowMillis: 30_000)
        let start: Int64 = 1_800_000_000_000
        // 200,000 forwarded requests over 60 s (3,333/s): every one fresh once, every one a replay after.
        var fresh = 0, replays = 0
        for i in 0..<200_000 where filter.firstSighting(from: Self.a, requestID: "req_\(i)", nowMillis: start + Int64(i) * 60_000 / 200_000) { fresh += 1 }
        for i in stride(from: 0, to: 200_000, by: 97) where !filter.firstSighting(from: Self.a, requestID: "req_\(i)", nowMillis: start + 60_000) { replays += 1 }
        #expect(fresh == 200_000)
        #expect(replays == (200_000 + 96) / 97)
        #expect(filter.count == 200_000)
    }
}
