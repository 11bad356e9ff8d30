import ArgumentParser
import CurlHTTP
import Logging
import MeshCore
import MockUpstream
import Node
import NodeConfig

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The README's first command: three nodes on loopback from `mesh-configs/demo-*.yaml` — a GPU box
/// with a local model server, an edge node, a cloud gateway — joined from one seed, serving requests
/// for models only another node has, failing over across the mesh, then the topology.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the mesh demo: three nodes on loopback (GPU box, edge, cloud gateway) serving each other's models, failover, then the topology."
    )

    @Option(name: .long, help: "Directory holding demo-gpu.yaml, demo-edge.yaml and demo-cloud.yaml.")
    var configs: String = "mesh-configs"

    @Option(name: .long, help: "A real OpenAI-style model server for the GPU box (e.g. llama-cpp-python's, http://127.0.0.1:8000/v1); a stand-in otherwise.")
    var localURL: String?

    @Option(name: .long, help: "The model id that server expects.")
    var localModel: String?

    @Option(name: .long, help: "Directory for the nodes' data (a fresh temporary one by default).")
    var dataDir: String?

    func run() async throws {
        LogSetup.bootstrap(level: "error", format: .text, output: "stderr")
        let directory = dataDir ?? "/tmp/aimesh-demo-\(getpid())"
        var mocks: [MockUpstream] = []
        let localServer: MockUpstream? = localURL == nil ? try await MockUpstream.start(.init(name: "gpu-box's local model", latency: .milliseconds(20), eventInterval: .milliseconds(15))) : nil
        if let localServer { mocks.append(localServer) }
        let groq = try await MockUpstream.start(.init(name: "groq", latency: .milliseconds(40), requiredKey: "demo-groq-key"))
        let anthropic = try await MockUpstream.start(.init(name: "anthropic", latency: .milliseconds(60), eventInterval: .milliseconds(20), requiredKey: "demo-anthropic-key"))
        let gemini = try await MockUpstream.start(.init(name: "gemini", latency: .milliseconds(50), eventInterval: .milliseconds(20), requiredKey: "demo-gemini-key"))
        let workers = try await MockUpstream.start(.init(name: "workers-ai", latency: .milliseconds(30), requiredKey: "demo-cf-token"))
        mocks += [groq, anthropic, gemini, workers]
        var environment: [String: String] = [
            "AIMESH_DEMO_DIR": directory,
            "AIMESH_DEMO_LOCAL_URL": localURL ?? "\(localServer!.baseURL)/v1",
            "AIMESH_DEMO_GROQ_URL": "\(groq.baseURL)/openai/v1", "GROQ_API_KEY": "demo-groq-key",
            "AIMESH_DEMO_ANTHROPIC_URL": "\(anthropic.baseURL)/v1", "ANTHROPIC_API_KEY": "demo-anthropic-key",
            "AIMESH_DEMO_GEMINI_URL": "\(gemini.baseURL)/v1beta", "GEMINI_API_KEY": "demo-gemini-key",
            "AIMESH_DEMO_WORKERS_URL": "\(workers.baseURL)/client/v4", "CLOUDFLARE_ACCOUNT_ID": "demo-account", "CLOUDFLARE_API_TOKEN": "demo-cf-token",
        ]
        if let localModel { environment["AIMESH_DEMO_LOCAL_MODEL"] = localModel }
        for key in ["GPU", "EDGE", "CLOUD"] {
            environment["AIMESH_DEMO_\(key)_API"] = "0"
            environment["AIMESH_DEMO_\(key)_GOSSIP"] = "0"
        }

        func load(_ file: String) throws -> NodeConfiguration {
            let path = "\(configs)/\(file)"
            let outcome = ConfigLoader.check(path: path, environment: environment)
            guard let configuration = outcome.configuration, outcome.errors.isEmpty else {
                for diagnostic in outcome.diagnostics { printError(diagnostic.description) }
                printError("aimesh demo: run it from the repository root (it reads \(configs)/demo-*.yaml), or pass --configs DIR")
                throw ExitCode(1)
            }
            return configuration
        }
        var runtimes: [(name: String, runtime: NodeRuntime, task: Task<Void, any Error>, base: String)] = []
        func start(_ file: String) async throws -> (NodeRuntime, String) {
            let runtime = try NodeRuntime(configuration: try load(file), logger: Logger(label: "aimesh.demo"))
            let task = Task { try await runtime.run(handleSignals: false) }
            let port = try await runtime.waitUntilListening()
            let base = "http://127.0.0.1:\(port)"
            runtimes.append((runtime.configuration.node.id, runtime, task, base))
            return (runtime, base)
        }
        print("aimesh demo: three nodes on 127.0.0.1 from \(configs)/demo-*.yaml, data in \(directory)")
        print(localURL.map { "gpu-box's local model server: \($0) (real)" } ?? "gpu-box's local model server: a stand-in speaking OpenAI's format (pass --local-url for a real one)")
        print("cloud accounts: stand-ins speaking Groq (OpenAI), Anthropic, Gemini and Workers AI formats\n")

        let client = CurlClient()
        defer { client.shutdown() }
        do {
            let (gpu, gpuBase) = try await start("demo-gpu.yaml")
            // The others join through the GPU box's gossip port.
            environment["AIMESH_DEMO_GPU_GOSSIP"] = String(try await gpu.mesh?.waitUntilBound() ?? 0)
            let (_, edgeBase) = try await start("demo-edge.yaml")
            let (_, cloudBase) = try await start("demo-cloud.yaml")
            for entry in runtimes { print("  \(entry.name.padding(8)) API \(entry.base)   gossip 127.0.0.1:\(entry.runtime.mesh?.boundPort ?? 0)") }

            // Wait until every node sees the other two and every model.
            let started = ContinuousClock.now
            let everything: Set<String> = ["smollm2", "llama-3.1-8b", "claude-sonnet", "gemini-flash", "llama-3.1-8b-cf"]
            let settled = try await eventually(.seconds(20), every: .milliseconds(50)) {
                for entry in runtimes {
                    let models = try JSONParser.parse(try await client.send(OutboundRequest(url: entry.base + "/v1/models")).1)
                    let ids = Set((models["data"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue })
                    if !everything.isSubset(of: ids) { return false }
                }
                return true
            }
            let took = ContinuousClock.now - started
            print(settled ? "\nJoined from one seed; every node sees every model in \(took.millisecondsRounded) ms.\n" : "\nThe mesh did not settle in 20 s.\n")

            let chat = DemoChat(client: client)
            try await chat.ask(edgeBase, "edge", "smollm2", "Which node answers me?")
            try await chat.ask(gpuBase, "gpu-box", "claude-sonnet", "Translate 'mesh' to French.")
            try await chat.ask(cloudBase, "cloud-gw", "smollm2", "Stream from the GPU box, please.", stream: true)
            try await chat.ask(edgeBase, "edge", "gemini-flash", "Name three prime numbers.", stream: true)
            try await chat.ask(cloudBase, "cloud-gw", "llama-3.1-8b-cf", "Hello from the cloud to the edge.")
            if let localServer {
                print("Failover across the mesh: gpu-box's model server now answers 503.")
                localServer.setSticky(.status(503))
                try await chat.ask(edgeBase, "edge", "llama-3.1-8b", "Are you still there?")
                localServer.setSticky(nil)
            }
            try await chat.ask(edgeBase, "edge", "no-such-model", "Hello?")

            // The RTTs come from the membership probes (one peer every 500 ms, in turn), and the chats above
            // take under a second: give edge up to 3 s to have probed every peer it knows, so the table
            // shows a measured RTT on each edge rather than "-" for a peer joined a moment ago.
            var topology = JSON.null
            _ = try await eventually(.seconds(3), every: .milliseconds(100)) {
                topology = try JSONParser.parse(try await client.send(OutboundRequest(url: edgeBase + "/aiproxy/mesh/topology")).1)
                return !(topology["edges"]?.arrayValue ?? []).contains { $0["rtt_ms"]?.doubleValue == nil }
            }
            print("The mesh as edge sees it (GET /aiproxy/mesh/topology, also `aimesh topology` and \(edgeBase)/ui):\n")
            print(TopologyRender.table(topology))
        } catch {
            printError("demo failed: \(error)")
        }
        for entry in runtimes.reversed() {
            await entry.runtime.shutdown()
            _ = try? await entry.task.value
        }
        let recorded = runtimes.compactMap { $0.runtime.ledger.map { "\($0.committedSequence) in \($0.path)" } }
        print("\nLedgers: " + recorded.joined(separator: "; "))
        for mock in mocks { await mock.shutdown() }
    }
}

/// Sends one chat request and prints the answer with its route.
struct DemoChat {
    let client: CurlClient

    func ask(_ base: String, _ nodeName: String, _ model: String, _ prompt: String, stream: Bool = false) async throws {
        let body: JSON = ["model": .string(model), "messages": [["role": "user", "content": .string(prompt)]], "stream": .bool(stream), "max_tokens": 60]
        print("→ \(nodeName) · \(model)\(stream ? " (streaming)" : ""): \(prompt)")
        let response = try await client.start(.post(base + "/v1/chat/completions", json: body.bytes))
        if stream && response.head.status == 200 {
            var parser = SSEParser()
            var info: JSON?
            fputs("  ", stdout)
            while let chunk = try await response.next() {
                for event in try parser.feed(chunk) where !event.isDone {
                    guard let data = try? JSONParser.parse(event.data) else { continue }
                    if let text = data["choices"]?[0]?["delta"]?["content"]?.stringValue { fputs(text, stdout); fflush(stdout) }
                    if let aiproxy = data["x_aiproxy"] { info = aiproxy }
                }
            }
            print("")
            printInfo(info)
        } else {
            let bytes = try await response.collect(maxBytes: 1 << 20)
            let json = try JSONParser.parse(bytes)
            if response.head.status >= 400 {
                print("  error \(response.head.status): \(json["error"]?["message"]?.stringValue ?? "?")")
            } else {
                print("  \(ChatCommandOutput.text(of: json["choices"]?[0]?["message"]?["content"]))")
                printInfo(json["x_aiproxy"])
            }
        }
        print("")
    }

    func printInfo(_ info: JSON?) {
        guard let info else { return }
        let route = info["route"]?.arrayValue?.compactMap(\.stringValue).joined(separator: " → ") ?? "?"
        let attempts = info["attempts"]?.arrayValue?.map { "\($0["route"]?.stringValue ?? "?"):\($0["outcome"]?.stringValue ?? "?")" }.joined(separator: ", ") ?? ""
        print("  x_aiproxy: route \(route) · cost $\(info["cost"]?.doubleValue ?? 0) · \(info["tokens"]?["total"]?.intValue ?? 0) tokens · \(info["latency_ms"]?.doubleValue ?? 0) ms · attempts [\(attempts)]")
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
