import MeshCore
import MeshSim
import Membership
import Testing
import Wire

/// The real SWIM + Lifeguard + record spread, many nodes on a virtual clock (deterministic, seeded).
@Suite(.timeLimit(.minutes(2)))
struct MeshSimTests {
    @Test func twentyNodes_joinFromOneSeed_andConverge() {
        let sim = MeshSimulation(SimSettings(nodes: 20, seed: 1))
        sim.bootstrap()
        sim.run(for: .seconds(3))
        #expect(sim.converged(), "every node sees every other alive")
        // Every record reached everyone.
        for origin in 0..<20 {
            #expect(sim.spreadTime(origin: origin, version: 1, since: .zero, fraction: 1.0) != nil, "record of \(origin)")
        }
        #expect(sim.falsePositives() == 0)
    }

    @Test func sameSeed_sameRun() {
        func run() -> (Int, Int, Double) {
            let sim = MeshSimulation(SimSettings(nodes: 12, seed: 42))
            sim.bootstrap()
            sim.run(for: .seconds(2))
            sim.crash(3)
            sim.run(for: .seconds(10))
            return (sim.verdicts.count, sim.packetsSent, sim.bytesPerSecondPerNode(over: .seconds(12)))
        }
        let first = run(), second = run()
        #expect(first == second)
    }

    @Test func crashedNode_isDeclaredDeadByEveryone() {
        let sim = MeshSimulation(SimSettings(nodes: 16, seed: 7))
        sim.bootstrap()
        sim.run(for: .seconds(3))
        #expect(sim.converged())
        let crashAt = sim.now
        sim.crash(5)
        sim.run(for: .seconds(20))
        let times = sim.detectionTimes(of: 5, since: crashAt)
        #expect(times.allSatisfy { $0 != nil }, "every live node declared it dead")
        let worst = times.compactMap { $0 }.max() ?? .zero
        #expect(worst < .seconds(20))
        #expect(sim.falsePositives(since: crashAt, crashed: [5]) == 0)
        #expect(sim.converged())
    }

    @Test(arguments: [11, 12, 13, 14, 15] as [UInt64])
    func tenPercentLoss_noFalsePositives(seed: UInt64) {
        var settings = SimSettings(nodes: 25, seed: seed)
        settings.loss = 0.10
        let sim = MeshSimulation(settings)
        sim.bootstrap()
        sim.run(for: .seconds(60))
        #expect(sim.falsePositives() == 0, "Lifeguard keeps healthy nodes alive under 10% loss")
        // Suspicion comes and goes under loss; nobody is ever written off.
        for i in 0..<25 { #expect(!sim.view(of: i).values.contains(.dead), "node \(i) wrote someone off") }
    }

    @Test func recordUpdate_reachesEveryone_fast() {
        let sim = MeshSimulation(SimSettings(nodes: 50, seed: 3))
        sim.bootstrap()
        sim.run(for: .seconds(5))
        let at = sim.now
        let version = sim.publish(17)
        sim.run(for: .seconds(5))
        let spread = sim.spreadTime(origin: 17, version: version, since: at, fraction: 1.0)
        #expect(spread != nil)
        #expect((spread ?? .seconds(99)) < .seconds(3), "spread took \(String(describing: spread))")
    }

    @Test func partition_thenHeal_reconverges() {
        var settings = SimSettings(nodes: 10, seed: 5)
        settings.agent.pushPullInterval = .seconds(5)
        let sim = MeshSimulation(settings)
        sim.bootstrap()
        sim.run(for: .seconds(3))
        #expect(sim.converged())
        sim.partition([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
        sim.run(for: .seconds(30))
        // Each side has given up on the other.
        #expect(sim.view(of: 0)[7] != .alive)
        #expect(sim.view(of: 8)[2] != .alive)
        sim.heal()
        // Dead members are still gossiped to for a while and push-pull reconnects the halves.
        sim.run(for: .seconds(40))
        #expect(sim.converged(), "the halves found each other again")
    }

    @Test func restartedNode_rejoinsWithAHigherIncarnation() {
        let sim = MeshSimulation(SimSettings(nodes: 8, seed: 9))
        sim.bootstrap()
        sim.run(for: .seconds(3))
        let before = sim.nodes[4].agent.swim.incarnation
        sim.crash(4)
        sim.run(for: .seconds(20))
        #expect(sim.view(of: 0)[4] == .dead || sim.view(of: 0)[4] == nil)
        sim.restart(4)
        sim.run(for: .seconds(5))
        #expect(sim.nodes[4].agent.swim.incarnation > before)
        #expect(sim.view(of: 0)[4] == .alive)
        #expect(sim.converged())
    }
}
