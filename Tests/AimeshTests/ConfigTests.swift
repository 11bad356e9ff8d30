import Foundation
import MeshCore
import NodeConfig
import Testing

@Suite struct ConfigTests {
    static let issueExample = """
        node: { id: gpu-node-01, region: eu-west, type: gpu, data_dir: ./data/gpu-node-01 }
        server: { listen_addr: "127.0.0.1:8080" }
        providers:
          local:                                   # an OpenAI-style server on this machine
            type: local
            base_url: http://127.0.0.1:11434/v1
            priority: 1
            models: [ { name: llama-3.1-8b, upstream_model: "llama3.1:8b" } ]
          groq:
            type: openai_compatible
            base_url: https://api.groq.com/openai/v1
            credentials: { api_key: "${GROQ_API_KEY}" }
            models:
              - { name: llama-3.1-8b, upstream_model: llama-3.1-8b-instant, input_cost_per_1m: 0.05, output_cost_per_1m: 0.08 }
          anthropic:
            type: anthropic                        # base_url defaults to the vendor's
            credentials: { api_key: "${ANTHROPIC_API_KEY}" }
            models: [ { name: claude-sonnet, upstream_model: claude-sonnet-4-5, input_cost_per_1m: 3, output_cost_per_1m: 15 } ]
        routing:
          strategy: cost_optimized
          failover: { enabled: true, max_retries: 3, retry_delay: 200ms }
        """

    /// A config the fuzzer found: nested aliases used as a mapping key kept the YAML library busy for good.
    /// Aliases are refused before it sees them, with the line; `*` in quotes, comments and text is fine.
    @Test func yamlAliases_areRefusedWithTheirLine_beforeTheYAMLLibraryExpandsThem() {
        var laughs = ["node: { id: n }", "x: &a0 [x, x]"]
        for i in 1..<40 { laughs.append("x\(i): &a\(i) [*a\(i - 1), *a\(i - 1)]") }
        laughs.append("boom: { *a39 : 1 }")
        let outcome = ConfigLoader.parse(yaml: laughs.joined(separator: "\n"), file: "laughs.yaml")
        #expect(outcome.configuration == nil)
        #expect(outcome.diagnostics.first?.line == 3 && outcome.diagnostics.first?.message.contains("aliases") == true, "\(outcome.diagnostics)")
        let plain = """
            node: { id: n }   # *not an alias
            security:
              cors: { enabled: true, allowed_origins: ["*", '*.example.com'] }
            providers:
              p:
                type: local
                base_url: "http://127.0.0.1:9/v1"   # don't *worry
                models: [ { name: m, upstream_model: 'it''s *fine' } ]
            """
        let accepted = ConfigLoader.parse(yaml: plain, file: "plain.yaml")
        #expect(!accepted.diagnostics.contains { $0.message.contains("aliases") }, "\(accepted.diagnostics)")
        #expect(YAMLAliasProbe.line("a: |\n  *bold* text\n  more *text\nb: 1\n") == nil, "a block scalar is text")
        #expect(YAMLAliasProbe.line("a: |\n  *bold*\nb: *ref\n") == 3, "the block ends where the indentation does")
        #expect(YAMLAliasProbe.line("a: \"multi\n  *line\"\nb: [*x]\n") == 3, "a quoted scalar spans lines")
        #expect(YAMLAliasProbe.line("a: [*]\nb: *\n") == nil, "a lone * is not an alias")
        #expect(YAMLAliasProbe.line("- &anchor value\n- x\n") == nil, "anchors alone are fine")
        // What would hide an alias if the guard read YAML too loosely: a quote inside a plain scalar is text,
        // so is a | that ends a line inside a flow collection; \r is a line break.
        #expect(YAMLAliasProbe.line("a: it 'is\nb: *x\nc: 'd'\n") == 2)
        #expect(YAMLAliasProbe.line("a: [b |\n  *x]\n") == 2)
        #expect(YAMLAliasProbe.line("a: 1\r*x : 2\n") == 2, "a lone CR ends a line, as YAML reads it")
        // A comment ends at any YAML line break: a lone CR, NEL, LS or PS. The fuzzer hid nested complex keys
        // after "#\r" (the guard read the rest of the line as comment, the YAML library as a new line).
        #expect(YAMLAliasProbe.complexKeyLine("a: 1\n  #\r? - ? ? - x\n") == 3)
        #expect(YAMLAliasProbe.complexKeyLine("a: 1 # c\u{85}? - x\n") == 2)
        #expect(YAMLAliasProbe.complexKeyLine("a: 1 # c\u{2028}? - x\n") == 2)
        #expect(YAMLAliasProbe.complexKeyLine("a: 1 # c\u{2029}? - x\n") == 2)
        #expect(YAMLAliasProbe.line("a: 1 # c\r\nb: *x\n") == 2, "CR LF is one line break")
        // Complex keys (the fuzzer's second hang: "? - ? ? - …" nested explicit keys) are refused too.
        #expect(YAMLAliasProbe.complexKeyLine("a: 1\n? - b\n: c\n") == 2)
        #expect(YAMLAliasProbe.complexKeyLine("a:\n  [x, y]: 1\n") == 2)
        #expect(YAMLAliasProbe.complexKeyLine("{ {x: y}: 1 }\n") == 1)
        #expect(YAMLAliasProbe.complexKeyLine("a: \"? not a key\"\nb: [x, y]\nc: {d: e}\nurl: http://h:1/v1?x=1\n") == nil)
        // Blanks may stand between an implicit key and its colon: "[a, b] : c" is a complex key too.
        #expect(YAMLAliasProbe.complexKeyLine("x: 1\n[a, b]  : c\n") == 2)
        #expect(YAMLAliasProbe.complexKeyLine("x: [ {a: b} : c ]\n") == 1)
        #expect(YAMLAliasProbe.complexKeyLine("x: [a, b] # : not a key\nurl: x:[y]:z\n") == nil)
        // A block scalar's text is indented at least as deep as its first line; a line less indented (but
        // deeper than the key) is structure again, as YAML reads it.
        #expect(YAMLAliasProbe.complexKeyLine("a: |\n    text\n  ? - x\n") == 3)
        #expect(YAMLAliasProbe.complexKeyLine("a: |\n    text\n\n    ? - not a key\nb: 1\n") == nil)
        var nested = "a: 1\n"
        for _ in 0..<40 { nested += String(repeating: "? - ", count: 30) + "x\n" }
        let refused = ConfigLoader.parse(yaml: nested, file: "keys.yaml")
        #expect(refused.configuration == nil && refused.diagnostics.first?.message.contains("complex mapping keys") == true)
        var hidden = "node: { id: n }\n"
        for _ in 0..<40 { hidden += "  #\r" + String(repeating: "? - ", count: 30) + "x\n" }
        let alsoRefused = ConfigLoader.parse(yaml: hidden, file: "hidden.yaml")
        #expect(alsoRefused.diagnostics.first?.message.contains("complex mapping keys") == true && alsoRefused.diagnostics.first?.line == 3, "the key is on the line after the comment")
        // Files written with CR LF or lone CR line ends load, with the lines YAML counts.
        let crlf = ConfigLoader.parse(yaml: "node: { id: n }\r\nserver:\r\n  listen_addr: nowhere\r\n", file: "crlf.yaml")
        #expect(crlf.diagnostics.first?.line == 3, "\(crlf.diagnostics)")
        #expect(ConfigLoader.parse(yaml: "node:\r  id: n\r", file: "cr.yaml").configuration?.node.id == "n")
    }

    @Test func issueExample_parsesWithEnvironmentKeys() throws {
        let outcome = ConfigLoader.parse(yaml: Self.issueExample, file: "node.yaml", environment: ["GROQ_API_KEY": "gsk-test", "ANTHROPIC_API_KEY": "sk-ant-test"])
        let config = try #require(outcome.configuration, "\(outcome.diagnostics)")
        #expect(outcome.errors.isEmpty)
        #expect(config.node.id == "gpu-node-01")
        #expect(config.node.type == .gpu)
        #expect(config.server.listenAddr == HostPort(host: "127.0.0.1", port: 8080))
        #expect(config.providers.map(\.name) == ["local", "groq", "anthropic"])
        let local = try #require(config.provider(named: "local"))
        #expect(local.isLocal && local.priority == 1 && local.models[0].upstreamModel == "llama3.1:8b" && local.models[0].price.isFree)
        let groq = try #require(config.provider(named: "groq"))
        #expect(groq.credentials.apiKey?.value == "gsk-test")
        #expect(groq.models[0].price == Price(inputPer1M: 0.05, outputPer1M: 0.08))
        let anthropic = try #require(config.provider(named: "anthropic"))
        #expect(anthropic.baseURL == "https://api.anthropic.com" && anthropic.wireFormat == .anthropic && anthropic.enabled)
        #expect(config.routing.failover.retryDelay == .milliseconds(200) && config.routing.failover.maxRetries == 3)
    }

    @Test func unsetKeyVariable_disablesProviderWithAWarningNamingTheVariable() throws {
        let outcome = ConfigLoader.parse(yaml: Self.issueExample, file: "node.yaml", environment: [:])
        let config = try #require(outcome.configuration)
        #expect(config.provider(named: "groq")?.enabled == false)
        #expect(config.provider(named: "local")?.enabled == true)
        let warning = try #require(outcome.warnings.first { $0.message.contains("GROQ_API_KEY") })
        #expect(warning.line == 9)
        #expect(warning.description.hasPrefix("node.yaml:9: providers.groq:"))
    }

    @Test func secret_neverPrintsItsValue() throws {
        let outcome = ConfigLoader.parse(yaml: Self.issueExample, environment: ["GROQ_API_KEY": "gsk-very-secret"])
        let config = try #require(outcome.configuration)
        #expect(!"\(config.providers)".contains("gsk-very-secret"))
    }

    @Test func standardSpellings_openaiModelAndCostPer1k_areAccepted() throws {
        let yaml = """
            providers:
              cf:
                type: cloudflare
                credentials: { account_id: acc, api_token: tok }
                models:
                  - name: llama
                    cloudflare_model: "@cf/meta/llama-3.1-8b-instruct"
                    capabilities: [text-generation, code-generation]
                    cost_per_1k_tokens: 0.0002
              oa:
                type: openai
                endpoint: https://api.openai.com/v1/
                credentials: { api_key: sk }
                models: [ { name: gpt, openai_model: gpt-4o-mini } ]
            """
        let config = try #require(ConfigLoader.parse(yaml: yaml).configuration)
        let cf = try #require(config.provider(named: "cf"))
        #expect(cf.models[0].upstreamModel == "@cf/meta/llama-3.1-8b-instruct")
        #expect(abs(cf.models[0].price.inputPer1M - 0.2) < 1e-9)
        #expect(cf.models[0].capabilities == ["text-generation", "code-generation"])
        #expect(config.provider(named: "oa")?.baseURL == "https://api.openai.com/v1")
        #expect(config.provider(named: "oa")?.models[0].upstreamModel == "gpt-4o-mini")
    }

    @Test func ioScheduling_isBatchUnlessSetToNormal_andAnUnknownValueNamesItsLine() throws {
        let plain = try #require(ConfigLoader.parse(yaml: "server: { listen_addr: \"127.0.0.1:0\" }\n").configuration)
        #expect(plain.server.batchIOScheduling)
        let normal = try #require(ConfigLoader.parse(yaml: "server:\n  io_scheduling: normal\n").configuration)
        #expect(!normal.server.batchIOScheduling)
        let batch = try #require(ConfigLoader.parse(yaml: "server:\n  io_scheduling: batch\n").configuration)
        #expect(batch.server.batchIOScheduling)
        let bad = ConfigLoader.parse(yaml: "server:\n  io_scheduling: realtime\n", file: "s.yaml")
        #expect(bad.configuration == nil)
        let line = try #require(bad.errors.first).description
        #expect(line.hasPrefix("s.yaml:2: server.io_scheduling:") && line.contains("realtime") && line.contains("batch, normal"), "\(line)")
    }

    @Test func errors_nameFileLineAndField() {
        let yaml = """
            server:
              listen_addr: "not-an-address"
              max_request_size: 10 parsecs
            routing:
              strategy: cheapest-ever
              failover: { max_retires: 3 }
            providers:
              local:
                type: local
                models: [ { name: m } ]
            """
        let outcome = ConfigLoader.parse(yaml: yaml, file: "bad.yaml")
        #expect(outcome.configuration == nil)
        let lines = outcome.errors.map(\.description)
        #expect(lines.contains { $0.hasPrefix("bad.yaml:2: server.listen_addr:") })
        #expect(lines.contains { $0.hasPrefix("bad.yaml:3: server.max_request_size:") })
        #expect(lines.contains { $0.hasPrefix("bad.yaml:5: routing.strategy:") && $0.contains("cheapest-ever") })
        #expect(lines.contains { $0.hasPrefix("bad.yaml:6: routing.failover.max_retires:") && $0.contains("did you mean 'max_retries'") })
        #expect(lines.contains { $0.hasPrefix("bad.yaml:8: providers.local:") && $0.contains("needs base_url") })
    }

    @Test func onnxModelPath_getsAPreciseInstruction() {
        let yaml = """
            providers:
              local:
                type: local
                base_url: http://127.0.0.1:8080/v1
                models:
                  - name: phi
                    path: ./models/phi.onnx
            """
        let outcome = ConfigLoader.parse(yaml: yaml, file: "std.yaml")
        let error = outcome.errors.first
        #expect(error?.line == 7)
        #expect(error?.field == "providers.local.models[0].path")
        #expect(error?.message.contains("run an inference server") == true)
        #expect(error?.message.contains("base_url") == true)
    }

    @Test func yamlSyntaxError_reportsItsLine() {
        let outcome = ConfigLoader.parse(yaml: "node:\n  id: a\n  region: [unclosed\n", file: "s.yaml")
        #expect(outcome.errors.count == 1)
        #expect(outcome.errors[0].description.hasPrefix("s.yaml:"))
        #expect(outcome.errors[0].line >= 3)
    }

    @Test func jsonConfig_isAccepted() throws {
        let json = #"{"node": {"id": "j1"}, "server": {"listen_addr": ":9000"}, "providers": {"l": {"type": "ollama", "models": ["llama3"]}}}"#
        let config = try #require(ConfigLoader.parse(yaml: json).configuration)
        #expect(config.node.id == "j1")
        #expect(config.server.listenAddr == HostPort(host: "0.0.0.0", port: 9000))
        #expect(config.provider(named: "l")?.baseURL == "http://127.0.0.1:11434/v1")
    }

    @Test func variableDefaults_andEscapes_expand() throws {
        let yaml = #"node: { id: "${NODE_ID:-fallback}", region: "$${literal}" }"#
        let config = try #require(ConfigLoader.parse(yaml: yaml).configuration)
        #expect(config.node.id == "fallback")
        #expect(config.node.region == "${literal}")
    }

    @Test func unsetVariableOutsideCredentials_isAnError() {
        let outcome = ConfigLoader.parse(yaml: "node: { region: \"${REGION}\" }", file: "e.yaml")
        #expect(outcome.errors.first?.description == "e.yaml:1: node.region: environment variable REGION is not set")
    }

    @Test func meshSection_andStandardSections_parse() throws {
        let yaml = """
            node:
              id: gpu-node-01
              mesh:
                enabled: true
                listen_addr: "0.0.0.0:7946"
                advertise_addr: "10.0.0.5:7946"
                peers: [ "10.0.0.6:7946", { id: n3, addr: "10.0.0.7:7946", priority: 2 } ]
                trust: { mode: open }
                max_hops: 2
            budget:
              enabled: true
              daily_limit: 10
              monthly_limit: 200
              alerts: [ { threshold: 80, action: log }, { threshold: 95, action: disable_paid_providers } ]
            observability:
              logging: { level: debug, format: json }
              metrics: { enabled: true, prometheus_port: 9090 }
            security:
              auth: { enabled: true, type: api_key, api_keys: [ { key: "sk-local-123456", name: alice, rate_limit: 1000 } ] }
              cors: { enabled: true, allowed_origins: ["*"] }
            """
        let config = try #require(ConfigLoader.parse(yaml: yaml).configuration)
        #expect(config.node.mesh.peers.map(\.address) == ["10.0.0.6:7946", "10.0.0.7:7946"])
        #expect(config.node.mesh.peers[1].id == "n3")
        #expect(config.node.mesh.advertiseAddr == HostPort(host: "10.0.0.5", port: 7946))
        #expect(config.budget.alerts == [.init(thresholdPercent: 80, action: .log), .init(thresholdPercent: 95, action: .disablePaidProviders)])
        #expect(config.observability.logFormat == .json && config.observability.prometheusPort == 9090)
        #expect(config.security.apiKeys.first?.name == "alice" && config.security.apiKeys.first?.requestsPerHour == 1000)
    }

    @Test func exampleConfigsInTheRepository_areValid() throws {
        let directory = #filePath.components(separatedBy: "/Tests/")[0] + "/mesh-configs"
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 4)
        for file in files {
            let outcome = ConfigLoader.check(path: "\(directory)/\(file)", environment: ["OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "GROQ_API_KEY": "x", "GEMINI_API_KEY": "x", "CLOUDFLARE_ACCOUNT_ID": "x", "CLOUDFLARE_API_TOKEN": "x", "OPENROUTER_API_KEY": "x",
                                                                                              "AIMESH_MESH_SECRET": String(repeating: "ab", count: 32)])
            #expect(outcome.errors.isEmpty, "\(file): \(outcome.errors)")
        }
    }
}
