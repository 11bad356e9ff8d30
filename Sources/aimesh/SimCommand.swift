import ArgumentParser
import MeshCore
import MeshSim
import Membership

/// Runs the deterministic mesh simulator and prints gossip figures (used by scripts/bench-gossip).
struct SimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Simulate a mesh of N nodes (SWIM + Lifeguard + record spread) on a virtual clock and print spread, detection and bandwidth."
    )

    @Option(name: .long, help: "Number of nodes.")
    var nodes: Int = 100

    @Option(name: .long, help: "Random seed (same seed, same run).")
    var seed: UInt64 = 1

    @Option(name: .long, help: "Packet loss for the false-positive run (0.1 = 10%).")
    var loss: Double = 0.10

    @Option(name: .long, help: "Simulated seconds of the lossy run.")
    var lossSeconds: Int = 60

    @Option(name: .long, help: "SWIM suspicion multiplier.")
    var suspicionMultiplier: Int?

    @Option(name: .long, help: "SWIM probe interval in milliseconds.")
    var probeIntervalMs: Int?

    @Option(name: .long, help: "Gossip interval in milliseconds.")
    var gossipIntervalMs: Int?

    @Flag(name: .long, help: "Print one JSON line instead of text.")
    var json = false

    func run() throws {
        guard nodes >= 3 else { throw ValidationError("--nodes must be at least 3") }
        var settings = SimSettings(nodes: nodes, seed: seed)
        settings.step = .milliseconds(5)
        if let suspicionMultiplier { settings.swim.suspicionMultiplier = suspicionMultiplier }
        if let probeIntervalMs {
            settings.swim.probeInterval = .milliseconds(probeIntervalMs)
            settings.swim.probeTimeout = .milliseconds(probeIntervalMs / 2)
        }
        if let gossipIntervalMs { settings.swim.gossipInterval = .milliseconds(gossipIntervalMs) }
        let sim = MeshSimulation(settings)
        sim.bootstrap(stagger: nodes > 200 ? .milliseconds(1) : .milliseconds(5))
        var joined: Duration?
        while sim.now < .seconds(120) {
            sim.run(for: .milliseconds(100))
            if sim.converged() { joined = sim.now; break }
        }
        // Let the join's burst of membership news drain (as in a mesh that has been up for a while).
        let settleLimit = sim.now + .seconds(60)
        repeat { sim.run(for: .seconds(1)) } while sim.now < settleLimit && sim.nodes.contains { $0.agent.swim.pendingBroadcasts > 0 }

        // A record update from one node: time to 99.9 % and 100 % of nodes.
        let origin = nodes / 2
        let published = sim.now
        let version = sim.publish(origin)
        let bytesBefore = sim.nodes.reduce(0) { $0 + $1.bytesSent }
        sim.run(for: .seconds(10))
        let spread999 = sim.spreadTime(origin: origin, version: version, since: published, fraction: 0.999)
        let spreadAll = sim.spreadTime(origin: origin, version: version, since: published, fraction: 1.0)
        let reached = sim.reached(origin: origin, version: version)
        let bytesSteady = Double(sim.nodes.reduce(0) { $0 + $1.bytesSent } - bytesBefore) / Double(nodes) / 10.0

        // A crash: when does each live node declare it dead?
        let victim = nodes / 3
        let crashedAt = sim.now
        sim.crash(victim)
        sim.run(for: .seconds(40))
        let detections = sim.detectionTimes(of: victim, since: crashedAt).compactMap { $0 }.sorted()
        let detectedAll = detections.count == nodes - 1
        let median = detections.isEmpty ? nil : detections[detections.count / 2]
        let worst = detections.last
        let falseAfterCrash = sim.falsePositives(since: crashedAt, crashed: [victim])

        // False positives under loss: a fresh mesh, joined and settled, then `loss` of every datagram
        // dropped for `lossSeconds` (a running mesh on a bad network; TCP push-pull still works).
        var lossy = settings
        lossy.seed = seed &+ 1
        let lossySim = MeshSimulation(lossy)
        lossySim.bootstrap(stagger: nodes > 200 ? .milliseconds(1) : .milliseconds(5))
        let lossyLimit = lossySim.now + .seconds(120)
        repeat { lossySim.run(for: .seconds(1)) } while lossySim.now < lossyLimit && (!lossySim.converged() || lossySim.nodes.contains { $0.agent.swim.pendingBroadcasts > 0 })
        let lossStart = lossySim.now
        lossySim.loss = loss
        lossySim.run(for: .seconds(Int64(lossSeconds)))
        let falsePositives = lossySim.falsePositives(since: lossStart)

        func s(_ d: Duration?) -> String { d.map { String(Double(Int(($0.seconds * 1000).rounded())) / 1000) + " s" } ?? "never" }
        if json {
            func v(_ d: Duration?) -> String { d.map { "\($0.seconds)" } ?? "null" }
            print("{\"nodes\":\(nodes),\"seed\":\(seed),\"join_converged_s\":\(v(joined)),\"spread_999_s\":\(v(spread999)),\"spread_all_s\":\(v(spreadAll)),\"spread_reached\":\(reached),"
                  + "\"detect_median_s\":\(v(median)),\"detect_worst_s\":\(v(worst)),\"detected_by_all\":\(detectedAll),\"false_positives_after_crash\":\(falseAfterCrash),"
                  + "\"loss\":\(loss),\"false_positives_under_loss\":\(falsePositives),\"bytes_per_s_per_node\":\(Int(bytesSteady))}")
        } else {
            print("nodes \(nodes) (seed \(seed))")
            print("  join from one seed, all converged   \(s(joined))")
            print("  record update → 99.9 % of nodes      \(s(spread999))   (100 %: \(s(spreadAll)); reached \(reached) of \(nodes) in 10 s)")
            print("  crash detected: median / worst       \(s(median)) / \(s(worst))   (by all: \(detectedAll), false positives: \(falseAfterCrash))")
            print("  false positives at \(Int(loss * 100)) % loss, \(lossSeconds) s  \(falsePositives)")
            print("  gossip traffic per node              \(Int(bytesSteady)) B/s (\(String(Double(Int(bytesSteady * 8 / 100)) / 10)) kbit/s)")
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
