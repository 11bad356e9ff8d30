import MeshCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A node's packet stamps (PROTOCOL.md §3.1): microseconds of the wall clock, strictly increasing even
/// when two packets leave in the same microsecond or the clock steps back. Starting above `floor` (the
/// last stamp the node persisted) keeps a restarted node ahead of what its peers remember.
public final class StampClock: Sendable {
    private let last: Atomic<UInt64>

    public init(floor: UInt64 = 0) {
        last = Atomic(floor)
    }

    /// The next stamp: the wall clock, or one more than the previous stamp when the clock is behind it.
    public func next() -> UInt64 {
        var current = last.load(ordering: .relaxed)
        while true {
            let candidate = max(current &+ 1, StampClock.wallMicros())
            let (exchanged, original) = last.compareExchange(expected: current, desired: candidate, ordering: .relaxed)
            if exchanged { return candidate }
            current = original
        }
    }

    /// The last stamp handed out (what a node persists).
    public var latest: UInt64 { last.load(ordering: .relaxed) }

    public static func wallMicros() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(max(0, spec.tv_sec)) * 1_000_000 + UInt64(max(0, spec.tv_nsec)) / 1_000
    }
}

/// Refuses signed packets that were already received (PROTOCOL.md §3.1). A pure state machine: the
/// caller passes the time. Per sender it keeps the highest stamp and the stamps accepted within
/// `window` below it; a stamp at or below the window's floor, or one already seen, is `replayed`. The
/// first packet of a sender it holds nothing about must be younger than `maxAge` (`stale` otherwise), so
/// after a restart only recent captures could be replayed once — and stale SWIM and record messages are
/// ignored by their incarnations and versions anyway.
///
/// Bounded: at most `maxSenders` senders (the least recently heard is forgotten) and about
/// `maxPerSender` stamps each (the oldest go, raising that sender's floor: a sender that reaches this
/// node faster than 34 packets a second gets a narrower reordering window).
public struct ReplayGuard: Sendable {
    public struct Settings: Sendable {
        /// How far below a sender's newest stamp a packet may arrive (reordering, UDP vs TCP): 60 s.
        public var window: UInt64 = 60_000_000
        /// The oldest first packet of an unknown sender accepted: 10 minutes (records already need
        /// clocks within their 5-minute lifetime).
        public var maxAge: UInt64 = 600_000_000
        public var maxSenders = 4_096
        public var maxPerSender = 2_048
        public init() {}
    }

    public enum Verdict: String, Sendable, Equatable {
        case fresh
        /// Seen before, or too far below the sender's newest stamp to tell.
        case replayed = "replayed_packet"
        /// The first packet from a sender, stamped more than `maxAge` ago.
        case stale = "stale_packet"
    }

    struct Sender: Sendable {
        var highest: UInt64
        /// Stamps at or below this are refused.
        var floor: UInt64
        var seen: Set<UInt64>
        var pruneAt: Int
        /// Order of last acceptance, for forgetting the least recently heard sender.
        var touched: UInt64
    }

    public let settings: Settings
    var senders: [NodeID: Sender] = [:]
    var clock: UInt64 = 0

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    public var senderCount: Int { senders.count }

    /// Checks a verified packet's stamp and, when fresh, remembers it.
    public mutating func check(_ sender: NodeID, stamp: UInt64, nowMicros: UInt64) -> Verdict {
        clock &+= 1
        if senders[sender] != nil {
            return senders[sender]!.accept(stamp, touched: clock, settings: settings) ? .fresh : .replayed
        }
        guard stamp >= nowMicros &- min(nowMicros, settings.maxAge) else { return .stale }
        if senders.count >= settings.maxSenders, let oldest = senders.min(by: { $0.value.touched < $1.value.touched })?.key {
            senders[oldest] = nil
        }
        senders[sender] = Sender(highest: stamp, floor: stamp &- min(stamp, settings.window), seen: [stamp], pruneAt: 64, touched: clock)
        return .fresh
    }

}

extension ReplayGuard.Sender {
    mutating func accept(_ stamp: UInt64, touched: UInt64, settings: ReplayGuard.Settings) -> Bool {
        guard stamp > floor, seen.insert(stamp).inserted else { return false }
        self.touched = touched
        if stamp > highest {
            highest = stamp
            floor = max(floor, stamp &- min(stamp, settings.window))
        }
        if seen.count >= pruneAt {
            let limit = floor
            seen = seen.filter { $0 > limit }
            if seen.count > settings.maxPerSender {
                let sorted = seen.sorted()
                let dropped = sorted.count - settings.maxPerSender
                floor = sorted[dropped - 1]
                seen = Set(sorted[dropped...])
            }
            pruneAt = min(max(64, seen.count * 2), settings.maxPerSender + settings.maxPerSender / 4)
        }
        return true
    }
}
