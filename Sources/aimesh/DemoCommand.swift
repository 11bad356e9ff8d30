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

/// The embedded default: a node on loopback in front of stand-in upstreams that speak the real wire
/// formats, serving real requests, then its status.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the embedded demo: a node on loopback in front of local and cloud stand-ins, real requests, failover, then its status."
    )

    @Option(name: .long, help: "Directory for the demo's data (a fresh temporary one by default).")
    var dataDir: String?

    static func configYAML(local: Int, groq: Int, anthropic: Int, gemini: Int, workers: Int, dataDir: String) -> String {
        """
        node: { id: demo-node, region: local, type: hybrid, data_dir: "\(dataDir)" }
        server: { listen_addr: "127.0.0.1:0" }
        providers:
          local:                        # an OpenAI-style server on this machine (llama.cpp, vLLM, Ollama…)
            type: local
            base_url: http://127.0.0.1:\(local)/v1
            priority: 1
            models: [ { name: llama-3.1-8b, upstream_model: "llama3.1:8b" } ]
          groq:                         # a cloud account (stand-in speaking OpenAI's format)
            type: openai_compatible
            base_url: http://127.0.0.1:\(groq)/openai/v1
            credentials: { api_key: demo-groq-key }
            models:
              - { name: llama-3.1-8b, upstream_model: llama-3.1-8b-instant, input_cost_per_1m: 0.05, output_cost_per_1m: 0.08 }
          anthropic:                    # stand-in speaking Anthropic's Messages API
            type: anthropic
            base_url: http://127.0.0.1:\(anthropic)
            credentials: { api_key: demo-anthropic-key }
            models: [ { name: claude-sonnet, upstream_model: claude-sonnet-4-5, input_cost_per_1m: 3, output_cost_per_1m: 15 } ]
          gemini:                       # stand-in speaking Gemini's generateContent
            type: gemini
            base_url: http://127.0.0.1:\(gemini)
            credentials: { api_key: demo-gemini-key }
            models: [ { name: gemini-flash, upstream_model: gemini-2.5-flash, input_cost_per_1m: 0.3, output_cost_per_1m: 2.5 } ]
          workers-ai:                   # stand-in speaking Cloudflare Workers AI
            type: cloudflare
            base_url: http://127.0.0.1:\(workers)/client/v4
            credentials: { account_id: demo-account, api_token: demo-cf-token }
            models: [ { name: llama-3.1-8b-cf, upstream_model: "@cf/meta/llama-3.1-8b-instruct", input_cost_per_1m: 0.28, output_cost_per_1m: 0.83 } ]
        routing:
          strategy: cost_optimized
          failover: { enabled: true, max_retries: 3, retry_delay: 50ms }
        """
    }

    func run() async throws {
        LogSetup.bootstrap(level: "warning", format: .text, output: "stderr")
        let directory = dataDir ?? "/tmp/aimesh-demo-\(getpid())"
        let local = try await MockUpstream.start(.init(name: "local-gpu", latency: .milliseconds(15), eventInterval: .milliseconds(15)))
        let groq = try await MockUpstream.start(.init(name: "groq", latency: .milliseconds(40), requiredKey: "demo-groq-key"))
        let anthropic = try await MockUpstream.start(.init(name: "anthropic", latency: .milliseconds(60), requiredKey: "demo-anthropic-key"))
        let gemini = try await MockUpstream.start(.init(name: "gemini", latency: .milliseconds(50), eventInterval: .milliseconds(20), requiredKey: "demo-gemini-key"))
        let workers = try await MockUpstream.start(.init(name: "workers-ai", latency: .milliseconds(30), requiredKey: "demo-cf-token"))
        let yaml = DemoCommand.configYAML(local: local.port, groq: groq.port, anthropic: anthropic.port, gemini: gemini.port, workers: workers.port, dataDir: directory)
        let outcome = ConfigLoader.parse(yaml: yaml, file: "<embedded demo config>")
        guard let configuration = outcome.configuration else {
            for diagnostic in outcome.diagnostics { printError(diagnostic.description) }
            throw ExitCode(1)
        }
        let runtime = try NodeRuntime(configuration: configuration, logger: Logger(label: "aimesh.demo"))
        let server = Task { try await runtime.run(handleSignals: false) }
        let port = try await runtime.waitUntilListening()
        let base = "http://127.0.0.1:\(port)"
        print("aimesh demo: node 'demo-node' on \(base), data in \(directory)\n")

        let client = CurlClient()
        defer { client.shutdown() }
        func chat(_ model: String, _ prompt: String, stream: Bool = false, headers: [(name: String, value: String)] = []) async throws {
            let body: JSON = ["model": .string(model), "messages": [["role": "user", "content": .string(prompt)]], "stream": .bool(stream)]
            print("→ \(model)\(stream ? " (streaming)" : ""): \(prompt)")
            let response = try await client.start(.post(base + "/v1/chat/completions", json: body.bytes, headers: headers))
            if stream {
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

        do {
            try await chat("llama-3.1-8b", "What is a mesh?")
            try await chat("claude-sonnet", "Translate 'mesh' to French.")
            try await chat("gemini-flash", "Name three prime numbers.", stream: true)
            try await chat("llama-3.1-8b-cf", "Say hi from the edge.")
            print("Failover: the local GPU server now answers 503; the same request moves to the next route.")
            local.enqueue(.status(503), times: 1)
            try await chat("llama-3.1-8b", "Are you still there?")
            print("Per-request override: latency_optimized picks the fastest measured route.")
            try await chat("llama-3.1-8b", "Quick one.", headers: [("x-aiproxy-strategy", "latency_optimized")])
            try await chat("no-such-model", "Hello?")

            let status = try JSONParser.parse(try await client.send(OutboundRequest(url: base + "/aiproxy/mesh/status")).1)
            print("Node status (GET /aiproxy/mesh/status):")
            var rows: [[String]] = [["PROVIDER", "TYPE", "STATUS", "MODELS"]]
            for member in status["providers"]?.objectValue ?? [:] {
                rows.append([member.key, member.value["type"]?.stringValue ?? "-", member.value["status"]?.stringValue ?? "-",
                             member.value["models"]?.arrayValue?.compactMap(\.stringValue).joined(separator: ", ") ?? ""])
            }
            print(Table.render(rows))
            let routes = try JSONParser.parse(try await client.send(OutboundRequest(url: base + "/aiproxy/routes")).1)
            print("\nRoutes as this node has measured them (GET /aiproxy/routes):")
            var routeRows: [[String]] = [["ROUTE", "BREAKER", "LATENCY", "OK", "FAILED"]]
            for route in routes["routes"]?.arrayValue ?? [] {
                routeRows.append([route["route"]?.stringValue ?? "?", route["breaker"]?.stringValue ?? "?",
                                  route["latency_ms"]?.doubleValue.map { "\(Int($0.rounded())) ms" } ?? "-",
                                  String(route["successes"]?.intValue ?? 0), String(route["failures"]?.intValue ?? 0)])
            }
            print(Table.render(routeRows))
        } catch {
            printError("demo failed: \(error)")
        }
        await runtime.shutdown()
        _ = try? await server.value
        if let ledger = runtime.ledger {
            print("\nLedger: \(ledger.committedSequence) requests recorded in \(ledger.path)")
        }
        for mock in [local, groq, anthropic, gemini, workers] { await mock.shutdown() }
    }
}
