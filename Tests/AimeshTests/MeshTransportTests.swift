import Logging
import MeshCore
import MeshState
import Membership
import NIOCore
import NIOPosix
import Sodium
import Synchronization
import Testing
@testable import Transport
import Wire
#if canImport(Glibc)
import Glibc
#endif

/// Real UDP and TCP sockets on 127.0.0.1, several mesh services in this process, fast SWIM timings.
@Suite(.timeLimit(.minutes(1)), .serialized)
struct MeshTransportTests {

    struct Started {
        let service: MeshService
        let rejections: Counter
        let dataDir: String
        let key: Ed25519.KeyPair
    }

    static var fast: SwimSettings {
        var swim = SwimSettings()
        swim.probeInterval = .milliseconds(200)
        swim.probeTimeout = .milliseconds(80)
        swim.suspicionMultiplier = 2
        swim.gossipInterval = .milliseconds(50)
        swim.gossipToTheDead = .seconds(5)
        return swim
    }

    static func start(name: String, seeds: [PeerAddress], key: Ed25519.KeyPair = .generate(), certificate: [UInt8] = [], trust: TrustStore = TrustStore(mode: .open),
                      meshKeys: [Packet.MeshKey] = [], dataDir: String? = nil, advertise: PeerAddress? = nil) async throws -> Started {
        let dir = dataDir ?? temporaryDirectory("mesh-\(name)")
        var logger = Logger(label: "mesh.\(name)")
        logger.logLevel = .critical
        let rejections = Counter()
        var settings = MeshServiceSettings(listenHost: "127.0.0.1", listenPort: 0, advertise: advertise, seeds: seeds, meshKeys: meshKeys, swim: fast)
        settings.agent.pushPullInterval = .seconds(2)
        settings.agent.seedRetry = .milliseconds(200)
        settings.tcpTimeout = .seconds(2)
        let service = MeshService(identity: key, certificate: certificate, trust: trust, settings: settings,
                                  persistence: try MeshPersistence(path: dir + "/mesh.sqlite"), logger: logger,
                                  onRejection: { rejections.add($0) })
        service.setRecordContent {
            CapabilityRecord(origin: key.nodeID, version: 0, issuedAtMillis: 0, expiresAtMillis: 0, apiAddress: "http://127.0.0.1:1/\(name)",
                             gossipAddress: PeerAddress(host: "127.0.0.1", port: 1), name: name,
                             models: [.init(name: "m-\(name)", provider: "local", providerKind: "local", local: true, inputPer1M: 0, outputPer1M: 0)])
        }
        try await service.start()
        Task { await service.runLoop() }
        return Started(service: service, rejections: rejections, dataDir: dir, key: key)
    }


    static func aliveCount(_ service: MeshService) -> Int { service.members().filter { $0.status == .alive }.count }

    @Test func fiveNodes_joinFromOneSeed_converge_detectACrash_andWelcomeItBack() async throws {
        let seed = try await Self.start(name: "seed", seeds: [])
        var nodes = [seed]
        for i in 1..<5 { nodes.append(try await Self.start(name: "n\(i)", seeds: [seed.service.address])) }
        let started = nodes
        defer { Task { for node in started { await node.service.stop() } } }

        #expect(await eventually { nodes.allSatisfy { Self.aliveCount($0.service) == 4 } }, "every node sees four others alive")
        #expect(await eventually { nodes.allSatisfy { $0.service.records().count == 5 } }, "every record everywhere")
        let names = Set(nodes[3].service.records().map(\.record.name))
        #expect(names == ["seed", "n1", "n2", "n3", "n4"])

        // Crash n2: no leave, sockets gone.
        let victim = nodes[2]
        let oldIncarnation = victim.service.incarnation
        await victim.service.stop()
        let others = nodes.enumerated().filter { $0.offset != 2 }.map(\.element)
        #expect(await eventually { others.allSatisfy { node in node.service.members().first { $0.id == victim.key.nodeID }?.status == .dead } },
                "the crashed node is declared dead by all")

        // It restarts with its key and data: a higher incarnation, and everyone takes it back.
        let back = try await Self.start(name: "n2", seeds: [seed.service.address], key: victim.key, dataDir: victim.dataDir)
        defer { Task { await back.service.stop() } }
        #expect(back.service.incarnation > oldIncarnation)
        #expect(await eventually { others.allSatisfy { node in node.service.members().first { $0.id == victim.key.nodeID }?.status == .alive } })
        #expect(others.allSatisfy { $0.rejections.value("malformed") == 0 && $0.rejections.value("bad_signature") == 0 })
    }

    /// `waitUntilGone` (what forwards race): at once for a node that is not a member, on cancellation,
    /// and when a member leaves — not before.
    @Test func waitUntilGone_returnsForStrangers_onCancel_andWhenTheMemberLeaves() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        let b = try await Self.start(name: "b", seeds: [a.service.address])
        defer { Task { await a.service.stop() } }
        #expect(await eventually { Self.aliveCount(a.service) == 1 })
        await a.service.waitUntilGone(Ed25519.KeyPair.generate().nodeID)  // a stranger: returns at once
        let cancelled = Task { await a.service.waitUntilGone(b.key.nodeID) }
        cancelled.cancel()
        await cancelled.value
        let returned = Counter()
        let watching = Task { await a.service.waitUntilGone(b.key.nodeID); returned.add("gone") }
        #expect(a.service.members().first?.status == .alive && returned.value("gone") == 0, "b is alive: still waiting")
        await b.service.leave()
        await b.service.stop()
        await watching.value
        #expect(returned.value("gone") == 1)
        // Gone: left — or dead, when a's probe timed out on the stopping b before its goodbye arrived.
        #expect([MemberStatus.left, .dead].contains(a.service.members().first?.status))
    }

    /// `onGone` (what forwards register): fires at once for a stranger, never once cancelled, and once when
    /// a member leaves — not before, and not twice.
    @Test func onGone_firesForStrangers_notWhenCancelled_andOnceWhenTheMemberLeaves() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        let b = try await Self.start(name: "b", seeds: [a.service.address])
        defer { Task { await a.service.stop() } }
        #expect(await eventually { Self.aliveCount(a.service) == 1 })
        let fired = Counter()
        let stranger = a.service.onGone(Ed25519.KeyPair.generate().nodeID) { fired.add("stranger") }
        #expect(fired.value("stranger") == 1, "not a member: at once")
        stranger.cancel()
        let withdrawn = a.service.onGone(b.key.nodeID) { fired.add("withdrawn") }
        let watching = a.service.onGone(b.key.nodeID) { fired.add("gone") }
        #expect(fired.value("gone") == 0, "b is alive: not yet")
        withdrawn.cancel()
        await b.service.leave()
        await b.service.stop()
        #expect(await eventually { fired.value("gone") == 1 })
        watching.cancel()
        #expect(fired.value("withdrawn") == 0 && fired.value("gone") == 1)
    }

    @Test func gracefulLeave_isSeenAsLeft() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        let b = try await Self.start(name: "b", seeds: [a.service.address])
        defer { Task { await a.service.stop() } }
        #expect(await eventually { Self.aliveCount(a.service) == 1 && Self.aliveCount(b.service) == 1 })
        await b.service.leave()
        await b.service.stop()
        #expect(await eventually(.seconds(3)) { a.service.members().first?.status == .left })
    }

    /// A datagram the kernel refuses (here: to a broadcast address without SO_BROADCAST; in the field a
    /// firewall rule or a missing route) is a lost packet, not the end of the socket: a and b keep
    /// gossiping while a fails to reach c. (NIO's datagram channel closed itself on such an error.)
    @Test func sendTheKernelRefuses_losesOnePacket_notTheSocket() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        let b = try await Self.start(name: "b", seeds: [a.service.address])
        defer { Task { await a.service.stop(); await b.service.stop() } }
        #expect(await eventually { Self.aliveCount(a.service) == 1 && Self.aliveCount(b.service) == 1 })
        let c = try await Self.start(name: "c", seeds: [a.service.address], advertise: PeerAddress(host: "255.255.255.255", port: 9))
        defer { Task { await c.service.stop() } }
        // a learns c (over TCP), probes it at the broadcast address, and is refused by its own kernel.
        #expect(await eventually(.seconds(5)) { a.service.udpSendFailures > 0 })
        #expect(await eventually(.seconds(5)) { a.service.members().first { $0.id == c.key.nodeID }.map { $0.status != .alive } ?? false })
        // Meanwhile a and b still hear each other: a's record change reaches b over UDP gossip.
        let before = try #require(b.service.records().first { $0.record.origin == a.key.nodeID }?.record.version)
        a.service.readvertise()
        #expect(await eventually(.seconds(5)) { (b.service.records().first { $0.record.origin == a.key.nodeID }?.record.version ?? 0) > before })
        #expect(a.service.members().first { $0.id == b.key.nodeID }?.status == .alive)
        #expect(b.service.members().first { $0.id == a.key.nodeID }?.status == .alive)
    }

    @Test func forgedAndMalformedDatagrams_areRejectedAndCounted() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        let b = try await Self.start(name: "b", seeds: [a.service.address])
        defer { Task { await a.service.stop(); await b.service.stop() } }
        #expect(await eventually { a.service.records().count == 2 })
        let genuine = try #require(a.service.records().first { $0.record.origin == b.key.nodeID })

        // An attacker with its own key claims b's record, and sends junk.
        let attacker = Ed25519.KeyPair.generate()
        var forged = genuine.record
        forged.version += 1_000
        forged.apiAddress = "http://evil.example"
        var bytes = forged.canonicalBytes + attacker.sign(forged.canonicalBytes)
        let packet = Packet.encode([.record(bytes)], signer: attacker, meshKey: nil)
        let socket = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        defer { socket.close(promise: nil) }
        let target = try SocketAddress(ipAddress: "127.0.0.1", port: Int(a.service.address.port))
        func send(_ raw: [UInt8]) async throws {
            try await socket.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: ByteBuffer(bytes: raw)))
        }
        try await send(packet)
        try await send([0x41, 0x4D, Packet.version, 0, 1, 2, 3])
        try await send([0x41, 0x4D, 1, 0] + Array(packet.dropFirst(4)))  // protocol version 1 (no stamps)
        try await send([UInt8](repeating: 0xFF, count: 300))
        bytes[10] ^= 1
        try await send(Packet.encode([.record(bytes)], signer: attacker, meshKey: nil))
        // A packet whose claimed sender did not sign it.
        var spoofed = Packet.encode([.suspect(Accusation(node: b.key.nodeID, incarnation: 99, from: attacker.nodeID))], signer: attacker, meshKey: nil)
        spoofed.replaceSubrange(4..<36, with: b.key.publicKey)
        try await send(spoofed)

        // A genuine packet cut short, and one larger than any gossip datagram may be.
        let genuinePacket = Packet.encode([.record(genuine.bytes)], signer: b.key, meshKey: nil)
        try await send(Array(genuinePacket.prefix(genuinePacket.count / 2)))
        try await send([UInt8](repeating: 0x41, count: WireLimits.maxUDPPacket * 4))

        // A captured packet of b's sent three times (one socket to one socket on loopback keeps the order:
        // the first is b's packet, the copies are replays), and one of b's packets from an hour ago,
        // older than a's window for b.
        let captured = Packet.encode([.ping(seq: 77, target: a.key.nodeID)], signer: b.key, meshKey: nil)
        for _ in 0..<3 { try await send(captured) }
        // The same from a sender a has never heard of: one copy in, the second refused; and a stranger's
        // packet from an hour ago, which a cannot tell from a replay.
        let stranger = Ed25519.KeyPair.generate()
        let strangerPacket = Packet.encode([.ack(seq: 1)], signer: stranger, meshKey: nil)
        try await send(strangerPacket)
        try await send(strangerPacket)
        try await send(Packet.encode([.ping(seq: 78, target: a.key.nodeID)], signer: b.key, meshKey: nil, stamp: StampClock.wallMicros() - 3_600_000_000))
        let hourOld = Packet.encode([.ack(seq: 2)], signer: Ed25519.KeyPair.generate(), meshKey: nil, stamp: StampClock.wallMicros() - 3_600_000_000)
        try await send(hourOld)

        #expect(await eventually(.seconds(5)) {
            a.rejections.value("bad_signature") >= 2 && a.rejections.value("bad_magic") >= 1 && a.rejections.value("malformed") >= 1
                && a.rejections.value("truncated") + a.rejections.value("bad_signature") >= 3 && a.rejections.value("oversized") >= 1
                && a.rejections.value("replayed_packet") >= 4 && a.rejections.value("stale_packet") >= 1
                && a.rejections.value("bad_version") >= 1
        }, "\(a.rejections.counts.withLock { $0 })")
        let held = try #require(a.service.records().first { $0.record.origin == b.key.nodeID })
        #expect(held.record.apiAddress == genuine.record.apiAddress && held.record.version == genuine.record.version, "the forgery changed nothing")
        #expect(a.service.members().first { $0.id == b.key.nodeID }?.status == .alive, "the spoofed accusation was dropped")
    }

    @Test func anotherMeshsSecret_cannotJoin() async throws {
        let keyA = Packet.MeshKey(Sodium.randomBytes(32))!, keyB = Packet.MeshKey(Sodium.randomBytes(32))!
        let a = try await Self.start(name: "a", seeds: [], meshKeys: [keyA])
        let b = try await Self.start(name: "b", seeds: [a.service.address], meshKeys: [keyA])
        let outsider = try await Self.start(name: "x", seeds: [a.service.address], meshKeys: [keyB])
        let plain = try await Self.start(name: "p", seeds: [a.service.address])
        defer { Task { for node in [a, b, outsider, plain] { await node.service.stop() } } }
        #expect(await eventually { Self.aliveCount(a.service) == 1 && Self.aliveCount(b.service) == 1 }, "same secret: joined")
        #expect(await eventually(.seconds(5)) { a.rejections.value("wrong_mesh_key") >= 2 }, "outsiders' packets are refused")
        #expect(outsider.service.members().isEmpty && plain.service.members().isEmpty)
        #expect(!a.service.members().contains { $0.id == outsider.key.nodeID || $0.id == plain.key.nodeID })
    }

    @Test func keyRotation_oldAndNewSecretsInterwork() async throws {
        let old = Packet.MeshKey(Sodium.randomBytes(32))!, new = Packet.MeshKey(Sodium.randomBytes(32))!
        let a = try await Self.start(name: "a", seeds: [], meshKeys: [old])
        // b already sends with the new key but still accepts the old one.
        let b = try await Self.start(name: "b", seeds: [a.service.address], meshKeys: [new, old])
        defer { Task { await a.service.stop(); await b.service.stop() } }
        // a does not know the new key yet: b's packets are refused there, a's reach b.
        #expect(await eventually(.seconds(5)) { a.rejections.value("wrong_mesh_key") >= 1 })
        let c = try await Self.start(name: "c", seeds: [b.service.address], meshKeys: [new, old])
        defer { Task { await c.service.stop() } }
        #expect(await eventually { Self.aliveCount(b.service) >= 1 && Self.aliveCount(c.service) >= 1 }, "new-key nodes talk to each other")
    }

    @Test func caTrust_admitsCertifiedNodes_refusesOthers_andHonoursRevocation() async throws {
        let admin = Ed25519.KeyPair.generate()
        let wall = MeshTransportTests.wallNow()
        func certified(_ name: String) -> (Ed25519.KeyPair, [UInt8]) {
            let key = Ed25519.KeyPair.generate()
            return (key, Certificate.issue(node: key.nodeID, name: name, issuedAtMillis: wall, expiresAtMillis: wall + 3_600_000, admin: admin).bytes)
        }
        let trust = TrustStore(mode: .ca(admin: admin.nodeID))
        let (ka, ca) = certified("a"), (kb, cb) = certified("b"), (kc, cc) = certified("c")
        let a = try await Self.start(name: "a", seeds: [], key: ka, certificate: ca, trust: trust)
        let b = try await Self.start(name: "b", seeds: [a.service.address], key: kb, certificate: cb, trust: trust)
        let c = try await Self.start(name: "c", seeds: [a.service.address], key: kc, certificate: cc, trust: trust)
        // A node whose certificate comes from another admin.
        let rogueAdmin = Ed25519.KeyPair.generate()
        let kr = Ed25519.KeyPair.generate()
        let rogueCert = Certificate.issue(node: kr.nodeID, name: "r", issuedAtMillis: wall, expiresAtMillis: wall + 3_600_000, admin: rogueAdmin).bytes
        let rogue = try await Self.start(name: "r", seeds: [a.service.address], key: kr, certificate: rogueCert, trust: TrustStore(mode: .ca(admin: rogueAdmin.nodeID)))
        defer { Task { for node in [a, b, c, rogue] { await node.service.stop() } } }

        #expect(await eventually { [a, b, c].allSatisfy { Self.aliveCount($0.service) == 2 } }, "certified nodes form the mesh")
        #expect(await eventually(.seconds(5)) { a.rejections.value("untrusted_key") >= 1 })
        #expect(!a.service.members().contains { $0.id == kr.nodeID })
        #expect(!a.service.records().contains { $0.record.origin == kr.nodeID })

        // The admin revokes c; a learns it, gossips it; b drops c too.
        let revocation = Revocation.issue(node: kc.nodeID, issuedAtMillis: wall, admin: admin)
        #expect(a.service.submitRevocation(text: revocation.fileText) == nil)
        #expect(b.service.submitRevocation(text: Revocation.issue(node: kc.nodeID, issuedAtMillis: wall, admin: rogueAdmin).fileText) != nil, "only the mesh admin may revoke")
        #expect(await eventually { b.service.trust.revocations[kc.nodeID] != nil }, "the revocation spread")
        #expect(await eventually { !b.service.records().contains { $0.record.origin == kc.nodeID } })
        #expect(await eventually { b.service.members().first { $0.id == kc.nodeID }?.status != .alive }, "a revoked node's packets are refused, so it fails its probes")
        #expect(await eventually(.seconds(5)) { a.rejections.value("revoked") >= 1 && b.rejections.value("revoked") >= 1 }, "and each is counted")
    }

    @Test func restartedNode_rejoinsAlone_fromThePeersItRemembered() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        let b = try await Self.start(name: "b", seeds: [a.service.address])
        defer { Task { await a.service.stop() } }
        #expect(await eventually { Self.aliveCount(a.service) == 1 && Self.aliveCount(b.service) == 1 })
        await b.service.stop()
        // No seeds this time: only what b stored in its data directory.
        let again = try await Self.start(name: "b", seeds: [], key: b.key, dataDir: b.dataDir)
        defer { Task { await again.service.stop() } }
        #expect(await eventually { again.service.members().first { $0.id == a.key.nodeID }?.status == .alive })
        #expect(await eventually { a.service.members().first { $0.id == b.key.nodeID }?.status == .alive })
    }

    /// b ran with a clock an hour fast (a remembers its stamps that far ahead), then restarts on a
    /// corrected clock: it continues above the stamp it persisted, so a does not take it for a replay.
    @Test func restartAfterTheClockSteppedBack_isNotTakenForAReplay() async throws {
        let a = try await Self.start(name: "a", seeds: [])
        defer { Task { await a.service.stop() } }
        let dir = temporaryDirectory("mesh-b")
        let hourAhead = StampClock.wallMicros() + 3_600_000_000
        let seeded = try MeshPersistence(path: dir + "/mesh.sqlite")
        seeded.set("gossip_stamp", hourAhead)
        seeded.close()
        let b = try await Self.start(name: "b", seeds: [a.service.address], dataDir: dir)
        #expect(await eventually { Self.aliveCount(a.service) == 1 && Self.aliveCount(b.service) == 1 })
        await b.service.stop()
        let persisted = try #require(try MeshPersistence(path: dir + "/mesh.sqlite").value("gossip_stamp"))
        #expect(persisted > hourAhead, "the last stamp sent was persisted at stop")
        let again = try await Self.start(name: "b", seeds: [a.service.address], key: b.key, dataDir: dir)
        defer { Task { await again.service.stop() } }
        // Packets the old b stamped after it wrote the stamp (a send racing its stop) cannot be repeated.
        #expect(again.service.stamps.latest >= persisted + MeshService.stampRestartMargin)
        let version = try #require(a.service.records().first { $0.record.origin == b.key.nodeID }?.record.version)
        #expect(await eventually { (a.service.records().first { $0.record.origin == b.key.nodeID }?.record.version ?? 0) > version }, "a hears the restarted b")
        #expect(a.rejections.value("replayed_packet") == 0 && a.rejections.value("stale_packet") == 0)
    }

    @Test func materialChange_isReadvertised_withAHigherVersion() async throws {
        let load = Mutex<UInt32>(0)
        let a = try await Self.start(name: "a", seeds: [])
        let key = Ed25519.KeyPair.generate()
        let b = try await Self.start(name: "b", seeds: [a.service.address], key: key)
        defer { Task { await a.service.stop(); await b.service.stop() } }
        b.service.setRecordContent {
            CapabilityRecord(origin: key.nodeID, version: 0, issuedAtMillis: 0, expiresAtMillis: 0, apiAddress: "http://127.0.0.1:1/b",
                             gossipAddress: PeerAddress(host: "127.0.0.1", port: 1), name: "b", maxConcurrency: 16, inFlight: load.withLock { $0 })
        }
        b.service.readvertise()
        #expect(await eventually { a.service.records().first { $0.record.origin == key.nodeID }?.record.maxConcurrency == 16 })
        let before = try #require(a.service.records().first { $0.record.origin == key.nodeID }?.record.version)
        load.withLock { $0 = 12 }  // a material change in load
        #expect(await eventually { (a.service.records().first { $0.record.origin == key.nodeID }?.record.inFlight ?? 0) == 12 }, "re-advertised within a second or so")
        let after = try #require(a.service.records().first { $0.record.origin == key.nodeID }?.record.version)
        #expect(after > before)
    }

    @Test func persistence_versionsNeverGoBackwards_andCloseIsFinal() throws {
        let dir = temporaryDirectory("persist")
        let first = try MeshPersistence(path: dir + "/mesh.sqlite")
        #expect(first.nextMonotonic("v", floor: 100) == 100)
        #expect(first.nextMonotonic("v", floor: 50) == 101, "a lower floor (a clock gone back) still moves forward")
        first.rememberPeers([(address: PeerAddress(host: "10.0.0.9", port: 7946), node: NodeID(testNumber: 9))], nowMillis: 1_000)
        first.close()
        first.set("v", 5)  // after close: ignored, no crash
        #expect(first.value("v") == nil)
        let again = try MeshPersistence(path: dir + "/mesh.sqlite")
        defer { again.close() }
        #expect(again.nextMonotonic("v", floor: 0) == 102, "survives a restart")
        #expect(again.knownPeers() == [PeerAddress(host: "10.0.0.9", port: 7946)])
    }

    static func wallNow() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
    }
}
