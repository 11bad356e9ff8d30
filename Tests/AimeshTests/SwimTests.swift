import MeshCore
import Membership
import Testing
import Wire

/// Every SWIM + Lifeguard transition, on the pure state machine with a manual clock.
@Suite struct SwimTests {
    static let a = NodeID(testNumber: 1), b = NodeID(testNumber: 2), c = NodeID(testNumber: 3), d = NodeID(testNumber: 4), e = NodeID(testNumber: 5)
    static func address(_ n: Int) -> PeerAddress { PeerAddress(host: "10.0.0.\(n)", port: 7946) }

    /// memberlist's LAN timings, which the arithmetic in these tests uses.
    static var lan: SwimSettings {
        var settings = SwimSettings()
        settings.probeInterval = .seconds(1)
        settings.probeTimeout = .milliseconds(500)
        settings.suspicionMultiplier = 4
        settings.gossipInterval = .milliseconds(200)
        return settings
    }

    /// `a` knowing b, c, d, e (all alive at incarnation 1).
    static func node(settings: SwimSettings = lan) -> Swim {
        var swim = Swim(me: a, address: address(1), incarnation: 1, settings: settings, seed: 1)
        let states = [b, c, d, e].enumerated().map { MemberState(alive: Alive(node: $1, incarnation: 1, address: address($0 + 2)), status: .alive) }
        _ = swim.merge(states, now: .zero)
        return swim
    }

    static func sends(_ outputs: [SwimOutput]) -> [(PeerAddress, [MeshMessage])] {
        outputs.compactMap { if case .send(let to, let messages) = $0 { return (to, messages) } else { return nil } }
    }

    static func pings(_ outputs: [SwimOutput]) -> [(PeerAddress, UInt32, NodeID)] {
        sends(outputs).flatMap { to, messages in messages.compactMap { if case .ping(let seq, let target) = $0 { return (to, seq, target) } else { return nil } } }
    }

    @Test func newMember_fromAlive_isAddedAndAnnounced() {
        var swim = Swim(me: Self.a, address: Self.address(1), incarnation: 1, settings: Self.lan, seed: 1)
        let out = swim.receive([.alive(Alive(node: Self.b, incarnation: 3, address: Self.address(2)))], from: Self.b, source: Self.address(2), now: .zero)
        #expect(swim.members[Self.b]?.status == .alive)
        #expect(swim.members[Self.b]?.incarnation == 3)
        #expect(out.contains(.changed(Self.b, from: nil, to: .alive)))
        #expect(swim.pendingBroadcasts == 1, "the news is passed on")
    }

    /// A peer's push-pull state saying "dead" may be stale (the far side of a healed partition): a member
    /// this node sees alive only becomes suspect, and its refutation keeps it; "left" is final.
    @Test func pushPullDead_onlySuspects_andARefutationKeepsTheMember() {
        var swim = Self.node()
        _ = swim.merge([MemberState(alive: Alive(node: Self.b, incarnation: 1, address: Self.address(2)), status: .dead),
                        MemberState(alive: Alive(node: Self.c, incarnation: 1, address: Self.address(3)), status: .left)], now: .seconds(1))
        #expect(swim.members[Self.b]?.status == .suspect)
        #expect(swim.members[Self.c]?.status == .left)
        _ = swim.receive([.alive(Alive(node: Self.b, incarnation: 2, address: Self.address(2)))], from: Self.b, source: Self.address(2), now: .seconds(2))
        #expect(swim.members[Self.b]?.status == .alive)
        // "dead" about this node itself is refuted at once.
        _ = swim.merge([MemberState(alive: Alive(node: Self.a, incarnation: 1, address: Self.address(1)), status: .dead)], now: .seconds(3))
        #expect(swim.incarnation > 1)
    }

    @Test func probe_pingsAMember_andAckMeansHealthy() {
        var swim = Self.node()
        let out = swim.tick(now: .zero)
        let pings = Self.pings(out)
        #expect(pings.count == 1)
        let (_, seq, target) = pings[0]
        _ = swim.receive([.ack(seq: seq)], from: target, source: Self.address(9), now: .milliseconds(10))
        // No indirect probes and no suspicion after an ack.
        let later = swim.tick(now: .milliseconds(600))
        #expect(Self.sends(later).allSatisfy { $0.1.allSatisfy { if case .pingReq = $0 { return false } else { return true } } })
        #expect(swim.members[target]?.status == .alive)
        #expect(swim.awareness == 0)
    }

    @Test func missedAck_sendsIndirectProbesToK_members() {
        var swim = Self.node()
        let (_, seq, target) = Self.pings(swim.tick(now: .zero))[0]
        let out = swim.tick(now: .milliseconds(500))
        let requests = Self.sends(out).flatMap { $0.1 }.compactMap { if case .pingReq(let s, let t, _) = $0 { return (s, t) } else { return nil } }
        #expect(requests.count == 3, "k = indirect_checks")
        #expect(requests.allSatisfy { $0.0 == seq && $0.1 == target })
        #expect(!Self.sends(out).contains { $0.0 == swim.members[target]!.address && $0.1.contains { if case .pingReq = $0 { return true } else { return false } } },
                "the target is not asked to probe itself")
    }

    @Test func indirectAck_countsAsSuccess() {
        var swim = Self.node()
        let (_, seq, target) = Self.pings(swim.tick(now: .zero))[0]
        _ = swim.tick(now: .milliseconds(500))
        _ = swim.receive([.ack(seq: seq)], from: Self.c, source: Self.address(3), now: .milliseconds(700))
        _ = swim.tick(now: .milliseconds(1000))
        #expect(swim.members[target]?.status == .alive)
    }

    @Test func failedProbe_marksSuspect_andRaisesLocalHealthMultiplier() {
        var swim = Self.node()
        let (_, _, target) = Self.pings(swim.tick(now: .zero))[0]
        _ = swim.tick(now: .milliseconds(500))
        let out = swim.tick(now: .milliseconds(1000))
        #expect(swim.members[target]?.status == .suspect)
        #expect(out.contains(.changed(target, from: .alive, to: .suspect)))
        // One failed probe plus three missing nacks.
        #expect(swim.awareness == 4)
    }

    @Test func nacks_keepTheLocalHealthMultiplierLow() {
        var swim = Self.node()
        let (_, seq, _) = Self.pings(swim.tick(now: .zero))[0]
        _ = swim.tick(now: .milliseconds(500))
        for helper in [Self.c, Self.d, Self.e] { _ = swim.receive([.nack(seq: seq)], from: helper, source: Self.address(9), now: .milliseconds(900)) }
        _ = swim.tick(now: .milliseconds(1000))
        #expect(swim.awareness == 1, "the helpers answered: the problem is the target, not us")
    }

    @Test func localHealth_scalesTheProbeInterval() {
        var swim = Self.node()
        _ = swim.tick(now: .zero)
        _ = swim.tick(now: .milliseconds(500))
        _ = swim.tick(now: .milliseconds(1000))  // failed → awareness 4, next probe at 1 s × 5
        let next = swim.tick(now: .milliseconds(2000))
        #expect(Self.pings(next).isEmpty, "a node in bad local health probes less often")
        #expect(!Self.pings(swim.tick(now: .milliseconds(6000))).isEmpty)
    }

    @Test func suspicion_expires_toDead() {
        var swim = Self.node()
        _ = swim.receive([.suspect(Accusation(node: Self.b, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .zero)
        #expect(swim.members[Self.b]?.status == .suspect)
        // n = 5: min = 4 × log10(5) s ≈ 2.8 s; with one confirmation of k = 2 the timeout is between min and 6 × min.
        _ = swim.tick(now: .seconds(2))
        #expect(swim.members[Self.b]?.status == .suspect)
        let out = swim.tick(now: .seconds(20))
        #expect(swim.members[Self.b]?.status == .dead)
        #expect(out.contains(.changed(Self.b, from: .suspect, to: .dead)))
    }

    @Test func independentConfirmations_shortenTheSuspicion() {
        func deadAt(confirmations: [NodeID]) -> Duration {
            var swim = Self.node()
            _ = swim.receive([.suspect(Accusation(node: Self.b, incarnation: 1, from: confirmations[0]))], from: confirmations[0], source: Self.address(9), now: .zero)
            for other in confirmations.dropFirst() {
                _ = swim.receive([.suspect(Accusation(node: Self.b, incarnation: 1, from: other))], from: other, source: Self.address(9), now: .milliseconds(10))
            }
            var t: Duration = .zero
            while swim.members[Self.b]?.status == .suspect && t < .seconds(60) {
                t += .milliseconds(100)
                _ = swim.tick(now: t)
            }
            return t
        }
        let one = deadAt(confirmations: [Self.c])
        let three = deadAt(confirmations: [Self.c, Self.d, Self.e])
        #expect(three < one, "three accusers: \(three), one: \(one)")
    }

    @Test func suspectAboutMe_isRefutedWithAHigherIncarnation() {
        var swim = Self.node()
        _ = swim.receive([.suspect(Accusation(node: Self.a, incarnation: 1, from: Self.b))], from: Self.b, source: Self.address(2), now: .zero)
        #expect(swim.incarnation == 2)
        #expect(swim.awareness == 1, "being suspected is a sign of our own trouble (Lifeguard)")
        let gossip = Self.sends(swim.tick(now: .milliseconds(1))).flatMap { $0.1 }
        #expect(gossip.contains(.alive(Alive(node: Self.a, incarnation: 2, address: Self.address(1)))))
    }

    @Test func deadAboutMe_isRefutedToo() {
        var swim = Self.node()
        _ = swim.receive([.dead(Accusation(node: Self.a, incarnation: 5, from: Self.b))], from: Self.b, source: Self.address(2), now: .zero)
        #expect(swim.incarnation == 6)
    }

    @Test func aliveWithHigherIncarnation_clearsSuspicion() {
        var swim = Self.node()
        _ = swim.receive([.suspect(Accusation(node: Self.b, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .zero)
        let out = swim.receive([.alive(Alive(node: Self.b, incarnation: 2, address: Self.address(2)))], from: Self.b, source: Self.address(2), now: .seconds(1))
        #expect(swim.members[Self.b]?.status == .alive)
        #expect(out.contains(.changed(Self.b, from: .suspect, to: .alive)))
        _ = swim.tick(now: .seconds(60))
        #expect(swim.members[Self.b]?.status == .alive, "the cleared suspicion never fires")
    }

    @Test func aliveWithSameIncarnation_doesNotClearSuspicion() {
        var swim = Self.node()
        _ = swim.receive([.suspect(Accusation(node: Self.b, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .zero)
        _ = swim.receive([.alive(Alive(node: Self.b, incarnation: 1, address: Self.address(2)))], from: Self.d, source: Self.address(4), now: .seconds(1))
        #expect(swim.members[Self.b]?.status == .suspect)
    }

    @Test func staleAccusation_isIgnored() {
        var swim = Self.node()
        _ = swim.receive([.alive(Alive(node: Self.b, incarnation: 4, address: Self.address(2)))], from: Self.b, source: Self.address(2), now: .zero)
        _ = swim.receive([.suspect(Accusation(node: Self.b, incarnation: 3, from: Self.c)), .dead(Accusation(node: Self.b, incarnation: 2, from: Self.c))],
                         from: Self.c, source: Self.address(3), now: .zero)
        #expect(swim.members[Self.b]?.status == .alive)
    }

    @Test func staleAccusationAboutMe_isAnsweredWithMyCurrentAlive() {
        var swim = Self.node()
        _ = swim.receive([.suspect(Accusation(node: Self.a, incarnation: 1, from: Self.b))], from: Self.b, source: Self.address(2), now: .zero)  // → inc 2
        // c missed the refutation and pings us with its old suspicion (buddy system): the ack carries the refutation.
        let out = swim.receive([.ping(seq: 9, target: Self.a), .suspect(Accusation(node: Self.a, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .seconds(1))
        #expect(swim.incarnation == 2, "no new incarnation for an old accusation")
        let ack = Self.sends(out).first { $0.1.contains(.ack(seq: 9)) }
        #expect(ack?.1.contains(.alive(Alive(node: Self.a, incarnation: 2, address: Self.address(1)))) == true)
    }

    @Test func probingASuspect_tellsItSo() {
        var swim = Self.node()
        for other in [Self.b, Self.c, Self.d, Self.e] {
            _ = swim.receive([.suspect(Accusation(node: other, incarnation: 1, from: Self.b))], from: Self.b, source: Self.address(2), now: .zero)
        }
        let out = swim.tick(now: .zero)
        let (to, messages) = Self.sends(out).first { $0.1.contains { if case .ping = $0 { return true } else { return false } } }!
        #expect(messages.contains { if case .suspect(let accusation) = $0 { return swim.members[accusation.node]?.address == to } else { return false } })
    }

    @Test func pingForSomeoneElse_isNotAcked() {
        var swim = Self.node()
        let out = swim.receive([.ping(seq: 1, target: Self.c)], from: Self.b, source: Self.address(2), now: .zero)
        #expect(Self.sends(out).isEmpty, "an address reused by another node must not answer for the old one")
    }

    @Test func pingReq_relaysThePing_andTheAck() {
        var swim = Self.node()
        let out = swim.receive([.pingReq(seq: 77, target: Self.c, address: Self.address(3))], from: Self.b, source: Self.address(2), now: .zero)
        let relayed = Self.pings(out)
        #expect(relayed.count == 1 && relayed[0].0 == Self.address(3) && relayed[0].2 == Self.c)
        let back = swim.receive([.ack(seq: relayed[0].1)], from: Self.c, source: Self.address(3), now: .milliseconds(5))
        #expect(Self.sends(back).contains { $0.0 == Self.address(2) && $0.1.contains(.ack(seq: 77)) })
    }

    @Test func pingReq_withoutAck_sendsANack() {
        var swim = Self.node()
        _ = swim.receive([.pingReq(seq: 78, target: Self.c, address: Self.address(3))], from: Self.b, source: Self.address(2), now: .zero)
        let out = swim.tick(now: .milliseconds(450))
        #expect(Self.sends(out).contains { $0.0 == Self.address(2) && $0.1.contains(.nack(seq: 78)) })
    }

    @Test func dead_thenReapedAfterGossipToTheDead() {
        var swim = Self.node()
        _ = swim.receive([.dead(Accusation(node: Self.b, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .zero)
        #expect(swim.members[Self.b]?.status == .dead)
        _ = swim.tick(now: .seconds(10))
        #expect(swim.members[Self.b] != nil, "still gossiped to, so it can refute")
        let out = swim.tick(now: .seconds(31))
        #expect(swim.members[Self.b] == nil)
        #expect(out.contains(.removed(Self.b)))
    }

    @Test func deadMember_comesBackWithAHigherIncarnation() {
        var swim = Self.node()
        _ = swim.receive([.dead(Accusation(node: Self.b, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .zero)
        _ = swim.receive([.alive(Alive(node: Self.b, incarnation: 1, address: Self.address(2)))], from: Self.b, source: Self.address(2), now: .seconds(1))
        #expect(swim.members[Self.b]?.status == .dead, "same incarnation: still dead")
        let out = swim.receive([.alive(Alive(node: Self.b, incarnation: 2, address: Self.address(20)))], from: Self.b, source: Self.address(20), now: .seconds(2))
        #expect(swim.members[Self.b]?.status == .alive)
        #expect(swim.members[Self.b]?.address == Self.address(20), "a restarted node may come back elsewhere")
        #expect(out.contains(.changed(Self.b, from: .dead, to: .alive)))
    }

    @Test func pingFromADeadMember_isAnsweredWithTheVerdict_soItRefutes() {
        var swim = Self.node()
        _ = swim.receive([.dead(Accusation(node: Self.b, incarnation: 1, from: Self.c))], from: Self.c, source: Self.address(3), now: .zero)
        let out = swim.receive([.ping(seq: 5, target: Self.a)], from: Self.b, source: Self.address(2), now: .seconds(1))
        let reply = Self.sends(out).first { $0.1.contains(.ack(seq: 5)) }
        #expect(reply?.1.contains(.dead(Accusation(node: Self.b, incarnation: 1, from: Self.a))) == true)
        // b, restarted at incarnation 7, hears the old verdict and queues its current alive again
        // (no new incarnation for an old accusation); a takes it back when it arrives.
        var b = Swim(me: Self.b, address: Self.address(2), incarnation: 7, settings: Self.lan, seed: 2)
        #expect(b.pendingBroadcasts == 0)
        _ = b.receive(reply?.1 ?? [], from: Self.a, source: Self.address(1), now: .seconds(1))
        #expect(b.incarnation == 7)
        let gossip = Self.sends(b.tick(now: .seconds(2))).flatMap { $0.1 }
        #expect(gossip.contains(.alive(Alive(node: Self.b, incarnation: 7, address: Self.address(2)))), "b re-announces itself")
        _ = swim.receive([.alive(Alive(node: Self.b, incarnation: 7, address: Self.address(2)))], from: Self.b, source: Self.address(2), now: .seconds(2))
        #expect(swim.members[Self.b]?.status == .alive)
    }

    @Test func gracefulLeave_isLeftNotDead() {
        var swim = Self.node()
        let out = swim.receive([.dead(Accusation(node: Self.b, incarnation: 1, from: Self.b))], from: Self.b, source: Self.address(2), now: .zero)
        #expect(swim.members[Self.b]?.status == .left)
        #expect(out.contains(.changed(Self.b, from: .alive, to: .left)))
    }

    @Test func leaving_tellsPeers_thenIgnoresInput() {
        var swim = Self.node()
        let out = swim.leave(now: .zero)
        #expect(Self.sends(out).count == 3)
        #expect(Self.sends(out).allSatisfy { $0.1 == [.dead(Accusation(node: Self.a, incarnation: 1, from: Self.a))] })
        #expect(swim.receive([.ping(seq: 1, target: Self.a)], from: Self.b, source: Self.address(2), now: .zero).isEmpty)
        #expect(swim.tick(now: .seconds(5)).isEmpty)
    }

    @Test func broadcasts_stopAfterTheRetransmitLimit() {
        var swim = Self.node()
        swim.broadcast(.alive(Alive(node: Self.b, incarnation: 9, address: Self.address(2))), key: .member(Self.b))
        var transmissions = 0
        var t: Duration = .zero
        while swim.pendingBroadcasts > 0 && t < .seconds(60) {
            t += .milliseconds(200)
            transmissions += Self.sends(swim.tick(now: t)).filter { $0.1.contains(.alive(Alive(node: Self.b, incarnation: 9, address: Self.address(2)))) }.count
        }
        // n = 5 → limit = 4 × ⌈log10(6)⌉ = 4 transmissions (each to one target).
        #expect(transmissions == swim.retransmitLimit)
    }

    @Test func pushPullState_listsEveryone() {
        let swim = Self.node()
        let state = swim.pushPullState()
        #expect(state.count == 5)
        #expect(state.first?.alive.node == Self.a)
    }
}
