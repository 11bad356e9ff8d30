import MeshCore
import MeshSim
import Membership
import Testing
import Wire

extension MeshSimulation: @unchecked Sendable {}

/// The real SWIM + Lifeguard + record spread, many nodes on a virtual clock (deterministic, seeded).
/// Simulations run off the cooperative pool (see `offThePool`); the checks run on the test's task.
@Suite(.timeLimit(.minutes(2)))
struct MeshSimTests {
    @Test func twentyNodes_joinFromOneSeed_andConverge() async {
        let sim = await offThePool {
            let sim = MeshSimulation(SimSettings(nodes: 20, seed: 1))
            sim.bootstrap()
            sim.run(for: .seconds(3))
            return sim
        }
        #expect(sim.converged(), "every node sees every other alive")
        for origin in 0..<20 {
            #expect(sim.spreadTime(origin: origin, version: 1, since: .zero, fraction: 1.0) != nil, "record of \(origin)")
        }
        #expect(sim.falsePositives() == 0)
    }

    @Test func sameSeed_sameRun() async {
        let runs = await offThePool { () -> [[Double]] in
            (0..<2).map { _ in
                let sim = MeshSimulation(SimSettings(nodes: 12, seed: 42))
                sim.bootstrap()
                sim.run(for: .seconds(2))
                sim.crash(3)
                sim.run(for: .seconds(10))
                return [Double(sim.verdicts.count), Double(sim.packetsSent), sim.bytesPerSecondPerNode(over: .seconds(12))]
            }
        }
        #expect(runs[0] == runs[1])
    }

    @Test func crashedNode_isDeclaredDeadByEveryone() async {
        let (sim, convergedBefore, crashAt) = await offThePool { () -> (MeshSimulation, Bool, Duration) in
            let sim = MeshSimulation(SimSettings(nodes: 16, seed: 7))
            sim.bootstrap()
            sim.run(for: .seconds(3))
            let converged = sim.converged()
            let crashAt = sim.now
            sim.crash(5)
            sim.run(for: .seconds(20))
            return (sim, converged, crashAt)
        }
        #expect(convergedBefore)
        let times = sim.detectionTimes(of: 5, since: crashAt)
        #expect(times.allSatisfy { $0 != nil }, "every live node declared it dead")
        #expect((times.compactMap { $0 }.max() ?? .zero) < .seconds(20))
        #expect(sim.falsePositives(since: crashAt, crashed: [5]) == 0)
        #expect(sim.converged())
    }

    @Test(arguments: [11, 12, 13, 14, 15] as [UInt64])
    func tenPercentLoss_noFalsePositives(seed: UInt64) async {
        let sim = await offThePool {
            var settings = SimSettings(nodes: 25, seed: seed)
            settings.loss = 0.10
            let sim = MeshSimulation(settings)
            sim.bootstrap()
            sim.run(for: .seconds(60))
            return sim
        }
        #expect(sim.falsePositives() == 0, "Lifeguard keeps healthy nodes alive under 10% loss")
        // Suspicion comes and goes under loss; nobody is ever written off.
        for i in 0..<25 { #expect(!sim.view(of: i).values.contains(.dead), "node \(i) wrote someone off") }
    }

    @Test func recordUpdate_reachesEveryone_fast() async {
        let (sim, at, version) = await offThePool { () -> (MeshSimulation, Duration, UInt64) in
            let sim = MeshSimulation(SimSettings(nodes: 50, seed: 3))
            sim.bootstrap()
            sim.run(for: .seconds(5))
            let at = sim.now
            let version = sim.publish(17)
            sim.run(for: .seconds(5))
            return (sim, at, version)
        }
        let spread = sim.spreadTime(origin: 17, version: version, since: at, fraction: 1.0)
        #expect(spread != nil)
        #expect((spread ?? .seconds(99)) < .seconds(3), "spread took \(String(describing: spread))")
    }

    /// A split longer than the time dead members are remembered (30 s), with the default 30 s push-pull:
    /// after the heal, the halves find each other within 5 s (each side tries one lost member a second).
    @Test func partition_thenHeal_reconvergesWithinFiveSeconds() async {
        let (sim, splitConverged, view0of7, view8of2, healedIn) = await offThePool { () -> (MeshSimulation, Bool, MemberStatus?, MemberStatus?, Int?) in
            let sim = MeshSimulation(SimSettings(nodes: 10, seed: 5))
            sim.bootstrap()
            sim.run(for: .seconds(3))
            let converged = sim.converged()
            sim.partition([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
            sim.run(for: .seconds(60))
            let a = sim.view(of: 0)[7], b = sim.view(of: 8)[2]
            sim.heal()
            var healedIn: Int?
            for step in 1...50 where healedIn == nil {
                sim.run(for: .milliseconds(100))
                if sim.converged() { healedIn = step * 100 }
            }
            return (sim, converged, a, b, healedIn)
        }
        #expect(splitConverged)
        #expect(view0of7 != .alive, "each side gave up on the other")
        #expect(view8of2 != .alive)
        #expect(healedIn != nil, "the halves found each other again within 5 s of the heal")
        #expect(sim.converged())
    }

    @Test func restartedNode_rejoinsWithAHigherIncarnation() async {
        let (sim, before, viewWhileDown) = await offThePool { () -> (MeshSimulation, UInt64, MemberStatus?) in
            let sim = MeshSimulation(SimSettings(nodes: 8, seed: 9))
            sim.bootstrap()
            sim.run(for: .seconds(3))
            let before = sim.nodes[4].agent.swim.incarnation
            sim.crash(4)
            sim.run(for: .seconds(20))
            let down = sim.view(of: 0)[4]
            sim.restart(4)
            sim.run(for: .seconds(5))
            return (sim, before, down)
        }
        #expect(viewWhileDown == .dead, "20 s after the crash: dead, not yet forgotten (30 s)")
        #expect(sim.nodes[4].agent.swim.incarnation > before)
        #expect(sim.view(of: 0)[4] == .alive)
        #expect(sim.converged())
    }

    @Test func partitionThenHeal_meshSpendMatchesTheSumOfTheLedgers() async {
        let (sim, truth, duringA, duringB) = await offThePool { () -> (MeshSimulation, Double, Double, Double) in
            var settings = SimSettings(nodes: 6, seed: 21)
            settings.agent.pushPullInterval = .seconds(5)
            let sim = MeshSimulation(settings)
            sim.bootstrap()
            sim.run(for: .seconds(3))
            for i in 0..<6 { sim.spend(i, 1.0) }
            sim.run(for: .seconds(2))
            sim.partition([[0, 1, 2], [3, 4, 5]])
            // Each side keeps spending and knows only its own side's new spend.
            for round in 0..<5 {
                for i in 0..<6 { sim.spend(i, Double(i + 1) * 0.1 * Double(round + 1)) }
                sim.run(for: .seconds(1))
            }
            sim.run(for: .seconds(2))
            let a = sim.meshSpend(seenBy: 0), b = sim.meshSpend(seenBy: 5)
            sim.heal()
            sim.run(for: .seconds(45))
            let truth = sim.nodes.reduce(0) { $0 + $1.ledgerSpend }
            return (sim, truth, a, b)
        }
        // During the partition each side undercounts the other side's new spend (the documented bound)…
        #expect(duringA < truth && duringB < truth)
        // …and once healed every node's counters add up to the ledgers exactly.
        for i in 0..<6 { #expect(abs(sim.meshSpend(seenBy: i) - truth) < 1e-9, "node \(i): \(sim.meshSpend(seenBy: i)) vs \(truth)") }
    }
}
