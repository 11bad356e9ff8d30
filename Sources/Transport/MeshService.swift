import Logging
import MeshCore
import MeshState
import Membership
import NIOCore
import NIOPosix
import ServiceLifecycle
import Sodium
import Synchronization
import Wire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Settings the service needs (built by the node from `node.mesh`).
public struct MeshServiceSettings: Sendable {
    public var listenHost: String
    public var listenPort: Int
    /// What peers are told to use (defaults to the bound address; 0.0.0.0 becomes 127.0.0.1).
    public var advertise: PeerAddress?
    public var seeds: [PeerAddress]
    public var meshKeys: [Packet.MeshKey]
    public var swim: SwimSettings
    public var agent: AgentSettings
    public var recordTTL: Duration
    /// How often the own record is rebuilt and, if anything material changed, re-advertised.
    public var readvertiseCheck: Duration = .seconds(1)
    public var tcpTimeout: Duration = .seconds(5)
    /// Most times a request may be forwarded (node.mesh.max_hops).
    public var maxHops = 2
    /// The mesh admin key that signs API key records (node.mesh.trust.admin_public_key), if any.
    public var keyAdmin: NodeID?
    /// How far a hop header's timestamp may be from this node's clock.
    public var hopWindowMillis: Int64 = 30_000

    public init(listenHost: String, listenPort: Int, advertise: PeerAddress? = nil, seeds: [PeerAddress] = [], meshKeys: [Packet.MeshKey] = [],
                swim: SwimSettings = SwimSettings(), agent: AgentSettings = AgentSettings(), recordTTL: Duration = .seconds(300)) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.advertise = advertise
        self.seeds = seeds
        self.meshKeys = meshKeys
        self.swim = swim
        self.agent = agent
        self.recordTTL = recordTTL
    }
}

/// Builds this node's capability record content (everything but origin, version, times and addresses).
public typealias RecordContent = @Sendable () -> CapabilityRecord

/// The mesh shell: UDP for SWIM and gossip, TCP for push-pull and large messages, both on one
/// port; signatures, sealing, trust and rejection counting around the pure `MeshAgent`.
public final class MeshService: Service, Sendable {
    struct State: Sendable {
        var agent: MeshAgent<TableStore>
        var ownVersion: UInt64
        var lastFingerprint: [UInt8] = []
        var lastPublishMillis: Int64 = 0
        var rejections: [String: Int] = [:]
        var lastRejectionLog: [String: Int64] = [:]
        var rtt: [NodeID: Duration] = [:]
        var started = false
        var keys: KeyStore
        var replay = ReplayGuard()
        /// When the run loop will next wake by itself; nil while it is awake (it reads the agent's deadline
        /// again before it sleeps).
        var sleepingUntil: Duration?
    }

    public let identity: Ed25519.KeyPair
    public let certificate: [UInt8]
    public let settings: MeshServiceSettings
    let logger: Logger
    let state: Mutex<State>
    let persistence: MeshPersistence?
    let content: Mutex<RecordContent?> = Mutex(nil)
    let group: any EventLoopGroup
    let udp: Mutex<DatagramSocket?> = Mutex(nil)
    let tcp: Mutex<(any Channel)?> = Mutex(nil)
    let bound = Eventual<Int>()
    let resolved: Mutex<[PeerAddress: SocketAddress]> = Mutex([:])
    let seenHops: Mutex<HopReplayFilter>
    /// This node's key for X25519 (its Ed25519 key converted) and the hop keys derived with peers.
    let exchangeKey: SealedBox.KeyPair
    let hopKeys = Mutex<[NodeID: SecretBytes]>([:])
    let origin = ContinuousClock.now
    /// Stamps for outgoing packets, kept ahead of what peers have seen across restarts (`gossip_stamp`).
    let stamps: StampClock
    /// How far above its persisted stamp a restarted node starts: a second of microsecond stamps, more
    /// packets than a node sends between two writes of it.
    static let stampRestartMargin: UInt64 = 1_000_000
    let stopping = Atomic<Bool>(false)
    /// Where the run loop sleeps; rung when the agent gets a timer earlier than the loop's wake-up.
    let doorbell: Doorbell
    /// Tasks waiting for a member to be declared dead or to leave (`waitUntilGone`).
    private let goneWaiters = Mutex<[NodeID: [GoneWaiter]]>([:])
    /// Called for every refused packet or record (reason), for metrics.
    let onRejection: @Sendable (String) -> Void
    let onEvent: @Sendable (String, NodeID) -> Void
    /// Called with the size of every mesh packet sent or received: (transport "udp"/"tcp", "sent"/"received", bytes).
    let onTraffic: @Sendable (String, String, Int) -> Void

    public init(identity: Ed25519.KeyPair, certificate: [UInt8], trust: TrustStore, settings: MeshServiceSettings, persistence: MeshPersistence?,
                logger: Logger, onRejection: @escaping @Sendable (String) -> Void = { _ in }, onEvent: @escaping @Sendable (String, NodeID) -> Void = { _, _ in },
                onTraffic: @escaping @Sendable (String, String, Int) -> Void = { _, _, _ in }) {
        self.identity = identity
        self.certificate = certificate
        self.settings = settings
        self.seenHops = Mutex(HopReplayFilter(windowMillis: settings.hopWindowMillis))
        self.exchangeKey = SealedBox.KeyPair(converting: identity)
        self.logger = logger
        self.persistence = persistence
        self.onRejection = onRejection
        self.onEvent = onEvent
        self.onTraffic = onTraffic
        // NIO's shared group: never shut down, so an exchange still connecting while the service
        // stops cannot strand a promise on a dead event loop.
        self.group = MultiThreadedEventLoopGroup.singleton
        self.doorbell = Doorbell(loop: group.next())
        // Above the persisted stamp by a margin: packets stamped after the last write of it (the 5 s
        // between writes before a crash, or a send racing `stop()`) may have reached peers, and with the
        // clock behind, stamps count up by one from the floor and would repeat them.
        stamps = StampClock(floor: persistence?.value("gossip_stamp").map { $0 &+ MeshService.stampRestartMargin } ?? 0)
        let wall = wallClockMillis()
        let incarnation = persistence?.nextMonotonic("incarnation", floor: UInt64(wall / 1000)) ?? UInt64(wall / 1000)
        let version = persistence?.value("record_version") ?? 0
        let address = settings.advertise ?? PeerAddress(host: settings.listenHost == "0.0.0.0" ? "127.0.0.1" : settings.listenHost, port: UInt16(settings.listenPort))
        var swimSettings = settings.swim
        swimSettings.maxPacketPayload = WireLimits.maxUDPPacket - Packet.overhead(sealed: !settings.meshKeys.isEmpty)
        let swim = Swim(me: identity.nodeID, address: address, incarnation: incarnation, certificate: certificate, settings: swimSettings,
                        seed: UInt64(bitPattern: wall) ^ identity.nodeID.d)
        var store = TableStore(trust: trust)
        store.wallNowMillis = wall
        if !certificate.isEmpty { try? store.trust.admit(certificateBytes: certificate, for: identity.nodeID, nowMillis: wall) }
        let agent = MeshAgent(swim: swim, store: store, settings: settings.agent, seed: identity.nodeID.c)
        self.state = Mutex(State(agent: agent, ownVersion: version, keys: KeyStore(admin: settings.keyAdmin)))
    }

    /// Supplies what the own record says (models, prices, load, health); called at each re-advertise check.
    public func setRecordContent(_ content: @escaping RecordContent) { self.content.withLock { $0 = content } }

    public var nodeID: NodeID { identity.nodeID }
    public var boundPort: Int? { bound.current }

    /// Waits until the gossip sockets are bound and returns the port (or the reason they could not be).
    public func waitUntilBound() async throws -> Int { try await bound.value() }
    var now: Duration { ContinuousClock.now - origin }

    // MARK: Lifecycle

    public func run() async throws {
        try await start()
        await withGracefulShutdownHandler {
            await self.runLoop()
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
            self.doorbell.ring()
        }
        await leave()
        await stop()
    }

    /// Binds UDP and TCP and joins; `run()` calls it, tests may call it directly.
    public func start() async throws {
        do {
            try await bindAndJoin()
        } catch {
            bound.settle(.failure(error))
            throw error
        }
    }

    func bindAndJoin() async throws {
        // UDP and TCP share one port. With port 0 the kernel picks the UDP port, and that number may
        // already be taken for TCP: try again with another.
        var attempt = 0
        var channels: (udp: DatagramSocket, tcp: any Channel, port: Int)?
        while channels == nil {
            attempt += 1
            let address = try SocketAddress.makeAddressResolvingHost(settings.listenHost, port: settings.listenPort)
            let udpSocket = try DatagramSocket(host: address.ipAddress ?? settings.listenHost, port: settings.listenPort)
            let port = udpSocket.port
            do {
                let tcpChannel = try await ServerBootstrap(group: group)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { channel in
                        channel.pipeline.addHandler(ByteToMessageHandler(FrameDecoder())).flatMap { channel.pipeline.addHandler(TCPServerHandler(service: self)) }
                    }
                    .bind(host: settings.listenHost, port: port).get()
                channels = (udpSocket, tcpChannel, port)
            } catch {
                udpSocket.close()
                guard settings.listenPort == 0, attempt < 20 else { throw error }
            }
        }
        guard let (udpSocket, tcpChannel, port) = channels else { return }
        udp.withLock { $0 = udpSocket }
        udpSocket.start { [weak self] bytes, source in self?.receive(datagram: bytes, source: source) }
        tcp.withLock { $0 = tcpChannel }
        if settings.advertise == nil && settings.listenPort == 0 {
            state.withLock { $0.agent.swim.readvertise(address: PeerAddress(host: $0.agent.swim.address.host, port: UInt16(port))) }
        }
        bound.settle(.success(port))
        readvertiseIfChanged(force: true)
        let seeds = (settings.seeds + (persistence?.knownPeers() ?? [])).filter { $0 != self.address }
        var unique: [PeerAddress] = []
        for seed in seeds where !unique.contains(seed) { unique.append(seed) }
        let outputs = mutate { state in
            state.started = true
            return state.agent.join(seeds: unique, now: self.now)
        }
        perform(outputs)
        logger.notice("mesh listening", metadata: ["node": "\(nodeID.short)", "gossip": "\(address)", "seeds": "\(unique.map(\.description).joined(separator: ","))"])
    }

    public var address: PeerAddress { state.withLock { $0.agent.swim.address } }

    /// Returns once `node` is declared dead or leaves — at once if it is not an alive or suspect member —
    /// or when the calling task is cancelled. Requests forwarded to a peer race this, so one sent into a
    /// partition fails over when the mesh gives the peer up instead of waiting out its timeout.
    public func waitUntilGone(_ node: NodeID) async {
        let waiter = GoneWaiter()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                guard arm(waiter, for: node, action: { continuation.resume() }) else { return continuation.resume() }
            }
        } onCancel: {
            waiter.fire()
        }
        disarm(waiter, for: node)
    }

    /// Runs `action` once when `node` is declared dead or leaves (at once if it is not an alive or suspect
    /// member), unless the returned watch is cancelled first. Without a task: a forward to a peer registers
    /// one of these instead of racing `waitUntilGone` in a task group.
    public func onGone(_ node: NodeID, _ action: @escaping @Sendable () -> Void) -> GoneWatch {
        let waiter = GoneWaiter()
        if !arm(waiter, for: node, action: action) { action() }
        return GoneWatch { [weak self] in
            waiter.disarm()
            self?.disarm(waiter, for: node)
        }
    }

    /// Registers first, then looks: a verdict landing in between still finds the waiter. False if the
    /// waiter had already fired (cancelled before it could wait).
    private func arm(_ waiter: GoneWaiter, for node: NodeID, action: @escaping @Sendable () -> Void) -> Bool {
        let armed = goneWaiters.withLock { waiters -> Bool in
            guard waiter.arm(action) else { return false }
            waiters[node, default: []].append(waiter)
            return true
        }
        guard armed else { return false }
        let status = state.withLock { $0.agent.swim.members[node]?.status }
        if status != .alive && status != .suspect { waiter.fire() }
        return true
    }

    private func disarm(_ waiter: GoneWaiter, for node: NodeID) {
        // The node's (now perhaps empty) list stays, with its capacity, for the next forward to it: removing
        // it allocated a new one per request. Lists go when their node dies (`wakeGoneWaiters`).
        // A node that was already gone when its watch was armed is never woken again; past a few thousand
        // nodes the empty lists are swept.
        goneWaiters.withLock { waiters in
            guard let index = waiters.index(forKey: node) else { return }
            waiters.values[index].removeAll { $0 === waiter }
            if waiters.values[index].isEmpty && waiters.count > 4096 { waiters = waiters.filter { !$0.value.isEmpty } }
        }
    }

    private func wakeGoneWaiters(_ node: NodeID) {
        let waiters = goneWaiters.withLock { $0.removeValue(forKey: node) ?? [] }
        for waiter in waiters { waiter.fire() }
    }

    /// Datagrams the kernel refused to send (a firewall rule, no route): dropped like lost packets.
    public var udpSendFailures: Int { udp.withLock { $0 }?.sendFailures.load(ordering: .relaxed) ?? 0 }

    /// Ticks the agent until `stop()` or `leave()` (what `run()` does after `start()`).
    public func runLoop() async {
        var lastCheck = ContinuousClock.now
        var lastPersist = ContinuousClock.now
        while !stopping.load(ordering: .relaxed) {
            // Sleep until the state machine's next timer (a probe, a gossip round with something to send,
            // push-pull, …) or the next re-advertise check or persist, whichever comes first. Whatever gives
            // the agent an earlier timer meanwhile (a packet, a broadcast queued) rings the doorbell
            // (`mutate`), so nothing waits for a polling interval. An idle node wakes for its probes only.
            let housekeeping = min(lastCheck + settings.readvertiseCheck, lastPersist + Self.persistInterval) - ContinuousClock.now
            let wait = state.withLock { state -> Duration in
                let now = self.now
                let wait = min(state.agent.nextDeadline - now, housekeeping)
                state.sleepingUntil = now + wait
                return wait
            }
            await doorbell.wait(for: max(.milliseconds(1), wait))
            guard !stopping.load(ordering: .relaxed) else { break }
            let outputs = state.withLock { state -> [AgentOutput] in
                state.sleepingUntil = nil
                state.agent.store.wallNowMillis = wallClockMillis()
                return state.agent.tick(now: self.now)
            }
            perform(outputs)
            drainRejections()
            if ContinuousClock.now - lastCheck >= settings.readvertiseCheck {
                lastCheck = .now
                readvertiseIfChanged(force: false)
            }
            if ContinuousClock.now - lastPersist >= Self.persistInterval {
                lastPersist = .now
                let peers = members().filter { $0.status == .alive }.map { (address: $0.address, node: $0.id) }
                persistence?.rememberPeers(peers, nowMillis: wallClockMillis())
                persistence?.set("gossip_stamp", stamps.latest)
            }
        }
    }

    /// How often the run loop saves the live peers and the stamp floor.
    static let persistInterval: Duration = .seconds(5)

    /// Changes the state and rings the run loop's doorbell when that left the agent a timer earlier than
    /// the one the loop sleeps until (a suspicion to time out, a relayed probe to answer, a broadcast to
    /// gossip).
    func mutate<Result: Sendable>(_ body: (inout State) -> Result) -> Result {
        let (result, wake) = state.withLock { state -> (Result, Bool) in
            let result = body(&state)
            return (result, state.sleepingUntil.map { state.agent.nextDeadline < $0 } ?? false)
        }
        if wake { doorbell.ring() }
        return result
    }

    /// Graceful leave: tells peers, so they mark this node `left` at once instead of suspecting it.
    public func leave() async {
        stopping.store(true, ordering: .relaxed)
        doorbell.ring()
        let outputs = state.withLock { $0.agent.swim.leave(now: self.now) }
        // The goodbyes are written before this returns (sendto), so the socket may close after.
        for case .send(let to, let messages) in outputs {
            sendDatagram(messages, to: to)
        }
    }

    public func stop() async {
        stopping.store(true, ordering: .relaxed)
        doorbell.ring()
        udp.withLock { $0 }?.close()
        let channels = [tcp.withLock { $0 }].compactMap { $0 }
        for channel in channels { try? await channel.close() }
        persistence?.set("gossip_stamp", stamps.latest)
        persistence?.close()
    }

    // MARK: Own record

    /// Rebuilds the own record; publishes it when something material changed, or when it is a
    /// third of its lifetime old.
    func readvertiseIfChanged(force: Bool) {
        guard let build = content.withLock({ $0 }) else { return }
        var record = build()
        // No API address yet (the HTTP server is still starting): a record without one is useless to peers.
        guard !record.apiAddress.isEmpty else { return }
        let wall = wallClockMillis()
        let address = self.address
        record.origin = nodeID
        record.gossipAddress = address
        let fingerprint = record.materialFingerprint
        let ttlMillis = Int64(settings.recordTTL.components.seconds * 1000)
        let due = state.withLock { state -> Bool in
            force || fingerprint != state.lastFingerprint || wall - state.lastPublishMillis >= ttlMillis / 3
        }
        guard due else { return }
        let version = persistence?.nextMonotonic("record_version", floor: UInt64(wall)) ?? UInt64(wall)
        record.version = version
        record.incarnation = state.withLock { $0.agent.swim.incarnation }
        record.issuedAtMillis = wall
        record.expiresAtMillis = wall + ttlMillis
        let bytes = record.signed(by: identity)
        mutate { state in
            state.agent.store.wallNowMillis = wall
            state.ownVersion = version
            state.lastFingerprint = fingerprint
            state.lastPublishMillis = wall
            _ = state.agent.publish(bytes, now: self.now)
        }
    }

    // MARK: Receiving

    /// A datagram from `source`.
    func receive(datagram bytes: [UInt8], source: PeerAddress) {
        onTraffic("udp", "received", bytes.count)
        guard !stopping.load(ordering: .relaxed) else { return }
        let decoded: Packet.Decoded
        do {
            decoded = try Packet.decode(bytes, meshKeys: settings.meshKeys)
        } catch {
            reject(error.reason, detail: "\(error) from \(source)")
            return
        }
        guard decoded.sender != nodeID, let messages = admit(decoded, source: source) else { return }
        let outputs = mutate { state in
            state.agent.store.wallNowMillis = wallClockMillis()
            let rttProbe = state.agent.swim.pendingProbeStart(for: messages)
            let out = state.agent.receive(messages, from: decoded.sender, source: source, now: self.now)
            if let (target, started) = rttProbe {
                let sample = self.now - started
                state.rtt[target] = state.rtt[target].map { $0 * 0.8 + sample * 0.2 } ?? sample
            }
            return out
        }
        perform(outputs)
        drainRejections()
    }

    /// Trust checks on a decoded packet: learns certificates from alive messages, refuses untrusted
    /// senders, filters alive/member entries of untrusted nodes, applies revocations.
    func admit(_ decoded: Packet.Decoded, source: PeerAddress) -> [MeshMessage]? {
        let wall = wallClockMillis()
        return state.withLock { state -> [MeshMessage]? in
            for message in decoded.messages {
                switch message {
                case .alive(let alive) where !alive.certificate.isEmpty:
                    do throws(Rejection) { try state.agent.store.trust.admit(certificateBytes: alive.certificate, for: alive.node, nowMillis: wall) } catch { note(&state, error.rawValue) }
                case .members(let members):
                    for member in members where !member.alive.certificate.isEmpty {
                        do throws(Rejection) { try state.agent.store.trust.admit(certificateBytes: member.alive.certificate, for: member.alive.node, nowMillis: wall) } catch { note(&state, error.rawValue) }
                    }
                case .apiKey(let bytes):
                    do throws(Rejection) {
                        if try state.keys.apply(bytes), let record = try? KeyRecord(bytes: bytes) {
                            state.agent.swim.broadcast(.apiKey(bytes), key: .apiKey(record.id))
                        }
                    } catch { note(&state, "key_" + error.rawValue) }
                case .revocation(let bytes):
                    do throws(Rejection) {
                        if try state.agent.store.trust.apply(revocationBytes: bytes), let revocation = try? Revocation(bytes: bytes) {
                            state.agent.swim.broadcast(.revocation(bytes), key: .revocation(revocation.node))
                            _ = state.agent.store.table.prune(trust: state.agent.store.trust, nowMillis: wall, keep: self.nodeID)
                            self.logger.warning("node revoked by the mesh admin", metadata: ["node": "\(revocation.node.short)"])
                        }
                    } catch { note(&state, error.rawValue) }
                default:
                    continue
                }
            }
            do throws(Rejection) {
                try state.agent.store.trust.check(decoded.sender, nowMillis: wall)
            } catch {
                note(&state, error.rawValue)
                return nil
            }
            // After the trust check, so untrusted keys take no room; what the loop above applied is idempotent.
            let verdict = state.replay.check(decoded.sender, stamp: decoded.stamp, nowMicros: StampClock.wallMicros())
            guard verdict == .fresh else {
                note(&state, verdict.rawValue)
                return nil
            }
            let trust = state.agent.store.trust
            return decoded.messages.compactMap { message -> MeshMessage? in
                switch message {
                case .alive(let alive):
                    if trust.isTrusted(alive.node, nowMillis: wall) || alive.node == self.nodeID { return message }
                    note(&state, Rejection.untrustedKey.rawValue)
                    return nil
                case .members(let members):
                    return .members(members.filter { trust.isTrusted($0.alive.node, nowMillis: wall) || $0.alive.node == self.nodeID })
                default:
                    return message
                }
            }
        }
    }

    func note(_ state: inout State, _ reason: String) {
        state.rejections[reason, default: 0] += 1
    }

    func drainRejections() {
        let (reasons, tableRejections) = state.withLock { state -> ([String: Int], [Rejection]) in
            defer { state.rejections = [:]; state.agent.store.rejections = [] }
            return (state.rejections, state.agent.store.rejections)
        }
        for (reason, count) in reasons { for _ in 0..<count { reject(reason, detail: nil) } }
        for reason in tableRejections { reject(reason.rawValue, detail: "record refused") }
    }

    /// Counts a refusal and logs it at most once per reason every 10 seconds.
    func reject(_ reason: String, detail: String?) {
        onRejection(reason)
        let wall = wallClockMillis()
        let shouldLog = state.withLock { state -> Bool in
            if let last = state.lastRejectionLog[reason], wall - last < 10_000 { return false }
            state.lastRejectionLog[reason] = wall
            return true
        }
        if shouldLog { logger.warning("gossip refused", metadata: ["reason": "\(reason)", "detail": "\(detail ?? "")"]) }
    }

    /// A TCP frame: a push-pull opening (has `members`) gets the reply; anything else is received like a datagram.
    func receive(frame bytes: [UInt8], source: PeerAddress) -> [UInt8]? {
        onTraffic("tcp", "received", bytes.count)
        let decoded: Packet.Decoded
        do {
            decoded = try Packet.decode(bytes, meshKeys: settings.meshKeys, maxBytes: WireLimits.maxTCPFrame)
        } catch {
            reject(error.reason, detail: "\(error) from \(source) (tcp)")
            return nil
        }
        guard decoded.sender != nodeID, let messages = admit(decoded, source: source) else { return nil }
        let isPushPull = messages.contains { if case .members = $0 { return true } else { return false } }
        if isPushPull {
            let (reply, outputs) = mutate { state in
                state.agent.store.wallNowMillis = wallClockMillis()
                let (reply, outputs) = state.agent.answerPushPull(messages, now: self.now)
                return (reply + state.keys.keys.values.map { MeshMessage.apiKey($0.bytes) }, outputs)
            }
            perform(outputs)
            drainRejections()
            return seal(reply)
        }
        let outputs = mutate { state in
            state.agent.store.wallNowMillis = wallClockMillis()
            return state.agent.receive(messages, from: decoded.sender, source: source, now: self.now)
        }
        perform(outputs)
        drainRejections()
        return nil
    }

    // MARK: Sending

    /// Signs (and with a mesh key, seals) messages under the next stamp.
    func seal(_ messages: [MeshMessage]) -> [UInt8] {
        Packet.encode(messages, signer: identity, meshKey: settings.meshKeys.first, stamp: stamps.next())
    }

    func perform(_ outputs: [AgentOutput]) {
        for output in outputs {
            switch output {
            case .swim(.send(let to, let messages)):
                sendDatagram(messages, to: to)
            case .swim(.sendReliable(let to, let messages)):
                let packet = seal(messages)
                Task { _ = try? await self.exchange(packet, with: to, expectReply: false) }
            case .swim(.changed(let node, _, let status)):
                logger.info("member \(status)", metadata: ["node": "\(node.short)"])
                onEvent(status.description, node)
                if status == .dead || status == .left { wakeGoneWaiters(node) }
                if status == .alive, let member = state.withLock({ $0.agent.swim.members[node] }) {
                    // Remember peers as soon as they are seen, so a restart rejoins without seeds.
                    persistence?.rememberPeers([(address: member.address, node: node)], nowMillis: wallClockMillis())
                }
            case .swim(.removed(let node)):
                onEvent("removed", node)
            case .pushPull(let to):
                guard !stopping.load(ordering: .relaxed) else { continue }
                Task { await self.pushPull(with: to) }
            case .recordAccepted(let origin):
                onEvent("record", origin)
            }
        }
    }

    /// Signs (and seals) and sends one datagram. False when it could not be sent (no socket, an
    /// unresolvable address, or the kernel refused it: a lost datagram, as far as SWIM is concerned).
    @discardableResult
    func sendDatagram(_ messages: [MeshMessage], to peer: PeerAddress) -> Bool {
        guard let socket = udp.withLock({ $0 }), let address = resolve(peer) else { return false }
        let packet = seal(messages)
        onTraffic("udp", "sent", packet.count)
        return socket.send(packet, to: address)
    }

    func resolve(_ peer: PeerAddress) -> SocketAddress? {
        if let known = resolved.withLock({ $0[peer] }) { return known }
        guard let address = try? SocketAddress.makeAddressResolvingHost(peer.host, port: Int(peer.port)) else { return nil }
        resolved.withLock { $0[peer] = address }
        return address
    }

    func pushPull(with peer: PeerAddress) async {
        let request = state.withLock { $0.agent.pushPullRequest() + $0.keys.keys.values.map { MeshMessage.apiKey($0.bytes) } }
        let packet = seal(request)
        do {
            guard let replyBytes = try await exchange(packet, with: peer, expectReply: true) else { return }
            onTraffic("tcp", "received", replyBytes.count)
            let decoded = try Packet.decode(replyBytes, meshKeys: settings.meshKeys, maxBytes: WireLimits.maxTCPFrame)
            guard let messages = admit(decoded, source: peer) else { return }
            let (final, outputs) = mutate { state in
                state.agent.store.wallNowMillis = wallClockMillis()
                return state.agent.finishPushPull(messages, now: self.now)
            }
            perform(outputs)
            drainRejections()
            if !final.isEmpty {
                _ = try? await exchange(seal(final), with: peer, expectReply: false)
            }
        } catch let error as WireError {
            reject(error.reason, detail: "\(error) from \(peer) (push-pull reply)")
        } catch {
            logger.debug("push-pull failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Sends one frame over a fresh TCP connection and, if asked, reads one frame back (bounded in time).
    func exchange(_ packet: [UInt8], with peer: PeerAddress, expectReply: Bool) async throws -> [UInt8]? {
        guard let address = resolve(peer) else { return nil }
        let loop = group.next()
        let reply = loop.makePromise(of: [UInt8]?.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: loop)
                .connectTimeout(.milliseconds(Int64(settings.tcpTimeout.components.seconds * 1000)))
                .channelInitializer { channel in
                    channel.pipeline.addHandler(ByteToMessageHandler(FrameDecoder())).flatMap { channel.pipeline.addHandler(TCPClientHandler(reply: reply, expectReply: expectReply)) }
                }
                .connect(to: address).get()
        } catch {
            // The handler never ran: complete the promise here (NIO insists every promise ends).
            reply.fail(error)
            _ = try? await reply.futureResult.get()
            throw error
        }
        var buffer = channel.allocator.buffer(capacity: packet.count + 4)
        buffer.writeBytes(Frame.wrap(packet))
        onTraffic("tcp", "sent", buffer.readableBytes)
        try await channel.writeAndFlush(buffer)
        if !expectReply {
            try? await channel.close()
            return nil
        }
        // Closing ends the wait: the handler then answers nil.
        let timeout = channel.eventLoop.scheduleTask(in: .milliseconds(Int64(settings.tcpTimeout.components.seconds * 1000))) {
            channel.close(promise: nil)
        }
        defer { timeout.cancel() }
        let result = try await reply.futureResult.get()
        try? await channel.close()
        return result
    }

    // MARK: Views

    public func members() -> [Member] { state.withLock { Array($0.agent.swim.members.values) }.sorted { $0.id < $1.id } }

    /// Per request: the records of alive peers that offer `model` (any model when nil), with this
    /// node's RTT to each — filtered under one lock, without copying or sorting the rest of the table.
    public func liveOffers(model: String?) -> [(record: CapabilityRecord, rtt: Duration?)] {
        state.withLock { state in
            var offers: [(record: CapabilityRecord, rtt: Duration?)] = []
            forEachLiveOffer(in: state, model: model) { origin, entry in offers.append((entry.record, state.rtt[origin])) }
            return offers.sorted { $0.record.origin < $1.record.origin }
        }
    }

    /// The one filter behind `liveOffers` and `liveOffersDigest`: table entries of alive peers (not this
    /// node) whose record lists `model` (any model when nil).
    private func forEachLiveOffer(in state: State, model: String?, _ body: (NodeID, RecordTable.Entry) -> Void) {
        for (origin, entry) in state.agent.store.table.entries where origin != nodeID && state.agent.swim.members[origin]?.status == .alive {
            if let model, !entry.record.models.contains(where: { $0.name == model }) { continue }
            body(origin, entry)
        }
    }

    /// A digest of everything `liveOffers(model:)` returns, read under the same lock without copying
    /// anything: each offer's origin, record version and incarnation, and this node's RTT to it (a new
    /// record, a peer going or coming, a new RTT all change it). The same offers give the same digest
    /// whatever the table's order; different ones a different digest, but for a 64-bit hash collision.
    public func liveOffersDigest(model: String?) -> Int {
        state.withLock { state in
            var digest = 0
            var count = 0
            forEachLiveOffer(in: state, model: model) { origin, entry in
                var hasher = Hasher()
                hasher.combine(origin)
                hasher.combine(entry.record.version)
                hasher.combine(entry.record.incarnation)
                hasher.combine(state.rtt[origin])
                digest &+= hasher.finalize()
                count += 1
            }
            var hasher = Hasher()
            hasher.combine(digest)
            hasher.combine(count)
            return hasher.finalize()
        }
    }

    public func records() -> [RecordTable.Entry] { state.withLock { Array($0.agent.store.table.entries.values) }.sorted { $0.record.origin < $1.record.origin } }

    public func roundTrip(to node: NodeID) -> Duration? { state.withLock { $0.rtt[node] } }

    public var incarnation: UInt64 { state.withLock { $0.agent.swim.incarnation } }

    public var trust: TrustStore { state.withLock { $0.agent.store.trust } }

    /// Applies an admin-signed API key record handed in by an operator and gossips it. Returns a problem, or nil.
    public func submitKey(text: String) -> String? {
        let record: KeyRecord
        do { record = try KeyRecord(fileText: text) } catch { return "not an aimesh key record (\(error.rawValue))" }
        return mutate { state -> String? in
            do throws(Rejection) {
                _ = try state.keys.apply(record.bytes)
            } catch {
                return error == .untrustedKey ? "the key record is not signed by this mesh's admin key (node.mesh.trust.admin_public_key)" : "refused: \(error.rawValue)"
            }
            state.agent.swim.broadcast(.apiKey(record.bytes), key: .apiKey(record.id))
            return nil
        }
    }

    /// The mesh-wide key with this SHA-256, if the mesh issued one.
    public func apiKey(hash: [UInt8]) -> KeyRecord? { state.withLock { $0.keys.lookup(keyHash: hash) } }

    /// Applies an admin-signed revocation handed in by an operator and gossips it. Returns a problem, or nil.
    // MARK: Forwarding

    public struct VerifiedHop: Sendable {
        public var from: NodeID
        /// The forwarding node's name (from its record), or its short id.
        public var fromName: String
        /// Nodes the request passed through, the sender last.
        public var visited: [NodeID]
    }

    public struct HopRefusal: Error, Sendable {
        public var reason: String
        public var message: String
    }

    /// The header for forwarding `body` to a peer; `visited` is what this request carried in (this node is appended).
    /// The `x-aiproxy-hop` value for a request forwarded to `peer` (version 2, under the key this node
    /// shares with it; a version 1 signature if no key can be derived, which a real node id never causes).
    public func signHop(requestID: String, body: [UInt8], visited: [NodeID], to peer: NodeID) -> String {
        let now = wallClockMillis()
        guard let key = hopKey(for: peer) else {
            return HopHeader.sign(from: identity, requestID: requestID, timestampMillis: now, body: body, visited: visited + [nodeID]).value
        }
        return HopHeader.authenticate(from: nodeID, to: peer, key: key, requestID: requestID, timestampMillis: now, body: body, visited: visited + [nodeID]).value
    }

    /// The hop key shared with `peer`, derived once (an X25519 exchange) and kept.
    func hopKey(for peer: NodeID) -> SecretBytes? {
        if let key = hopKeys.withLock({ $0[peer] }) { return key }
        guard let key = HopKey.derive(own: exchangeKey, ownID: nodeID, peer: peer) else { return nil }
        hopKeys.withLock { keys in
            if keys.count >= 4096 { keys.removeAll() }
            keys[peer] = key
        }
        return key
    }

    /// Checks a forwarded request: a live, trusted member signed it, recently, for exactly this body,
    /// not seen before, not looping back here, within `max_hops`.
    public func verifyHop(_ value: String, body: [UInt8]) -> Result<VerifiedHop, HopRefusal> {
        func refuse(_ reason: String, _ message: String) -> Result<VerifiedHop, HopRefusal> {
            onRejection("hop_" + reason)
            return .failure(HopRefusal(reason: reason, message: message))
        }
        let header: HopHeader
        do { header = try HopHeader(value: value) } catch { return refuse("malformed", "the x-aiproxy-hop header is malformed") }
        let wall = wallClockMillis()
        let (member, trusted, name) = state.withLock { state in
            (state.agent.swim.members[header.from], state.agent.store.trust.isTrusted(header.from, nowMillis: wall),
             state.agent.store.table.entries[header.from]?.record.name)
        }
        guard let member, member.status == .alive || member.status == .suspect, trusted else {
            return refuse("not_member", "forwarded requests are accepted only from live members of this mesh")
        }
        if let to = header.to, to != nodeID { return refuse("misdirected", "the x-aiproxy-hop header is addressed to another node") }
        guard header.isValid(key: header.to == nil ? nil : hopKey(for: header.from)) else {
            return refuse("bad_signature", "the x-aiproxy-hop signature does not verify")
        }
        guard Units.isWithin(header.timestampMillis, of: wall, by: settings.hopWindowMillis) else {
            return refuse("stale", "the x-aiproxy-hop timestamp is outside the accepted window")
        }
        guard header.bodyDigest == Sodium.sha256(body) else { return refuse("digest", "the body does not match the x-aiproxy-hop digest") }
        guard header.visited.last == header.from, !header.visited.contains(nodeID) else {
            return refuse("loop", "the request already passed through this node")
        }
        guard header.visited.count <= settings.maxHops else { return refuse("hops", "the request exceeded max_hops (\(settings.maxHops))") }
        let fresh = seenHops.withLock { $0.firstSighting(from: header.from, requestID: header.requestID, nowMillis: wall) }
        guard fresh else { return refuse("replay", "this forwarded request was already received") }
        return .success(VerifiedHop(from: header.from, fromName: name.map { $0.isEmpty ? header.from.short : $0 } ?? header.from.short, visited: header.visited))
    }

    public func submitRevocation(text: String) -> String? {
        let revocation: Revocation
        do { revocation = try Revocation(fileText: text) } catch { return "not an aimesh revocation (\(error.rawValue))" }
        let wall = wallClockMillis()
        return mutate { state -> String? in
            do throws(Rejection) {
                _ = try state.agent.store.trust.apply(revocationBytes: revocation.bytes)
            } catch {
                return error == .untrustedKey ? "the revocation is not signed by this mesh's admin key (or the mesh is in open trust mode)" : "refused: \(error.rawValue)"
            }
            state.agent.swim.broadcast(.revocation(revocation.bytes), key: .revocation(revocation.node))
            _ = state.agent.store.table.prune(trust: state.agent.store.trust, nowMillis: wall, keep: self.nodeID)
            return nil
        }
    }

    /// Forces a re-advertise now (tests, and the node when its providers change).
    public func readvertise() { readvertiseIfChanged(force: true) }
}

/// One `waitUntilGone` call: resumed once, by whichever comes first (the member gone, or cancellation).
final class GoneWaiter: Sendable {
    private let state = Mutex<(action: (@Sendable () -> Void)?, fired: Bool)>((nil, false))

    /// Stores what to do when the member is gone; false if the waiter already fired (cancelled before it
    /// could wait).
    func arm(_ action: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { state in
            if state.fired { return false }
            state.action = action
            return true
        }
    }

    func fire() {
        let action = state.withLock { state -> (@Sendable () -> Void)? in
            state.fired = true
            defer { state.action = nil }
            return state.action
        }
        action?()
    }

    /// Fires no more.
    func disarm() {
        state.withLock { state in
            state.fired = true
            state.action = nil
        }
    }
}

/// A registration made with `MeshService.onGone`; `cancel()` withdraws it (any number of times).
public final class GoneWatch: Sendable {
    private let withdraw: @Sendable () -> Void
    init(_ withdraw: @escaping @Sendable () -> Void) { self.withdraw = withdraw }
    public func cancel() { withdraw() }
}

extension SocketAddress {
    var peerAddress: PeerAddress? {
        guard let ip = ipAddress, let port else { return nil }
        return PeerAddress(host: ip, port: UInt16(port))
    }
}

// MARK: NIO handlers

/// Splits the TCP stream into frames (u32 length, bounded).
struct FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = [UInt8]

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard Int(length) <= WireLimits.maxTCPFrame else { throw WireError.oversized("frame") }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let bytes = buffer.readBytes(length: Int(length)) ?? []
        context.fireChannelRead(wrapInboundOut(bytes))
        return .continue
    }
}

final class TCPServerHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = [UInt8]
    typealias OutboundOut = ByteBuffer
    let service: MeshService
    init(service: MeshService) { self.service = service }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard let source = context.remoteAddress?.peerAddress else { return }
        if let reply = service.receive(frame: bytes, source: source) {
            var buffer = context.channel.allocator.buffer(capacity: reply.count + 4)
            buffer.writeBytes(Frame.wrap(reply))
            service.onTraffic("tcp", "sent", buffer.readableBytes)
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? WireError { service.reject(error.reason, detail: "\(error) (tcp)") }
        context.close(promise: nil)
    }
}

/// Completes its promise exactly once: with the first frame, or nil when the connection ends first.
/// Used only on its channel's event loop.
final class TCPClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = [UInt8]
    let reply: EventLoopPromise<[UInt8]?>
    let expectReply: Bool
    var done = false
    init(reply: EventLoopPromise<[UInt8]?>, expectReply: Bool) {
        self.reply = reply
        self.expectReply = expectReply
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        done = true
        reply.succeed(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            reply.succeed(nil)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            reply.fail(error)
        }
        context.close(promise: nil)
    }
}
