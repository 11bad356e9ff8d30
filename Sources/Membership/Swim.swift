import MeshCore
import Wire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SWIM tuning (PROTOCOL.md §5): memberlist's LAN profile with its probe and gossip periods halved,
/// which `scripts/bench-gossip` shows detects failures in ~5 s at 100 nodes with no false positive at
/// 10 % loss, for a few kbit/s per node.
public struct SwimSettings: Sendable, Equatable {
    public var probeInterval: Duration = .milliseconds(500)
    public var probeTimeout: Duration = .milliseconds(250)
    /// k: members asked to probe indirectly.
    public var indirectChecks = 3
    /// Suspicion lasts suspicionMultiplier × log10(n) × probeInterval at least…
    public var suspicionMultiplier = 4
    /// …and this many times that at most (Lifeguard's dynamic suspicion).
    public var suspicionMaxTimeoutMultiplier = 6
    /// Each broadcast is sent retransmitMultiplier × ⌈log10(n + 1)⌉ times.
    public var retransmitMultiplier = 4
    public var gossipInterval: Duration = .milliseconds(100)
    public var gossipFanout = 3
    /// Lifeguard's local health multiplier ceiling.
    public var awarenessMax = 8
    /// Dead members still get gossip this long (so they can refute) and are then forgotten.
    public var gossipToTheDead: Duration = .seconds(30)
    /// Bytes of messages one UDP packet may carry (the datagram minus the envelope).
    public var maxPacketPayload = WireLimits.maxUDPPacket - Packet.overhead(sealed: true)

    public init() {}
}

/// One known member.
public struct Member: Sendable, Equatable {
    public var id: NodeID
    public var address: PeerAddress
    public var incarnation: UInt64
    public var status: MemberStatus
    /// When the status last changed (the state machine's clock).
    public var since: Duration
    public var certificate: [UInt8]

    public var alive: Alive { Alive(node: id, incarnation: incarnation, address: address, certificate: certificate) }
}

/// What the shell must do.
public enum SwimOutput: Sendable, Equatable {
    /// Send these messages in one UDP packet.
    case send(to: PeerAddress, messages: [MeshMessage])
    /// Send these over TCP (broadcasts too large for a datagram).
    case sendReliable(to: PeerAddress, messages: [MeshMessage])
    /// A member's status changed (`from` nil: newly learned).
    case changed(NodeID, from: MemberStatus?, to: MemberStatus)
    /// A dead member was forgotten.
    case removed(NodeID)
}

/// What broadcasts are about: a newer broadcast replaces an older one with the same key.
public enum BroadcastKey: Hashable, Sendable {
    case member(NodeID)
    case record(NodeID)
    case revocation(NodeID)
    case apiKey(NodeID)
}

/// SWIM with Lifeguard as a pure state machine (DESIGN.md §3, PROTOCOL.md §5). Time is a `Duration`
/// since any fixed origin, passed in by the caller; randomness comes from a seeded generator. The
/// shell feeds it packets and ticks and carries out its outputs.
public struct Swim: Sendable {
    public let me: NodeID
    public private(set) var address: PeerAddress
    public private(set) var incarnation: UInt64
    public let certificate: [UInt8]
    public var settings: SwimSettings
    public private(set) var members: [NodeID: Member] = [:] {
        didSet { caches = nil }
    }
    /// Derived views of `members`, rebuilt after any change (picks run far more often than changes).
    struct Caches {
        var sortedIDs: [NodeID]
        var liveCount: Int
    }
    var caches: Caches?
    /// Lifeguard's local health multiplier: 0 (healthy) … awarenessMax.
    public private(set) var awareness = 0
    public private(set) var leaving = false

    struct Probe {
        var seq: UInt32
        var target: NodeID
        var sentAt: Duration = .zero
        var indirectAt: Duration
        var deadline: Duration
        var acked = false
        var indirectSent = false
        var expectedNacks = 0
        var nacks = 0
    }

    struct Relay {
        var origin: PeerAddress
        var originSeq: UInt32
        var nackAt: Duration
        var expires: Duration
        var nackSent = false
    }

    struct Suspicion {
        var started: Duration
        /// Accusers heard so far (the first one included, but it does not count as a confirmation).
        var seen: Set<NodeID>
        var confirmations: Int
        var k: Int
        var minimum: Duration
        var maximum: Duration

        var deadline: Duration {
            guard k > 0 else { return started + minimum }
            guard confirmations > 0 else { return started + maximum }
            let fraction = log(Double(confirmations) + 1) / log(Double(k) + 1)
            let timeout = max(minimum, maximum - (maximum - minimum) * min(1, fraction))
            return started + timeout
        }
    }

    struct Broadcast {
        var message: MeshMessage
        var size: Int
        var transmits: Int
        var order: UInt64
    }

    var probe: Probe?
    var relays: [UInt32: Relay] = [:]
    var suspicions: [NodeID: Suspicion] = [:]
    var broadcasts: [BroadcastKey: Broadcast] = [:]
    var broadcastOrder: UInt64 = 0
    var probeOrder: [NodeID] = []
    var probeIndex = 0
    var nextProbeAt: Duration = .zero
    var nextGossipAt: Duration = .zero
    var nextReapAt: Duration = .zero
    var sequence: UInt32 = 0
    var random: SplitMix64

    public init(me: NodeID, address: PeerAddress, incarnation: UInt64, certificate: [UInt8] = [], settings: SwimSettings = SwimSettings(), seed: UInt64) {
        self.me = me
        self.address = address
        self.incarnation = incarnation
        self.certificate = certificate
        self.settings = settings
        self.random = SplitMix64(seed: seed)
    }

    // MARK: Views

    public var localAlive: Alive { Alive(node: me, incarnation: incarnation, address: address, certificate: certificate) }

    /// Members that count as part of the mesh (alive or suspect), not counting this node.
    public var liveMembers: [Member] { members.values.filter { $0.status == .alive || $0.status == .suspect } }

    /// n for the formulas: this node plus every alive or suspect member.
    var clusterSize: Int {
        if let caches { return 1 + caches.liveCount }
        return 1 + members.values.reduce(0) { $0 + (($1.status == .alive || $1.status == .suspect) ? 1 : 0) }
    }

    mutating func currentCaches() -> Caches {
        if let caches { return caches }
        let built = Caches(sortedIDs: members.keys.sorted(),
                           liveCount: members.values.reduce(0) { $0 + (($1.status == .alive || $1.status == .suspect) ? 1 : 0) })
        caches = built
        return built
    }

    public var retransmitLimit: Int {
        settings.retransmitMultiplier * Int(ceil(log10(Double(clusterSize + 1))))
    }

    func scaled(_ duration: Duration) -> Duration { duration * (awareness + 1) }

    public var pendingBroadcasts: Int { broadcasts.count }

    /// Full state for push-pull: this node first, then every member.
    public func pushPullState() -> [MemberState] {
        [MemberState(alive: localAlive, status: leaving ? .left : .alive)] + members.values.sorted { $0.id < $1.id }.map { MemberState(alive: $0.alive, status: $0.status) }
    }

    // MARK: Clock

    /// Runs due timers: the probe cycle, suspicion timeouts, gossip, relays and reaping.
    public mutating func tick(now: Duration) -> [SwimOutput] {
        var out: [SwimOutput] = []
        if leaving { return out }
        finishRelays(now: now, into: &out)
        advanceProbe(now: now, into: &out)
        expireSuspicions(now: now, into: &out)
        if now >= nextGossipAt {
            nextGossipAt = now + settings.gossipInterval
            gossip(now: now, into: &out)
        }
        reap(now: now, into: &out)
        return out
    }

    /// The earliest time `tick` has work to do (for a shell that sleeps until then). A gossip round counts
    /// only when there is something to gossip: an idle node wakes for its probes, not ten times a second for
    /// rounds that would send nothing. A broadcast queued while the shell sleeps makes this earlier (the
    /// shell compares after every change, `MeshService.mutate`).
    public var nextDeadline: Duration {
        var next = broadcasts.isEmpty ? nextProbeAt : min(nextProbeAt, nextGossipAt)
        if let probe { next = min(next, probe.acked ? next : (probe.indirectSent ? probe.deadline : probe.indirectAt)) }
        for relay in relays.values { next = min(next, relay.nackSent ? relay.expires : relay.nackAt) }
        for suspicion in suspicions.values { next = min(next, suspicion.deadline) }
        return next
    }

    mutating func nextSequence() -> UInt32 {
        sequence &+= 1
        return sequence
    }

    mutating func advanceProbe(now: Duration, into out: inout [SwimOutput]) {
        if var current = probe, !current.acked {
            if !current.indirectSent && now >= current.indirectAt {
                current.indirectSent = true
                if let target = members[current.target] {
                    let helpers = pick(settings.indirectChecks, excluding: [current.target]) { $0.status == .alive }
                    for helper in helpers {
                        out.append(.send(to: helper.address, messages: withPiggyback([.pingReq(seq: current.seq, target: current.target, address: target.address)])))
                    }
                    current.expectedNacks = helpers.count
                }
                probe = current
            }
            if now >= current.deadline {
                // Failed: Lifeguard counts the failure and every nack that did not come.
                probe = nil
                adjustAwareness(1 + max(0, current.expectedNacks - current.nacks))
                // Also when it is suspect already: an independent confirmation shortens everyone's timer.
                if let target = members[current.target], target.status == .alive || target.status == .suspect {
                    suspect(Accusation(node: target.id, incarnation: target.incarnation, from: me), now: now, into: &out)
                }
            }
        }
        guard now >= nextProbeAt else { return }
        if let current = probe, !current.acked, now < current.deadline { return }
        nextProbeAt = now + scaled(settings.probeInterval)
        guard let target = nextProbeTarget() else { probe = nil; return }
        let seq = nextSequence()
        let timeout = scaled(settings.probeTimeout)
        probe = Probe(seq: seq, target: target.id, sentAt: now, indirectAt: now + timeout, deadline: now + scaled(settings.probeInterval))
        var messages: [MeshMessage] = [.ping(seq: seq, target: target.id)]
        // Lifeguard's buddy system: tell a suspect member directly, so it can refute at once.
        if target.status == .suspect { messages.append(.suspect(Accusation(node: target.id, incarnation: target.incarnation, from: me))) }
        out.append(.send(to: target.address, messages: withPiggyback(messages)))
    }

    mutating func nextProbeTarget() -> Member? {
        for _ in 0..<2 {
            while probeIndex < probeOrder.count {
                let id = probeOrder[probeIndex]
                probeIndex += 1
                if let member = members[id], member.status == .alive || member.status == .suspect { return member }
            }
            probeOrder = members.values.filter { $0.status == .alive || $0.status == .suspect }.map(\.id).sorted()
            probeOrder.shuffle(using: &random)
            probeIndex = 0
        }
        return nil
    }

    mutating func adjustAwareness(_ delta: Int) {
        awareness = min(settings.awarenessMax, max(0, awareness + delta))
    }

    mutating func finishRelays(now: Duration, into out: inout [SwimOutput]) {
        for (seq, relay) in relays {
            if now >= relay.expires {
                relays[seq] = nil
            } else if !relay.nackSent && now >= relay.nackAt {
                relays[seq]?.nackSent = true
                out.append(.send(to: relay.origin, messages: [.nack(seq: relay.originSeq)]))
            }
        }
    }

    mutating func expireSuspicions(now: Duration, into out: inout [SwimOutput]) {
        for (id, suspicion) in suspicions where now >= suspicion.deadline {
            suspicions[id] = nil
            guard let member = members[id], member.status == .suspect else { continue }
            declareDead(Accusation(node: id, incarnation: member.incarnation, from: me), now: now, into: &out)
        }
    }

    mutating func gossip(now: Duration, into out: inout [SwimOutput]) {
        guard !broadcasts.isEmpty else { return }
        let toTheDead = settings.gossipToTheDead
        let targets = pick(settings.gossipFanout, excluding: []) { member in
            member.status == .alive || member.status == .suspect || now - member.since < toTheDead
        }
        for target in targets {
            let (small, large) = takeBroadcasts(budget: settings.maxPacketPayload)
            if !small.isEmpty { out.append(.send(to: target.address, messages: small)) }
            if !large.isEmpty { out.append(.sendReliable(to: target.address, messages: large)) }
        }
    }

    mutating func reap(now: Duration, into out: inout [SwimOutput]) {
        guard now >= nextReapAt else { return }
        nextReapAt = now + settings.probeInterval
        for (id, member) in members where (member.status == .dead || member.status == .left) && now - member.since >= settings.gossipToTheDead {
            members[id] = nil
            suspicions[id] = nil
            out.append(.removed(id))
        }
    }

    /// `count` distinct random members passing `filter`, never this node or `excluding`.
    mutating func pick(_ count: Int, excluding: Set<NodeID>, _ filter: (Member) -> Bool) -> [Member] {
        let ids = currentCaches().sortedIDs
        if ids.count > count * 4 {
            // Large meshes: sample, checking each draw, instead of filtering everyone.
            var chosen: [Member] = []
            var seen = excluding
            var attempts = 0
            while chosen.count < count && attempts < count * 16 {
                attempts += 1
                let id = ids[Int(random.next() % UInt64(ids.count))]
                guard !seen.contains(id), let member = members[id] else { continue }
                seen.insert(id)
                if filter(member) { chosen.append(member) }
            }
            if chosen.count == count { return chosen }
        }
        var pool = ids.compactMap { members[$0] }.filter { !excluding.contains($0.id) && filter($0) }
        guard pool.count > count else { return pool }
        var chosen: [Member] = []
        for _ in 0..<count {
            let index = Int(random.next() % UInt64(pool.count))
            chosen.append(pool.remove(at: index))
        }
        return chosen
    }

    // MARK: Broadcasts

    /// Queues a message for epidemic spread, replacing an older one about the same thing.
    public mutating func broadcast(_ message: MeshMessage, key: BroadcastKey) {
        broadcastOrder += 1
        broadcasts[key] = Broadcast(message: message, size: message.encodedSize, transmits: 0, order: broadcastOrder)
    }

    /// Least-sent first (newest first among equals), as many as fit `budget`; those larger than a
    /// packet could ever carry come back separately, for TCP.
    mutating func takeBroadcasts(budget: Int) -> (small: [MeshMessage], large: [MeshMessage]) {
        let (small, large) = selectBroadcasts(budget: budget, maxCount: WireLimits.maxMessagesPerPacket - 1, includeLarge: true, recordShare: false)
        return (small, large)
    }

    /// Adds queued broadcasts to a probe message while they fit.
    mutating func withPiggyback(_ messages: [MeshMessage]) -> [MeshMessage] {
        let used = messages.reduce(0) { $0 + $1.encodedSize }
        let budget = settings.maxPacketPayload - used
        guard budget > 0 else { return messages }
        return messages + selectBroadcasts(budget: budget, maxCount: WireLimits.maxMessagesPerPacket - 1 - messages.count, includeLarge: false, recordShare: false).small
    }

    /// One linear pass over the queue keeping the best `maxCount` candidates of each class (no sort
    /// of the whole queue, no copies of messages); membership news goes first, like memberlist's
    /// own queue before its delegate's, so that large records never crowd out a refutation (with
    /// `recordShare`, records keep part of the packet). Then as many as fit `budget`; counts their
    /// transmissions.
    mutating func selectBroadcasts(budget: Int, maxCount: Int, includeLarge: Bool, recordShare: Bool) -> (small: [MeshMessage], large: [MeshMessage]) {
        guard !broadcasts.isEmpty, maxCount > 0 else { return ([], []) }
        _ = currentCaches()
        let limit = max(1, retransmitLimit)
        let payload = settings.maxPacketPayload
        typealias Candidate = (transmits: Int, order: UInt64, key: BroadcastKey, size: Int)
        func better(_ a: Candidate, _ b: Candidate) -> Bool { a.transmits != b.transmits ? a.transmits < b.transmits : a.order > b.order }
        func offer(_ candidate: Candidate, to best: inout [Candidate]) {
            if best.count == maxCount, let worst = best.last, !better(candidate, worst) { return }
            var low = 0, high = best.count
            while low < high {
                let mid = (low + high) / 2
                if better(best[mid], candidate) { low = mid + 1 } else { high = mid }
            }
            best.insert(candidate, at: low)
            if best.count > maxCount { best.removeLast() }
        }
        var membership: [Candidate] = [], others: [Candidate] = []
        var largeKeys: [BroadcastKey] = []
        for (key, item) in broadcasts {
            if item.size > payload {
                if includeLarge { largeKeys.append(key) }
                continue
            }
            if item.size > budget { continue }
            let candidate: Candidate = (item.transmits, item.order, key, item.size)
            if case .member = key { offer(candidate, to: &membership) } else { offer(candidate, to: &others) }
        }
        var small: [MeshMessage] = []
        var used = 0
        var taken = Set<BroadcastKey>()
        func take(_ candidates: [Candidate], upTo cap: Int) {
            for candidate in candidates where used + candidate.size <= cap && small.count < maxCount {
                guard taken.insert(candidate.key).inserted, let item = broadcasts[candidate.key] else { continue }
                small.append(item.message)
                used += candidate.size
                if item.transmits + 1 >= limit { broadcasts[candidate.key] = nil } else { broadcasts[candidate.key]?.transmits += 1 }
            }
        }
        // Membership first. Probe traffic (pings, acks) carries membership news before anything
        // else; gossip packets keep ~40 % for records while they wait, so that a burst of
        // membership news (many joins at once) cannot stall them.
        take(membership, upTo: others.isEmpty || !recordShare ? budget : budget * 6 / 10)
        take(others, upTo: budget)
        take(membership, upTo: budget)
        var large: [MeshMessage] = []
        for key in largeKeys {
            guard let item = broadcasts[key] else { continue }
            large.append(item.message)
            if item.transmits + 1 >= limit { broadcasts[key] = nil } else { broadcasts[key]?.transmits += 1 }
        }
        return (small, large)
    }

    // MARK: Receiving

    /// When `messages` hold the direct ack of the running probe: its target and when the ping left
    /// (the shell turns that into a round-trip time).
    public func pendingProbeStart(for messages: [MeshMessage]) -> (NodeID, Duration)? {
        guard let probe, !probe.acked, !probe.indirectSent else { return nil }
        for case .ack(let seq) in messages where seq == probe.seq { return (probe.target, probe.sentAt) }
        return nil
    }

    /// Handles the membership messages of one packet from `sender`, which came from `source`.
    public mutating func receive(_ messages: [MeshMessage], from sender: NodeID, source: PeerAddress, now: Duration) -> [SwimOutput] {
        var out: [SwimOutput] = []
        if leaving { return out }
        var acks: [MeshMessage] = []
        for message in messages {
            switch message {
            case .ping(let seq, let target):
                guard target == me else { continue }
                acks.append(.ack(seq: seq))
            case .ack(let seq):
                if var current = probe, current.seq == seq, !current.acked {
                    current.acked = true
                    probe = current
                    adjustAwareness(-1)
                } else if let relay = relays.removeValue(forKey: seq) {
                    out.append(.send(to: relay.origin, messages: [.ack(seq: relay.originSeq)]))
                }
            case .nack(let seq):
                if var current = probe, current.seq == seq {
                    current.nacks += 1
                    probe = current
                }
            case .pingReq(let seq, let target, let address):
                guard target != me else {
                    out.append(.send(to: source, messages: [.ack(seq: seq)]))
                    continue
                }
                let relaySeq = nextSequence()
                let timeout = scaled(settings.probeTimeout)
                relays[relaySeq] = Relay(origin: source, originSeq: seq, nackAt: now + timeout * 0.8, expires: now + timeout * 2)
                out.append(.send(to: address, messages: [.ping(seq: relaySeq, target: target)]))
            case .alive(let alive):
                applyAlive(alive, now: now, into: &out)
            case .suspect(let accusation):
                suspect(accusation, now: now, into: &out)
            case .dead(let accusation):
                declareDead(accusation, now: now, into: &out)
            case .members(let states):
                merge(states, now: now, into: &out)
            case .record, .revocation, .digest, .apiKey:
                continue
            }
        }
        // Acks go last so that they carry whatever this packet made us broadcast (a refutation).
        if !acks.isEmpty {
            // A node we hold dead is talking to us: it restarted, or we missed its refutation. Tell it
            // what we believe, so that it sends its current `alive` again.
            if let member = members[sender], member.status == .dead || member.status == .left {
                acks.append(.dead(Accusation(node: sender, incarnation: member.incarnation, from: me)))
            }
            out.append(.send(to: source, messages: withPiggyback(acks)))
        }
        _ = sender
        return out
    }

    /// Merges a peer's full state (push-pull).
    public mutating func merge(_ states: [MemberState], now: Duration) -> [SwimOutput] {
        var out: [SwimOutput] = []
        merge(states, now: now, into: &out)
        return out
    }

    mutating func merge(_ states: [MemberState], now: Duration, into out: inout [SwimOutput]) {
        for state in states {
            switch state.status {
            case .alive:
                applyAlive(state.alive, now: now, into: &out)
            case .suspect:
                applyAlive(state.alive, now: now, into: &out)
                suspect(Accusation(node: state.alive.node, incarnation: state.alive.incarnation, from: me), now: now, into: &out, confirming: false)
            case .dead, .left:
                // A peer's verdict is news only about members this node already knows.
                if state.alive.node != me, members[state.alive.node] == nil { continue }
                if state.status == .dead, state.alive.node != me {
                    // Someone else's "dead" may be stale (the far side of a healed partition): suspect
                    // instead, so a member that is in fact alive can refute before it is dropped (memberlist
                    // does the same).
                    suspect(Accusation(node: state.alive.node, incarnation: state.alive.incarnation, from: me), now: now, into: &out, confirming: false)
                    continue
                }
                let from = state.status == .left ? state.alive.node : me
                declareDead(Accusation(node: state.alive.node, incarnation: state.alive.incarnation, from: from), now: now, into: &out)
            }
        }
    }

    mutating func applyAlive(_ alive: Alive, now: Duration, into out: inout [SwimOutput]) {
        if alive.node == me {
            // Someone remembers a later life of this node: move past it.
            if alive.incarnation > incarnation { refute(above: alive.incarnation) }
            return
        }
        if var member = members[alive.node] {
            guard alive.incarnation > member.incarnation else { return }
            let previous = member.status
            member.incarnation = alive.incarnation
            member.address = alive.address
            if !alive.certificate.isEmpty { member.certificate = alive.certificate }
            if previous != .alive { member.status = .alive; member.since = now }
            members[alive.node] = member
            suspicions[alive.node] = nil
            broadcast(.alive(member.alive), key: .member(alive.node))
            if previous != .alive { out.append(.changed(alive.node, from: previous, to: .alive)) }
        } else {
            let member = Member(id: alive.node, address: alive.address, incarnation: alive.incarnation, status: .alive, since: now, certificate: alive.certificate)
            members[alive.node] = member
            let position = probeOrder.isEmpty ? 0 : Int(random.next() % UInt64(probeOrder.count + 1))
            probeOrder.insert(alive.node, at: position)
            if position < probeIndex { probeIndex += 1 }
            broadcast(.alive(alive), key: .member(alive.node))
            out.append(.changed(alive.node, from: nil, to: .alive))
        }
    }

    /// Someone suspects or declares this node dead. A current accusation is refuted with a higher
    /// incarnation (and counts against local health); an old one means the accuser missed the
    /// refutation, so it is sent again. The accuser's timer is the one running: it is told directly too.
    mutating func answerAccusationAboutMe(_ accusation: Accusation, into out: inout [SwimOutput]) {
        guard !leaving else { return }
        if accusation.incarnation >= incarnation {
            refute(above: accusation.incarnation)
            adjustAwareness(1)
        } else {
            broadcast(.alive(localAlive), key: .member(me))
        }
        if let accuser = members[accusation.from], accusation.from != me { out.append(.send(to: accuser.address, messages: [.alive(localAlive)])) }
    }

    mutating func refute(above seen: UInt64) {
        incarnation = max(incarnation, seen) + 1
        broadcast(.alive(localAlive), key: .member(me))
    }

    mutating func suspect(_ accusation: Accusation, now: Duration, into out: inout [SwimOutput], confirming: Bool = true) {
        if accusation.node == me {
            answerAccusationAboutMe(accusation, into: &out)
            return
        }
        guard var member = members[accusation.node], accusation.incarnation >= member.incarnation else { return }
        switch member.status {
        case .dead, .left:
            return
        case .suspect:
            guard confirming, var suspicion = suspicions[member.id], suspicion.seen.insert(accusation.from).inserted else { return }
            suspicion.confirmations += 1
            suspicions[member.id] = suspicion
            broadcast(.suspect(accusation), key: .member(member.id))
        case .alive:
            member.status = .suspect
            member.incarnation = accusation.incarnation
            member.since = now
            members[member.id] = member
            let n = clusterSize
            let k = settings.suspicionMultiplier - 2 > n - 2 ? 0 : settings.suspicionMultiplier - 2
            let minimum = settings.probeInterval * (Double(settings.suspicionMultiplier) * max(1, log10(Double(max(1, n)))))
            suspicions[member.id] = Suspicion(started: now, seen: [accusation.from], confirmations: 0, k: max(0, k), minimum: minimum,
                                              maximum: minimum * settings.suspicionMaxTimeoutMultiplier)
            broadcast(.suspect(accusation), key: .member(member.id))
            out.append(.changed(member.id, from: .alive, to: .suspect))
        }
    }

    mutating func declareDead(_ accusation: Accusation, now: Duration, into out: inout [SwimOutput]) {
        if accusation.node == me {
            answerAccusationAboutMe(accusation, into: &out)
            return
        }
        guard var member = members[accusation.node], accusation.incarnation >= member.incarnation,
              member.status != .dead, member.status != .left
        else { return }
        let previous = member.status
        member.status = accusation.from == accusation.node ? .left : .dead
        member.incarnation = accusation.incarnation
        member.since = now
        members[member.id] = member
        suspicions[member.id] = nil
        broadcast(.dead(accusation), key: .member(member.id))
        out.append(.changed(member.id, from: previous, to: member.status))
    }

    // MARK: Joining and leaving

    /// Announces this node: its alive goes out with the next messages.
    public mutating func announce() {
        broadcast(.alive(localAlive), key: .member(me))
    }

    /// Changes the advertised address (and announces it with a new incarnation).
    public mutating func readvertise(address: PeerAddress) {
        self.address = address
        refute(above: incarnation)
    }

    /// Graceful leave: tells up to `fanout` live members now; afterwards the node ignores input.
    public mutating func leave(now: Duration) -> [SwimOutput] {
        guard !leaving else { return [] }
        let message = MeshMessage.dead(Accusation(node: me, incarnation: incarnation, from: me))
        let targets = pick(max(settings.gossipFanout, 3), excluding: []) { $0.status == .alive || $0.status == .suspect }
        leaving = true
        return targets.map { .send(to: $0.address, messages: [message]) }
    }
}
