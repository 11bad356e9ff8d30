import MeshCore
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
}
