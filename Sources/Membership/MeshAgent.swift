import MeshCore
import Wire

/// Where an agent keeps records. The real node verifies signatures and trust; the simulator uses
/// small synthetic records. Both spread them the same way.
public protocol RecordStore: Sendable {
    /// Merges a record; returns its origin when it was new (to be relayed), nil when stale or refused.
    mutating func merge(_ bytes: [UInt8], now: Duration) -> NodeID?
    func digest() -> [DigestEntry]
    func newer(than digest: [DigestEntry]) -> [[UInt8]]
}

/// Agent settings beyond SWIM's.
public struct AgentSettings: Sendable {
    public var pushPullInterval: Duration = .seconds(30)
    /// A second push-pull this long after joining, with a random member, to collect records that
    /// were still spreading when the first one ran.
    public var joinFollowUp: Duration = .seconds(2)
    /// First retry of unanswered seeds; doubles up to `pushPullInterval`.
    public var seedRetry: Duration = .seconds(1)
    /// How often to try one member lost to failure (dead, or reaped after dying; never one that left)
    /// with a push-pull: what heals a partition once the cut is gone, from either side.
    public var reconnectInterval: Duration = .seconds(1)
    /// How long a lost member is tried before it is given up.
    public var reconnectTimeout: Duration = .seconds(6 * 3600)
    /// At most this many lost members are remembered for reconnecting (the oldest are dropped).
    public var maxLost: Int = 1024
    public init() {}
}

/// What the agent asks the shell to do besides SWIM's sends.
public enum AgentOutput: Sendable, Equatable {
    case swim(SwimOutput)
    /// Open a TCP push-pull exchange with this peer (join, and periodic anti-entropy).
    case pushPull(to: PeerAddress)
    /// A record from `origin` was accepted (new or newer).
    case recordAccepted(NodeID)
}

/// SWIM plus record dissemination: piggybacked epidemic broadcast of new records, scuttlebutt
/// push-pull over TCP (PROTOCOL.md §5–§7). Pure; the shells (UDP/TCP, or the simulator) carry it.
public struct MeshAgent<Store: RecordStore>: Sendable {
    public var swim: Swim
    public var store: Store
    public var settings: AgentSettings
    var nextPushPullAt: Duration
    var random: SplitMix64
    /// Configured seeds: retried until one answers, then re-checked every push-pull interval so that
    /// halves of a healed partition find each other again.
    public private(set) var seeds: [PeerAddress] = []
    public private(set) var joined = false
    var nextSeedAttemptAt: Duration?
    var seedBackoff: Duration = .zero
    var followUpAt: Duration?
    var nextReconnectAt: Duration = .zero
    /// Addresses of members lost to failure, with when they were first seen dead.
    public private(set) var lost: [PeerAddress: Duration] = [:]

    public init(swim: Swim, store: Store, settings: AgentSettings = AgentSettings(), seed: UInt64) {
        self.swim = swim
        self.store = store
        self.settings = settings
        self.random = SplitMix64(seed: seed ^ 0xA5A5_5A5A)
        self.nextPushPullAt = .zero
    }

    /// Joins through seeds: push-pull with each (the shell retries failures with backoff).
    public mutating func join(seeds: [PeerAddress], now: Duration) -> [AgentOutput] {
        swim.announce()
        self.seeds = seeds.filter { $0 != swim.address }
        nextPushPullAt = now + settings.pushPullInterval
        joined = self.seeds.isEmpty
        seedBackoff = settings.seedRetry
        nextSeedAttemptAt = joined ? nil : now + seedBackoff
        return self.seeds.map { .pushPull(to: $0) }
    }

    /// Publishes this node's own record (already stored by the caller's store) to the mesh.
    public mutating func publish(_ bytes: [UInt8], now: Duration) -> Bool {
        guard let origin = store.merge(bytes, now: now) else { return false }
        swim.broadcast(.record(bytes), key: .record(origin))
        return true
    }

    public mutating func tick(now: Duration) -> [AgentOutput] {
        var out = swim.tick(now: now).map(AgentOutput.swim)
        if let due = nextSeedAttemptAt, now >= due, !joined {
            seedBackoff = min(seedBackoff * 2, settings.pushPullInterval)
            nextSeedAttemptAt = now + seedBackoff
            out += seeds.map { .pushPull(to: $0) }
        }
        if let due = followUpAt, now >= due {
            followUpAt = nil
            if let pick = randomLiveMember() { out.append(.pushPull(to: pick.address)) }
        }
        if now >= nextPushPullAt {
            nextPushPullAt = now + settings.pushPullInterval
            if let pick = randomLiveMember() { out.append(.pushPull(to: pick.address)) }
            // Seeds that are not live members: maybe the far side of a healed partition.
            let live = Set(swim.liveMembers.map(\.address))
            out += seeds.filter { !live.contains($0) }.map { .pushPull(to: $0) }
        }
        if now >= nextReconnectAt {
            nextReconnectAt = now + settings.reconnectInterval
            if let target = pickLost(now: now) { out.append(.pushPull(to: target)) }
        }
        return out
    }

    /// Refreshes the lost list (dead members join it; members alive again, those that left, and the
    /// expired leave it) and picks one at random.
    mutating func pickLost(now: Duration) -> PeerAddress? {
        var leftOrLive = Set<PeerAddress>()
        for member in swim.members.values {
            switch member.status {
            case .dead:
                if lost[member.address] == nil { lost[member.address] = now }
            case .left, .alive, .suspect:
                leftOrLive.insert(member.address)
            }
        }
        lost = lost.filter { !leftOrLive.contains($0.key) && now - $0.value < settings.reconnectTimeout }
        if lost.count > settings.maxLost {
            for (address, _) in lost.sorted(by: { $0.value < $1.value }).prefix(lost.count - settings.maxLost) { lost[address] = nil }
        }
        guard !lost.isEmpty else { return nil }
        let candidates = lost.keys.sorted { ($0.host, $0.port) < ($1.host, $1.port) }
        return candidates[Int(random.next() % UInt64(candidates.count))]
    }

    mutating func randomLiveMember() -> Member? {
        let live = swim.liveMembers
        guard !live.isEmpty else { return nil }
        return live.sorted { $0.id < $1.id }[Int(random.next() % UInt64(live.count))]
    }

    public var nextDeadline: Duration {
        var next = min(swim.nextDeadline, nextPushPullAt)
        if let due = nextSeedAttemptAt, !joined { next = min(next, due) }
        if let due = followUpAt { next = min(next, due) }
        next = min(next, nextReconnectAt)
        return next
    }

    /// One received packet (UDP, or a TCP frame outside push-pull).
    public mutating func receive(_ messages: [MeshMessage], from sender: NodeID, source: PeerAddress, now: Duration) -> [AgentOutput] {
        var out = swim.receive(messages, from: sender, source: source, now: now).map(AgentOutput.swim)
        for message in messages {
            switch message {
            case .record(let bytes):
                if let origin = store.merge(bytes, now: now) {
                    swim.broadcast(.record(bytes), key: .record(origin))
                    out.append(.recordAccepted(origin))
                }
            default:
                continue
            }
        }
        return out
    }

    // MARK: Push-pull (TCP): request → reply → final

    /// The opening message of a push-pull: full membership and the record digest.
    public func pushPullRequest() -> [MeshMessage] {
        [.members(swim.pushPullState()), .digest(store.digest())]
    }

    /// Answers a push-pull: merges the peer's state, replies with ours, the records the peer lacks and our digest.
    public mutating func answerPushPull(_ messages: [MeshMessage], now: Duration) -> (reply: [MeshMessage], outputs: [AgentOutput]) {
        let (theirDigest, outputs) = absorb(messages, now: now)
        var reply: [MeshMessage] = [.members(swim.pushPullState())]
        if let theirDigest { reply += store.newer(than: theirDigest).map(MeshMessage.record) }
        reply.append(.digest(store.digest()))
        return (reply, outputs)
    }

    /// Takes the reply; returns the records the responder lacks (the final leg) and what happened.
    public mutating func finishPushPull(_ messages: [MeshMessage], now: Duration) -> (final: [MeshMessage], outputs: [AgentOutput]) {
        if !joined {
            joined = true
            nextSeedAttemptAt = nil
            followUpAt = now + settings.joinFollowUp
        }
        let (theirDigest, outputs) = absorb(messages, now: now)
        guard let theirDigest else { return ([], outputs) }
        return (store.newer(than: theirDigest).map(MeshMessage.record), outputs)
    }

    /// The final leg: records only.
    public mutating func absorbRecords(_ messages: [MeshMessage], now: Duration) -> [AgentOutput] {
        absorb(messages, now: now).outputs
    }

    mutating func absorb(_ messages: [MeshMessage], now: Duration) -> (digest: [DigestEntry]?, outputs: [AgentOutput]) {
        var out: [AgentOutput] = []
        var digest: [DigestEntry]?
        for message in messages {
            switch message {
            case .members(let states):
                out += swim.merge(states, now: now).map(AgentOutput.swim)
            case .digest(let entries):
                digest = entries
            case .record(let bytes):
                // Learned in bulk: keep, but do not flood the mesh with what anti-entropy already spreads.
                if let origin = store.merge(bytes, now: now) { out.append(.recordAccepted(origin)) }
            default:
                continue
            }
        }
        return (digest, out)
    }
}
