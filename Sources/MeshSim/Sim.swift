import MeshCore
import Membership
import Wire

/// Synthetic records for the simulator: origin (32) | version (8) | padding, the size of a real record.
public struct SimRecordStore: RecordStore {
    public private(set) var versions: [NodeID: UInt64] = [:]
    /// The spend counter each origin's freshest record carries (mesh-wide budgets sum these).
    public private(set) var spend: [NodeID: Double] = [:]
    var bytesByOrigin: [NodeID: [UInt8]] = [:]

    public init() {}

    public static func record(origin: NodeID, version: UInt64, padding: Int, spend: Double = 0) -> [UInt8] {
        var writer = ByteWriter(capacity: 48 + padding)
        writer.nodeID(origin)
        writer.u64(version)
        writer.f64(spend)
        writer.raw([UInt8](repeating: 0, count: padding))
        return writer.bytes
    }

    public mutating func merge(_ bytes: [UInt8], now: Duration) -> NodeID? {
        var reader = ByteReader(bytes)
        guard let origin = try? reader.nodeID(), let version = try? reader.u64(), let amount = try? reader.f64() else { return nil }
        guard version > versions[origin] ?? 0 else { return nil }
        versions[origin] = version
        spend[origin] = amount
        bytesByOrigin[origin] = bytes
        return origin
    }

    public func digest() -> [DigestEntry] {
        versions.map { DigestEntry(origin: $0.key, version: $0.value) }.sorted { $0.origin < $1.origin }
    }

    public func newer(than digest: [DigestEntry]) -> [[UInt8]] {
        var theirs: [NodeID: UInt64] = [:]
        for entry in digest { theirs[entry.origin] = entry.version }
        return versions.filter { (theirs[$0.key] ?? 0) < $0.value }.keys.sorted().compactMap { bytesByOrigin[$0] }
    }
}

/// The simulated network and its nodes.
public struct SimSettings: Sendable {
    public var nodes: Int
    public var seed: UInt64
    /// Fraction of UDP packets lost (TCP push-pull is reliable unless partitioned).
    public var loss: Double = 0
    public var minDelay: Duration = .microseconds(200)
    public var maxDelay: Duration = .milliseconds(2)
    public var swim = SwimSettings()
    public var agent = AgentSettings()
    /// Clock resolution of the simulation loop.
    public var step: Duration = .milliseconds(5)
    /// Bytes of padding per synthetic record (a real record with a few models is ~300–600 bytes).
    public var recordPadding = 400

    public init(nodes: Int, seed: UInt64) {
        self.nodes = nodes
        self.seed = seed
    }
}

/// N nodes running the real `MeshAgent` (SWIM + Lifeguard + record spread) on a virtual clock over an
/// in-memory network with loss, delay, partitions and crashes. Seeded: the same settings give the same run.
public final class MeshSimulation {
    public struct Node {
        public let id: NodeID
        public let address: PeerAddress
        public var agent: MeshAgent<SimRecordStore>
        public var up = true
        var nextWake: Duration = .zero
        public var bytesSent = 0
        public var ownVersion: UInt64 = 0
        /// What this node has spent on one key (its ledger), advertised as a grow-only counter.
        public var ledgerSpend: Double = 0
    }

    /// A membership verdict seen by one node about another.
    public struct Verdict: Sendable {
        public var time: Duration
        public var observer: Int
        public var subject: Int
        public var status: MemberStatus
    }

    enum Event {
        case packet(to: Int, from: Int, messages: [MeshMessage])
        case pushPullRequest(from: Int, to: Int, messages: [MeshMessage])
        case pushPullReply(from: Int, to: Int, messages: [MeshMessage])
        case pushPullFinal(from: Int, to: Int, messages: [MeshMessage])
    }

    public let settings: SimSettings
    public private(set) var now: Duration = .zero
    public private(set) var nodes: [Node] = []
    var index: [PeerAddress: Int] = [:]
    var indexByID: [NodeID: Int] = [:]
    var queue = EventHeap()
    var order: UInt64 = 0
    var random: SplitMix64
    var group: [Int]? = nil
    public private(set) var verdicts: [Verdict] = []
    /// When each node first held each (origin index, version).
    public private(set) var firstSeen: [Int: [UInt64: [Int: Duration]]] = [:]
    /// Fraction of UDP packets lost from now on (starts at `settings.loss`).
    public var loss: Double
    public private(set) var packetsSent = 0
    public private(set) var packetsDropped = 0

    public init(_ settings: SimSettings) {
        self.settings = settings
        self.loss = settings.loss
        self.random = SplitMix64(seed: settings.seed)
        for i in 0..<settings.nodes { nodes.append(makeNode(i, incarnation: 1)) }
    }

    func makeNode(_ i: Int, incarnation: UInt64) -> Node {
        let id = NodeID(testNumber: UInt64(i + 1))
        let address = PeerAddress(host: "10.0.\(i / 250).\(i % 250 + 1)", port: 7946)
        index[address] = i
        indexByID[id] = i
        let swim = Swim(me: id, address: address, incarnation: incarnation, settings: settings.swim, seed: settings.seed &+ UInt64(i) &* 7919 &+ incarnation)
        return Node(id: id, address: address, agent: MeshAgent(swim: swim, store: SimRecordStore(), settings: settings.agent, seed: settings.seed &+ UInt64(i)))
    }

    // MARK: Scenario controls

    /// Every node publishes its record and joins through node `seed`.
    public func bootstrap(seed: Int = 0, stagger: Duration = .milliseconds(10)) {
        for i in nodes.indices {
            publish(i)
            if i != seed {
                let outputs = nodes[i].agent.join(seeds: [nodes[seed].address], now: now + stagger * i)
                handle(outputs, from: i)
            } else {
                _ = nodes[i].agent.join(seeds: [], now: now)
            }
        }
    }

    /// The node publishes a new version of its record; returns the version.
    @discardableResult
    public func publish(_ i: Int) -> UInt64 {
        nodes[i].ownVersion += 1
        let version = nodes[i].ownVersion
        let bytes = SimRecordStore.record(origin: nodes[i].id, version: version, padding: settings.recordPadding, spend: nodes[i].ledgerSpend)
        if nodes[i].agent.publish(bytes, now: now) { noteSeen(observer: i, origin: i, version: version) }
        nodes[i].nextWake = now
        return version
    }

    public func crash(_ i: Int) { nodes[i].up = false }

    /// Restarts a crashed node with a fresh state and a higher incarnation; it rejoins through `seed`.
    public func restart(_ i: Int, seed: Int = 0) {
        let incarnation = nodes[i].agent.swim.incarnation + 1
        let version = nodes[i].ownVersion
        var node = makeNode(i, incarnation: incarnation)
        node.ownVersion = version
        node.ledgerSpend = nodes[i].ledgerSpend
        nodes[i] = node
        nodes[i].nextWake = now
        publish(i)
        handle(nodes[i].agent.join(seeds: [nodes[seed].address], now: now), from: i)
    }

    /// Splits the network: packets cross only within a group.
    public func partition(_ groups: [[Int]]) {
        var assignment = [Int](repeating: -1, count: nodes.count)
        for (g, members) in groups.enumerated() { for m in members { assignment[m] = g } }
        group = assignment
    }

    public func heal() { group = nil }

    func reachable(_ a: Int, _ b: Int) -> Bool {
        guard nodes[b].up else { return false }
        if let group { return group[a] == group[b] }
        return true
    }

    // MARK: Running

    public func run(for duration: Duration) { run(until: now + duration) }

    public func run(until end: Duration) {
        while now < end {
            now = min(end, now + settings.step)
            deliverDue()
            for i in nodes.indices where nodes[i].up && nodes[i].nextWake <= now {
                let outputs = nodes[i].agent.tick(now: now)
                handle(outputs, from: i)
                nodes[i].nextWake = nodes[i].agent.nextDeadline
            }
        }
    }

    func deliverDue() {
        while let next = queue.peekTime, next <= now {
            deliver(queue.pop()!.event)
        }
    }

    func deliver(_ event: Event) {
        switch event {
        case .packet(let to, let from, let messages):
            guard nodes[to].up else { return }
            let outputs = nodes[to].agent.receive(messages, from: nodes[from].id, source: nodes[from].address, now: now)
            handle(outputs, from: to)
        case .pushPullRequest(let from, let to, let messages):
            guard reachable(from, to) else { return }
            let (reply, outputs) = nodes[to].agent.answerPushPull(messages, now: now)
            handle(outputs, from: to)
            send(.pushPullReply(from: to, to: from, messages: reply), from: to, to: from, bytes: tcpBytes(reply), reliable: true)
        case .pushPullReply(let from, let to, let messages):
            guard nodes[to].up else { return }
            let (final, outputs) = nodes[to].agent.finishPushPull(messages, now: now)
            handle(outputs, from: to)
            if !final.isEmpty {
                send(.pushPullFinal(from: to, to: from, messages: final), from: to, to: from, bytes: tcpBytes(final), reliable: true)
            }
        case .pushPullFinal(_, let to, let messages):
            guard nodes[to].up else { return }
            handle(nodes[to].agent.absorbRecords(messages, now: now), from: to)
        }
        nodes[eventTarget(event)].nextWake = now
    }

    func eventTarget(_ event: Event) -> Int {
        switch event {
        case .packet(let to, _, _), .pushPullRequest(_, let to, _), .pushPullReply(_, let to, _), .pushPullFinal(_, let to, _): return to
        }
    }

    func tcpBytes(_ messages: [MeshMessage]) -> Int { 4 + Packet.overhead(sealed: true) + messages.reduce(0) { $0 + $1.encodedSize } }

    func send(_ event: Event, from: Int, to: Int, bytes: Int, reliable: Bool) {
        nodes[from].bytesSent += bytes
        packetsSent += 1
        guard reachable(from, to) else { packetsDropped += 1; return }
        if !reliable && loss > 0 && Double(random.next() % 1_000_000) / 1_000_000 < loss {
            packetsDropped += 1
            return
        }
        let span = max(1, (settings.maxDelay - settings.minDelay).nanoseconds)
        let delay = settings.minDelay + .nanoseconds(Int64(random.next() % UInt64(span)))
        order += 1
        queue.push((now + delay, order, event))
    }

    func handle(_ outputs: [AgentOutput], from i: Int) {
        for output in outputs {
            switch output {
            case .swim(.send(let to, let messages)):
                guard let j = index[to] else { continue }
                let bytes = Packet.overhead(sealed: true) + messages.reduce(0) { $0 + $1.encodedSize }
                send(.packet(to: j, from: i, messages: messages), from: i, to: j, bytes: bytes, reliable: false)
            case .swim(.sendReliable(let to, let messages)):
                guard let j = index[to] else { continue }
                send(.packet(to: j, from: i, messages: messages), from: i, to: j, bytes: tcpBytes(messages), reliable: true)
            case .swim(.changed(let subject, _, let status)):
                if let j = indexByID[subject] { verdicts.append(Verdict(time: now, observer: i, subject: j, status: status)) }
            case .swim(.removed):
                continue
            case .pushPull(let to):
                guard let j = index[to] else { continue }
                let request = nodes[i].agent.pushPullRequest()
                send(.pushPullRequest(from: i, to: j, messages: request), from: i, to: j, bytes: tcpBytes(request), reliable: true)
            case .recordAccepted(let origin):
                guard let j = indexByID[origin], let version = nodes[i].agent.store.versions[origin] else { continue }
                noteSeen(observer: i, origin: j, version: version)
            }
        }
    }

    func noteSeen(observer: Int, origin: Int, version: UInt64) {
        if firstSeen[origin, default: [:]][version, default: [:]][observer] == nil {
            firstSeen[origin, default: [:]][version, default: [:]][observer] = now
        }
    }

    // MARK: Questions

    /// What node `i` believes about every other node.
    public func view(of i: Int) -> [Int: MemberStatus] {
        var out: [Int: MemberStatus] = [:]
        for member in nodes[i].agent.swim.members.values { if let j = indexByID[member.id] { out[j] = member.status } }
        return out
    }

    /// Every up node sees every other up node alive, and every down node as not alive (or forgotten).
    public func converged() -> Bool {
        let up = nodes.indices.filter { nodes[$0].up }
        for i in up {
            let view = view(of: i)
            for j in nodes.indices where j != i {
                if nodes[j].up { if view[j] != .alive { return false } } else if view[j] == .alive || view[j] == .suspect { return false }
            }
        }
        return true
    }

    /// How long after `since` until `fraction` of the up nodes held `origin`'s record `version` (nil if never).
    public func spreadTime(origin: Int, version: UInt64, since: Duration, fraction: Double) -> Duration? {
        let up = nodes.indices.filter { nodes[$0].up }
        let seen = (firstSeen[origin]?[version] ?? [:]).filter { nodes[$0.key].up }.map { $0.value - since }.sorted()
        let needed = Int((Double(up.count) * fraction).rounded(.up))
        guard needed > 0, seen.count >= needed else { return nil }
        return max(.zero, seen[needed - 1])
    }

    /// Node `i` spends `amount` (its ledger grows) and re-advertises its counter.
    public func spend(_ i: Int, _ amount: Double) {
        nodes[i].ledgerSpend += amount
        publish(i)
    }

    /// The mesh-wide spend as node `i` sees it: the sum of every origin's freshest counter.
    public func meshSpend(seenBy i: Int) -> Double {
        nodes[i].agent.store.spend.values.reduce(0, +)
    }

    /// How many up nodes hold `origin`'s record `version`.
    public func reached(origin: Int, version: UInt64) -> Int {
        (firstSeen[origin]?[version] ?? [:]).keys.filter { nodes[$0].up }.count
    }

    /// For each up observer, how long after `since` it declared `subject` dead (nil entries: not yet).
    public func detectionTimes(of subject: Int, since: Duration) -> [Duration?] {
        nodes.indices.filter { $0 != subject && nodes[$0].up }.map { observer in
            verdicts.first { $0.observer == observer && $0.subject == subject && $0.status == .dead && $0.time >= since }.map { $0.time - since }
        }
    }

    /// Dead verdicts about nodes that were up at the time (after `since`).
    public func falsePositives(since: Duration = .zero, crashed: Set<Int> = []) -> Int {
        verdicts.filter { $0.time >= since && $0.status == .dead && !crashed.contains($0.subject) }.count
    }

    /// Mean bytes per second sent per node over `duration`.
    public func bytesPerSecondPerNode(over duration: Duration) -> Double {
        let total = nodes.reduce(0) { $0 + $1.bytesSent }
        return Double(total) / Double(nodes.count) / (Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
    }
}

/// A binary min-heap of scheduled deliveries, ordered by time then by scheduling order (deterministic).
struct EventHeap {
    typealias Item = (time: Duration, order: UInt64, event: MeshSimulation.Event)
    private var items: [Item] = []

    var peekTime: Duration? { items.first?.time }

    static func less(_ a: Item, _ b: Item) -> Bool { a.time != b.time ? a.time < b.time : a.order < b.order }

    mutating func push(_ item: Item) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard EventHeap.less(items[child], items[parent]) else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Item? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count && EventHeap.less(items[left], items[smallest]) { smallest = left }
            if right < items.count && EventHeap.less(items[right], items[smallest]) { smallest = right }
            if smallest == parent { break }
            items.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
