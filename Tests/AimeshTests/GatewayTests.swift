import CurlHTTP
import Foundation
import Ledger
import MeshCore
import MockUpstream
import Testing

/// End-to-end through a real node: Hummingbird on 127.0.0.1, libcurl to mock upstreams that speak each
/// vendor's wire format, SQLite ledger on disk. Every test bounds its own time.
@Suite(.timeLimit(.minutes(1)))
struct GatewayTests {
    /// One provider of each wire format serving its own model, plus two OpenAI-style routes for one model.
    static func allFormatsYAML(_ mock: MockUpstream) -> String {
        let base = mock.baseURL
        return """
        providers:
          local:
            type: local
            base_url: \(base)/v1
            models:
              - { name: m-openai, upstream_model: up-openai }
              - { name: embed, upstream_model: up-embed, capabilities: [embeddings] }
          anth:
            type: anthropic
            base_url: \(base)/v1
            credentials: { api_key: ak-secret }
            models: [ { name: m-anthropic, upstream_model: claude-x, input_cost_per_1m: 3, output_cost_per_1m: 15 } ]
          gem:
            type: gemini
            base_url: \(base)/v1beta
            credentials: { api_key: gk-secret }
            models:
              - { name: m-gemini, upstream_model: gemini-x, input_cost_per_1m: 0.1, output_cost_per_1m: 0.4 }
              - { name: gembed, upstream_model: text-embedding-004, capabilities: [embeddings] }
          cf:
            type: cloudflare
            base_url: \(base)/client/v4
            credentials: { api_token: cf-secret, account_id: acct1 }
            models:
              - { name: m-workers, upstream_model: "@cf/meta/llama-3.1-8b-instruct", cost_per_1k_tokens: 0.01 }
              - { name: cfembed, upstream_model: "@cf/baai/bge-small-en-v1.5", capabilities: [embeddings] }
        """
    }

    static let formats: [(model: String, upstream: String, provider: String, path: String)] = [
        ("m-openai", "up-openai", "local", "/v1/chat/completions"),
        ("m-anthropic", "claude-x", "anth", "/v1/messages"),
        ("m-gemini", "gemini-x", "gem", "/v1beta/models/gemini-x:generateContent"),
        ("m-workers", "@cf/meta/llama-3.1-8b-instruct", "cf", "/client/v4/accounts/acct1/ai/run/@cf/meta/llama-3.1-8b-instruct"),
    ]

    @Test func everyFormat_answersInOpenAIShape_withProvenance() async throws {
        try await withMocks([.init(name: "up")]) { mocks in
            let node = try await TestNode.start(yaml: Self.allFormatsYAML(mocks[0]))
            defer { Task { await node.stop() } }
            for format in Self.formats {
                let reply = try await node.post("/v1/chat/completions", chatBody(format.model, "ping \(format.model)"))
                #expect(reply.status == 200, "\(format.model): \(reply.text)")
                let json = reply.json
                #expect(json["object"]?.stringValue == "chat.completion")
                // `model` says what actually answered (as OpenRouter and LiteLLM do); x_aiproxy has both.
                #expect(json["model"]?.stringValue == format.upstream)
                #expect(json["x_aiproxy"]?["upstream_model"]?.stringValue == format.upstream)
                let content = json["choices"]?[0]?["message"]?["content"]?.stringValue ?? ""
                #expect(content == "Hello from up! You said: ping \(format.model)", "\(format.model)")
                #expect((json["usage"]?["total_tokens"]?.intValue ?? 0) > 0)
                #expect(json["x_aiproxy"]?["provider"]?.stringValue == format.provider)
                #expect(json["x_aiproxy"]?["node"]?.stringValue == "node")
                #expect(reply.header("x-aiproxy-provider") == format.provider)
                #expect(reply.header("x-aiproxy-request-id") != nil)
                let upstream = try #require(mocks[0].lastRequest)
                #expect(upstream.path.hasPrefix(format.path), "\(format.model) went to \(upstream.path)")
            }
            // Credentials go in the vendor's header, never in a URL.
            let seen = mocks[0].requests
            #expect(seen.contains { $0.header("x-api-key") == "ak-secret" })
            #expect(seen.contains { $0.header("x-goog-api-key") == "gk-secret" })
            #expect(seen.contains { $0.header("authorization") == "Bearer cf-secret" })
            #expect(!seen.contains { $0.path.contains("secret") })
        }
    }

    @Test func everyFormat_streamsChunksThenUsageThenDone() async throws {
        try await withMocks([.init(name: "up")]) { mocks in
            let node = try await TestNode.start(yaml: Self.allFormatsYAML(mocks[0]))
            defer { Task { await node.stop() } }
            for format in Self.formats {
                let (head, events) = try await node.stream(chatBody(format.model, "stream \(format.model) now", stream: true))
                #expect(head.status == 200)
                #expect(head.header("content-type")?.hasPrefix("text/event-stream") == true)
                #expect(head.header("x-aiproxy-provider") == format.provider)
                #expect(events.last?.dataString == "[DONE]", "\(format.model) ends with [DONE]")
                let chunks = events.dropLast().compactMap { try? JSONParser.parse($0.data) }
                #expect(chunks.count >= 3, "\(format.model) streamed \(chunks.count) chunks")
                let text = chunks.compactMap { $0["choices"]?[0]?["delta"]?["content"]?.stringValue }.joined()
                #expect(text == "Hello from up! You said: stream \(format.model) now", "\(format.model)")
                #expect(chunks.allSatisfy { $0["object"]?.stringValue == "chat.completion.chunk" })
                let last = try #require(chunks.last)
                #expect(last["x_aiproxy"]?["provider"]?.stringValue == format.provider)
                #expect((last["x_aiproxy"]?["tokens"]?["completion"]?.intValue ?? 0) > 0, "\(format.model) reports usage")
                // Like OpenAI, a usage chunk only when the client asks for one.
                #expect(!chunks.contains { $0["usage"] != nil && $0["usage"] != .null })
                let (_, withUsage) = try await node.stream(chatBody(format.model, "count me", stream: true, extra: ["stream_options": ["include_usage": true]]))
                let usageChunk = withUsage.compactMap { try? JSONParser.parse($0.data) }.first { $0["usage"]?["completion_tokens"] != nil }
                #expect((usageChunk?["usage"]?["completion_tokens"]?.intValue ?? 0) > 0, "\(format.model) sends usage when asked")
                #expect(usageChunk?["choices"]?.arrayValue?.isEmpty == true, "the usage chunk has no choices, as OpenAI's")
                #expect(chunks.contains { $0["choices"]?[0]?["finish_reason"]?.stringValue == "stop" })
            }
        }
    }

    @Test func embeddings_fromOpenAIGeminiAndWorkersAI() async throws {
        try await withMocks([.init(name: "up")]) { mocks in
            let node = try await TestNode.start(yaml: Self.allFormatsYAML(mocks[0]))
            defer { Task { await node.stop() } }
            for model in ["embed", "gembed", "cfembed"] {
                let reply = try await node.post("/v1/embeddings", ["model": .string(model), "input": ["one", "two", "three"]])
                #expect(reply.status == 200, "\(model): \(reply.text)")
                let data = reply.json["data"]?.arrayValue ?? []
                #expect(data.count == 3, "\(model)")
                #expect(data.first?["object"]?.stringValue == "embedding")
                #expect((data.first?["embedding"]?.arrayValue?.count ?? 0) > 0)
                #expect(data.map { $0["index"]?.intValue } == [0, 1, 2])
            }
            // A chat-only model is not an embeddings model.
            let wrong = try await node.post("/v1/embeddings", ["model": "m-anthropic", "input": "x"])
            #expect(wrong.status == 400, "\(wrong.text)")
            #expect(wrong.json["error"]?["code"]?.stringValue == "no_eligible_route")
            #expect(wrong.json["error"]?["message"]?.stringValue?.contains("lacks capability embeddings") == true)
        }
    }

    // MARK: Failover

    static func twoRoutesYAML(_ a: MockUpstream, _ b: MockUpstream, extra: String = "") -> String {
        """
        providers:
          first:  { type: local, priority: 1, base_url: \(a.baseURL)/v1, models: [ { name: m, upstream_model: m } ] }
          second: { type: openai_compatible, priority: 2, base_url: \(b.baseURL)/v1, api_key: sk-2, models: [ { name: m, upstream_model: m, input_cost_per_1m: 1, output_cost_per_1m: 1 } ] }
        routing:
          strategy: availability
          failover: { enabled: true, max_retries: 3, retry_delay: 1ms, max_retry_delay: 5ms }
        \(extra)
        """
    }

    @Test(arguments: [MockUpstream.Fault.status(503), .status(500), .status(429), .reset, .malformed])
    func failover_movesToTheNextRoute(fault: MockUpstream.Fault) async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].enqueue(fault)
            let reply = try await node.post("/v1/chat/completions", chatBody("m", "fail over"))
            #expect(reply.status == 200, "\(fault): \(reply.text)")
            #expect(reply.json["choices"]?[0]?["message"]?["content"]?.stringValue == "Hello from b! You said: fail over")
            let attempts = reply.json["x_aiproxy"]?["attempts"]?.arrayValue ?? []
            #expect(attempts.count == 2)
            #expect(attempts.first?["route"]?.stringValue == "first")
            #expect(attempts.first?["outcome"]?.stringValue != "ok")
            #expect(attempts.last?["outcome"]?.stringValue == "ok")
            #expect(reply.header("x-aiproxy-attempts") == "2")
            #expect(mocks[0].requestCount == 1 && mocks[1].requestCount == 1)
        }
    }

    @Test func failover_onFirstByteTimeout() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let yaml = Self.twoRoutesYAML(mocks[0], mocks[1]).replacingOccurrences(of: "type: local, priority: 1,", with: "type: local, priority: 1, first_byte_timeout: 200ms,")
            let node = try await TestNode.start(yaml: yaml)
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.delay(.seconds(30)))
            let started = ContinuousClock.now
            let reply = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(reply.status == 200)
            #expect(reply.header("x-aiproxy-provider") == "second")
            #expect(ContinuousClock.now - started < .seconds(10), "did not wait for the slow route")
            let first = reply.json["x_aiproxy"]?["attempts"]?[0]?["outcome"]?.stringValue ?? ""
            #expect(first.contains("timeout"), "first attempt: \(first)")
        }
    }

    @Test func streaming_failsOverBeforeTheFirstByte() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.status(502))
            let (head, events) = try await node.stream(chatBody("m", "x", stream: true))
            #expect(head.status == 200)
            #expect(head.header("x-aiproxy-provider") == "second")
            #expect(events.last?.dataString == "[DONE]")
        }
    }

    /// `failover.attempt_timeout` caps a stream's wait for its first byte too (a black-holed peer
    /// connection once held a stream for 53 s in the chaos partition scenario).
    @Test func attemptTimeout_capsAStreamsWaitForTheFirstByte() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let yaml = Self.twoRoutesYAML(mocks[0], mocks[1]).replacingOccurrences(of: "max_retry_delay: 5ms }", with: "max_retry_delay: 5ms, attempt_timeout: 300ms }")
            let node = try await TestNode.start(yaml: yaml)
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.delay(.seconds(30)))
            let started = ContinuousClock.now
            let (head, events) = try await node.stream(chatBody("m", "x", stream: true))
            #expect(head.status == 200)
            #expect(head.header("x-aiproxy-provider") == "second")
            #expect(events.last?.dataString == "[DONE]")
            #expect(ContinuousClock.now - started < .seconds(10), "did not wait 30 s for the silent route")
        }
    }

    @Test func clientErrors_areNotRetried() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.status(400))
            let reply = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(reply.status == 400, "\(reply.text)")
            #expect(reply.json["error"]?["message"] != nil)
            #expect(mocks[1].requestCount == 0, "a 400 from the upstream is the client's, not a reason to try elsewhere")
        }
    }

    @Test func everyRouteFailing_gives502NamingEachRoute() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].setSticky(.status(500))
            mocks[1].setSticky(.reset)
            let reply = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(reply.status == 502, "\(reply.text)")
            let message = reply.json["error"]?["message"]?.stringValue ?? ""
            #expect(message.contains("first") && message.contains("second"), "\(message)")
            #expect(reply.json["error"]?["code"]?.stringValue == "all_routes_failed")
            #expect(!message.contains("sk-2"), "no secret in errors")
            // max_retries 3 → at most 4 attempts in all, spread over both routes.
            #expect(mocks[0].requestCount + mocks[1].requestCount <= 4)
            #expect(mocks[0].requestCount >= 1 && mocks[1].requestCount >= 1)
        }
    }

    @Test func deadline_stopsRetriesWith504() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].setSticky(.delay(.seconds(30)))
            mocks[1].setSticky(.delay(.seconds(30)))
            let started = ContinuousClock.now
            let reply = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-timeout", "300ms")])
            let took = ContinuousClock.now - started
            #expect(reply.status == 504, "\(reply.text)")
            #expect(reply.json["error"]?["type"]?.stringValue == "timeout")
            #expect(took < .seconds(10), "the deadline bounds the whole request, not the 30 s upstreams: \(took)")
        }
    }

    @Test func breaker_opensSkipsTheRouteAndHalfOpens() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let breaker = "  circuit_breaker: { consecutive_failures: 2, open_duration: 2s }"
            let yaml = Self.twoRoutesYAML(mocks[0], mocks[1]).replacingOccurrences(of: "  failover:", with: "\(breaker)\n  failover:")
            let node = try await TestNode.start(yaml: yaml)
            defer { Task { await node.stop() } }
            mocks[0].setSticky(.status(503))
            for _ in 0..<2 {
                let reply = try await node.post("/v1/chat/completions", chatBody("m"))
                #expect(reply.header("x-aiproxy-provider") == "second")
            }
            #expect(mocks[0].requestCount == 2)
            // Open: the broken route is not tried at all.
            let skipped = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(skipped.header("x-aiproxy-provider") == "second")
            #expect(skipped.json["x_aiproxy"]?["attempts"]?.arrayValue?.count == 1)
            #expect(mocks[0].requestCount == 2, "an open breaker keeps traffic off the route")
            let routes = try await node.get("/aiproxy/routes")
            #expect(routes.text.contains("open"), "\(routes.text)")
            // After the open period one probe goes through; the route has recovered, so it closes.
            mocks[0].setSticky(nil)
            let deadline = ContinuousClock.now + .seconds(12)
            var recovered = false
            while ContinuousClock.now < deadline {
                let reply = try await node.post("/v1/chat/completions", chatBody("m"))
                if reply.header("x-aiproxy-provider") == "first" { recovered = true; break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(recovered, "the half-open probe succeeded and the route is back")
        }
    }

    @Test func breaker_allOpen_gives503CircuitOpen() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            routing:
              circuit_breaker: { consecutive_failures: 1, open_duration: 60s }
              failover: { max_retries: 0 }
            """)
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.status(500))
            let first = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(first.status == 502)
            let second = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(second.status == 503, "\(second.text)")
            #expect(second.json["error"]?["code"]?.stringValue == "circuit_open")
            #expect(mocks[0].requestCount == 1)
        }
    }

    @Test func midStreamCut_endsWithAnExplicitErrorEvent() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.cutAfter(events: 2))
            let (head, events) = try await node.stream(chatBody("m", "one two three four five six", stream: true))
            #expect(head.status == 200)
            #expect(events.count >= 2)
            #expect(events.last?.dataString != "[DONE]", "a cut stream must not look complete")
            let last = try JSONParser.parse(events.last?.data ?? [])
            #expect(last["error"]?["code"]?.stringValue == "stream_interrupted", "\(events.map(\.dataString))")
            #expect(mocks[1].requestCount == 0, "bytes were sent: no failover after the first byte")
            await node.gateway.ledger?.flush()
            let reader = try LedgerReader(path: node.dataDir + "/ledger.sqlite")
            #expect(try reader.recent(limit: 1).first?.outcome == "partial")
        }
    }

    /// `server.read_timeout` limits how long a connection may wait *for a request*; a stream being answered
    /// for longer than that is not cut (the client sends nothing while it reads the answer).
    @Test func streamLongerThanTheReadTimeout_isNotCut() async throws {
        try await withMocks([.init(name: "slow", eventInterval: .milliseconds(150))]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            """, name: "longstream", serverExtra: "read_timeout: 1s")
            defer { Task { await node.stop() } }
            let words = (1...14).map { "w\($0)" }
            let start = ContinuousClock.now
            let (head, events) = try await node.stream(chatBody("m", words.joined(separator: " "), stream: true))
            #expect(head.status == 200)
            #expect(ContinuousClock.now - start > .seconds(1), "the stream outlasted the read timeout")
            #expect(events.last?.isDone == true, "the stream ended with [DONE], not a cut")
            let text = events.compactMap { try? JSONParser.parse($0.data)["choices"]?[0]?["delta"]?["content"]?.stringValue }.joined()
            #expect(words.allSatisfy { text.contains($0) })
        }
    }

    @Test func clientGoingAway_midStream_cancelsTheUpstreamAndIsRecorded() async throws {
        try await withMocks([.init(name: "slow", eventInterval: .milliseconds(40))]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            """, name: "goaway")
            defer { Task { await node.stop() } }
            let words = (1...100).map { "w\($0)" }.joined(separator: " ")
            let response = try await node.client.start(.post(node.base + "/v1/chat/completions", json: chatBody("m", words, stream: true).bytes))
            #expect(try await response.next() != nil, "the stream started")
            response.cancel()
            // The node notices at its next write, stops reading the upstream and records the request.
            #expect(try await eventually {
                await node.gateway.ledger?.flush()
                return try LedgerReader(path: node.dataDir + "/ledger.sqlite").recent(limit: 5).contains { $0.status == 499 && $0.outcome == "client_closed" }
            }, "recorded as closed by the client")
            // 100 words at 40 ms each would take 4 s; the upstream connection was let go long before.
            #expect(try await eventually(.seconds(3)) { mocks[0].activeConnections == 0 }, "the upstream transfer was cancelled")
        }
    }

    // MARK: Bad input

    @Test func badInput_getsOpenAIErrorsWithTheRightStatus() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m }, { name: other } ] }
            """, name: "badinput")
            defer { Task { await node.stop() } }
            let cases: [(String, [UInt8], Int)] = [
                ("not JSON", Array("{\"model\": ".utf8), 400),
                ("not an object", Array("[1,2]".utf8), 400),
                ("no model", chatBody("").bytes, 400),
                ("no messages", JSON.object(["model": "m"]).bytes, 400),
                ("messages not a list", JSON.object(["model": "m", "messages": "hi"]).bytes, 400),
                ("unknown model", chatBody("gpt-17").bytes, 404),
            ]
            for (label, body, status) in cases {
                let reply = try await node.post("/v1/chat/completions", bytes: body)
                #expect(reply.status == status, "\(label): \(reply.status) \(reply.text)")
                let error = reply.json["error"]
                #expect(error?["message"]?.stringValue?.isEmpty == false, "\(label) has a message")
                #expect(error?["type"]?.stringValue != nil, "\(label) has a type")
            }
            let unknown = try await node.post("/v1/chat/completions", chatBody("gpt-17"))
            let message = unknown.json["error"]?["message"]?.stringValue ?? ""
            #expect(message.contains("m") && message.contains("other"), "404 lists what exists: \(message)")
            #expect(unknown.json["error"]?["code"]?.stringValue == "model_not_found")

            let big = chatBody("m", String(repeating: "x", count: 11 * 1024 * 1024))
            let tooLarge = try await node.post("/v1/chat/completions", big)
            #expect(tooLarge.status == 413, "\(tooLarge.text)")
            #expect(tooLarge.json["error"]?["message"] != nil)

            let noRoute = try await node.get("/v1/nothing-here")
            #expect(noRoute.status == 404)
            #expect(noRoute.json["error"]?["message"] != nil)
            #expect(mocks[0].requestCount == 0, "nothing bad reached the upstream")

            // The node is still fine after all of that.
            let ok = try await node.post("/v1/chat/completions", chatBody("m"))
            #expect(ok.status == 200)
        }
    }

    // MARK: Strategies and overrides, end to end

    static func pricedYAML(_ cheap: MockUpstream, _ fast: MockUpstream, _ local: MockUpstream, strategy: String = "cost_optimized") -> String {
        """
        providers:
          cheap: { type: openai_compatible, priority: 3, base_url: \(cheap.baseURL)/v1, api_key: k, models: [ { name: m, input_cost_per_1m: 0.1, output_cost_per_1m: 0.1 } ] }
          fast:  { type: openai_compatible, priority: 2, base_url: \(fast.baseURL)/v1, api_key: k, models: [ { name: m, input_cost_per_1m: 5, output_cost_per_1m: 5 } ] }
          gpu:   { type: local, priority: 1, base_url: \(local.baseURL)/v1, models: [ { name: m } ] }
        routing: { strategy: \(strategy) }
        """
    }

    @Test func overrides_byHeaderAndModelSuffix() async throws {
        try await withMocks([.init(name: "cheap", latency: .milliseconds(80)), .init(name: "fast"), .init(name: "gpu", latency: .milliseconds(160))]) { mocks in
            let node = try await TestNode.start(yaml: Self.pricedYAML(mocks[0], mocks[1], mocks[2]))
            defer { Task { await node.stop() } }
            // cost_optimized: the free local GPU first.
            #expect(try await node.post("/v1/chat/completions", chatBody("m")).header("x-aiproxy-provider") == "gpu")
            // Pinned provider.
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-provider", "fast")]).header("x-aiproxy-provider") == "fast")
            // Priority order.
            let byPriority = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-strategy", "availability")])
            #expect(byPriority.header("x-aiproxy-provider") == "gpu")
            // Warm every route so latency is measured, then :nitro picks the fastest.
            for name in ["cheap", "fast", "gpu"] {
                // Enough samples that one slow first request (a busy machine) does not decide the average.
                for _ in 0..<8 { _ = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-provider", name)]) }
            }
            let nitro = try await node.post("/v1/chat/completions", chatBody("m:nitro"))
            #expect(nitro.header("x-aiproxy-provider") == "fast", "\(nitro.text)")
            #expect(nitro.json["model"]?.stringValue == "m", "the answer names the model that served it, without the suffix")
            // :floor = cheapest; with local-only excluded by max-cost 0 nothing paid may run.
            #expect(try await node.post("/v1/chat/completions", chatBody("m:floor")).header("x-aiproxy-provider") == "gpu")
            let latency = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-strategy", "latency_optimized")])
            #expect(latency.header("x-aiproxy-provider") == "fast")
            // Local only: even when the local route is down, nothing leaves for the cloud.
            mocks[2].setSticky(.status(503))
            let localOnly = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-local-only", "true")])
            #expect(localOnly.status >= 500, "\(localOnly.text)")
            #expect(localOnly.header("x-aiproxy-provider") != "cheap")
            // Max cost: the fast route's worst case (5 $/M × ~1k tokens) is over $0.001, the cheap one's is not.
            let capped = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-max-cost", "0.001"), ("x-aiproxy-strategy", "latency_optimized")])
            #expect(capped.header("x-aiproxy-provider") == "cheap", "\(capped.text)")
            let bad = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-strategy", "fastest-please")])
            #expect(bad.status == 400, "\(bad.text)")
        }
    }

    @Test func roundRobin_spreadsAcrossRoutes() async throws {
        try await withMocks([.init(name: "cheap"), .init(name: "fast"), .init(name: "gpu")]) { mocks in
            let node = try await TestNode.start(yaml: Self.pricedYAML(mocks[0], mocks[1], mocks[2], strategy: "round_robin"))
            defer { Task { await node.stop() } }
            for _ in 0..<9 { _ = try await node.post("/v1/chat/completions", chatBody("m")) }
            #expect(mocks.map(\.requestCount) == [3, 3, 3])
        }
    }

    // MARK: Native API, ledger, metrics, models, auth, budget

    @Test func predict_nativeRequestAndRoutingMetadata() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.status(503))
            let reply = try await node.post("/aiproxy/predict", [
                "model": "m", "input": ["messages": [["role": "user", "content": "native"]]],
                "routing": ["strategy": "availability"],
            ])
            #expect(reply.status == 200, "\(reply.text)")
            let routing = reply.json["metadata"]?["routing"]
            #expect(routing?["strategy_used"]?.stringValue == "availability")
            #expect(routing?["providers_tried"]?.arrayValue?.compactMap(\.stringValue) == ["first", "second"])
            #expect(routing?["failovers"]?.intValue == 1)
            #expect(routing?["reason"]?.stringValue?.isEmpty == false)
            #expect(reply.text.contains("You said: native"))
        }
    }

    @Test func ledger_recordsEveryRequestWithMetadata() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]), name: "ledger")
            defer { Task { await node.stop() } }
            mocks[0].setSticky(.status(500))
            let ok = try await node.post("/v1/chat/completions", chatBody("m", "one two three"), headers: [("x-aiproxy-metadata", #"{"team":"search","run":7}"#)])
            #expect(ok.status == 200)
            _ = try await node.stream(chatBody("m", "streamed", stream: true))
            _ = try await node.post("/v1/chat/completions", chatBody("missing"))
            await node.gateway.ledger?.flush()
            let reader = try LedgerReader(path: node.dataDir + "/ledger.sqlite")
            let rows = try reader.recent(limit: 10)
            #expect(rows.count == 3)
            let first = try #require(try reader.entry(requestID: ok.header("x-aiproxy-request-id") ?? ""))
            #expect(first.model == "m")
            #expect(first.provider == "second")
            #expect(first.node == "ledger")
            #expect(first.status == 200)
            #expect(first.attempts == 2)
            #expect(first.promptTokens > 0 && first.completionTokens > 0)
            #expect(first.cost > 0, "second is priced")
            #expect(first.metadata?.contains("search") == true)
            #expect(!first.stream)
            #expect(rows.contains { $0.stream && $0.status == 200 })
            #expect(rows.contains { $0.status == 404 })
            #expect(try reader.integrityCheck() == "ok")
            let bad = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-metadata", "not json")])
            #expect(bad.status == 400, "bad metadata is refused: \(bad.text)")
        }
    }

    @Test func metrics_areValidPrometheusText() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            mocks[0].enqueue(.status(503))
            _ = try await node.post("/v1/chat/completions", chatBody("m"))
            _ = try await node.stream(chatBody("m", stream: true))
            let reply = try await node.get("/metrics")
            #expect(reply.status == 200)
            #expect(reply.header("content-type")?.contains("text/plain") == true)
            let families = try PrometheusText.parse(reply.text)
            for name in ["aimesh_requests_total", "aimesh_route_attempts_total", "aimesh_request_duration_seconds", "aimesh_gateway_overhead_seconds",
                         "aimesh_tokens_total", "aimesh_circuit_state"] {
                #expect(families[name] != nil, "missing \(name) in\n\(reply.text)")
            }
            #expect(families["aimesh_route_attempts_total"]?.contains { $0.labels["outcome"] == "http_503" } == true)
            #expect(families["aimesh_requests_total"]?.reduce(0) { $0 + $1.value } == 2)
        }
    }

    /// When the ledger cannot write (here another connection's trigger refuses every row), requests are still
    /// served, the failed batches show in `/aiproxy/ledger/status` and `/metrics`, and once the ledger can
    /// write again every row goes in: nothing recorded while it failed is lost.
    @Test func aLedgerThatCannotWrite_isVisible_andCatchesUp() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: Self.twoRoutesYAML(mocks[0], mocks[1]))
            defer { Task { await node.stop() } }
            let path = try #require(try await node.get("/aiproxy/ledger/status").json["path"]?.stringValue)
            let other = try SQLiteDatabase(path: path)
            try other.execute("CREATE TRIGGER refuse BEFORE INSERT ON requests BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
            for _ in 0..<3 { #expect(try await node.post("/v1/chat/completions", chatBody("m")).status == 200) }
            var status: JSON = .null
            let refused = try await eventually {
                status = try await node.get("/aiproxy/ledger/status").json
                return (status["failed_writes"]?.intValue ?? 0) >= 1
            }
            #expect(refused, "\(status)")
            #expect(status["committed_sequence"]?.intValue == 0)
            let metrics = try PrometheusText.parse(try await node.get("/metrics").text)
            #expect((metrics["aimesh_ledger_failed_writes"]?.first?.value ?? 0) >= 1)
            try other.execute("DROP TRIGGER refuse")
            other.close()
            let caughtUp = try await eventually {
                status = try await node.get("/aiproxy/ledger/status").json
                return (status["committed_sequence"]?.intValue ?? 0) >= 3
            }
            #expect(caughtUp && status["committed_sequence"]?.intValue == 3, "\(status)")
            #expect(status["pending_rows"]?.intValue == 0)
        }
    }

    @Test func models_listEveryRouteWithPrices() async throws {
        try await withMocks([.init(name: "up")]) { mocks in
            let node = try await TestNode.start(yaml: Self.allFormatsYAML(mocks[0]))
            defer { Task { await node.stop() } }
            let reply = try await node.get("/v1/models")
            #expect(reply.status == 200)
            #expect(reply.json["object"]?.stringValue == "list")
            let ids = (reply.json["data"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
            #expect(Set(ids) == ["m-openai", "embed", "m-anthropic", "m-gemini", "gembed", "m-workers", "cfembed"])
            let one = try await node.get("/v1/models/m-anthropic")
            #expect(one.status == 200)
            #expect(one.text.contains("anth"))
            #expect(!one.text.contains("ak-secret"), "no credential in any listing")
            #expect(try await node.get("/v1/models/nope").status == 404)
            let status = try await node.get("/aiproxy/mesh/status")
            #expect(status.status == 200)
            #expect(!status.text.contains("secret"))
            #expect(try await node.get("/health").status == 200)
        }
    }

    @Test func auth_requiresAKeyAndRecordsItsName() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            security:
              auth: { enabled: true, api_keys: [ { key: "${TEAM_KEY}", name: team-a } ] }
            """, environment: ["TEAM_KEY": "sk-team-a-123"], name: "auth")
            defer { Task { await node.stop() } }
            #expect(try await node.post("/v1/chat/completions", chatBody("m")).status == 401)
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: [("authorization", "Bearer wrong")]).status == 401)
            let ok = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("authorization", "Bearer sk-team-a-123")])
            #expect(ok.status == 200)
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-api-key", "sk-team-a-123")]).status == 200)
            #expect(try await node.get("/health").status == 200, "health stays open")
            await node.gateway.ledger?.flush()
            let reader = try LedgerReader(path: node.dataDir + "/ledger.sqlite")
            let row = try #require(try reader.entry(requestID: ok.header("x-aiproxy-request-id") ?? ""))
            #expect(row.apiKey == "team-a")
        }
    }

    /// The chat paths are compared whole before the router's trie (`ExactPathResponder`): they must answer
    /// exactly as the router did, middleware included, and every other spelling still goes to the router.
    @Test func chatPaths_foundWhole_answerAsTheRouterDoes() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            security:
              auth: { enabled: true, api_keys: [ { key: "sk-exact-123", name: exact } ] }
            """, name: "exactpaths")
            defer { Task { await node.stop() } }
            let key = [(name: "authorization", value: "Bearer sk-exact-123")]
            // Found whole: the middleware (here the key check) still runs first.
            #expect(try await node.post("/v1/chat/completions", chatBody("m")).status == 401)
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: key).status == 200)
            #expect(try await node.post("/chat/completions", chatBody("m"), headers: key).status == 200)
            // Through the router: a query string, and a method the path does not take.
            #expect(try await node.post("/v1/chat/completions?trace=1", chatBody("m")).status == 401)
            #expect(try await node.post("/v1/chat/completions?trace=1", chatBody("m"), headers: key).status == 200)
            let get = try await node.get("/v1/chat/completions", headers: key)
            #expect(get.status == 404 && get.json["error"]?["message"] != nil, "\(get.status) \(get.text)")
            #expect(mocks[0].requestCount == 3)
        }
        try await withMocks([.init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            """, name: "exactoff", serverExtra: "endpoints: [ { path: /v1/chat/completions, enabled: false } ]")
            defer { Task { await node.stop() } }
            #expect(try await node.post("/v1/chat/completions", chatBody("m")).status == 404, "a disabled path is not found whole either")
            #expect(try await node.post("/chat/completions", chatBody("m")).status == 404)
            #expect(mocks[0].requestCount == 0)
        }
    }

    @Test func concurrentRequestsAgainstANearlySpentBudget_neverOverspend() async throws {
        try await withMocks([.init(name: "paid", latency: .milliseconds(30)), .init(name: "free")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              paid: { type: openai_compatible, priority: 1, base_url: \(mocks[0].baseURL)/v1, api_key: k-1234567, models: [ { name: m, cost_per_1k_tokens: 1 } ] }
              free: { type: local, priority: 2, base_url: \(mocks[1].baseURL)/v1, models: [ { name: m } ] }
            routing: { strategy: availability }
            budget: { enabled: true, daily_limit: 0.05 }
            """, name: "reserve")
            defer { Task { await node.stop() } }
            try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<24 {
                    group.addTask { try await node.post("/v1/chat/completions", chatBody("m", "request \(i)", extra: ["max_tokens": 20])).status }
                }
                for try await status in group { #expect(status == 200, "free routes take over, nobody fails") }
            }
            await node.gateway.ledger?.flush()
            let rows = try LedgerReader(path: node.dataDir + "/ledger.sqlite").recent(limit: 100)
            let spent = rows.reduce(0) { $0 + $1.cost }
            // Each paid request holds its maximum cost ($0.001 × (prompt + max_tokens)) until it settles,
            // so what is spent never passes the limit (the upstream honours max_tokens here).
            #expect(spent <= 0.05 + 1e-9, "spent \(spent)")
            #expect(mocks[0].requestCount >= 1 && mocks[1].requestCount >= 1)
            #expect(node.gateway.budget.reserved < 1e-9, "every reservation was settled")
        }
    }

    @Test func budget_disablesPaidProvidersAtItsThreshold() async throws {
        try await withMocks([.init(name: "paid"), .init(name: "free")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              paid: { type: openai_compatible, priority: 1, base_url: \(mocks[0].baseURL)/v1, api_key: k, models: [ { name: m, cost_per_1k_tokens: 10 } ] }
              free: { type: local, priority: 2, base_url: \(mocks[1].baseURL)/v1, models: [ { name: m } ] }
            routing: { strategy: availability }
            budget:
              enabled: true
              daily_limit: 0.2
              alerts: [ { threshold: 40, action: disable_paid_providers } ]
            """, name: "budget")
            defer { Task { await node.stop() } }
            // $0.01 a token: at most (2 + 10) × 0.01 = $0.12 fits the $0.20 day; it spends 9 tokens = $0.09 = 45 %.
            let first = try await node.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 10]))
            #expect(first.header("x-aiproxy-provider") == "paid", "\(first.text)")
            let second = try await node.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 10]))
            #expect(second.header("x-aiproxy-provider") == "free", "over the alert threshold only free routes run")
            let pinned = try await node.post("/v1/chat/completions", chatBody("m"), headers: [("x-aiproxy-provider", "paid")])
            #expect(pinned.status == 429, "\(pinned.text)")
            #expect(pinned.json["error"]?["code"]?.stringValue == "budget_exceeded")
            #expect(mocks[0].requestCount == 1)
            let status = try await node.get("/aiproxy/ledger/status")
            #expect(status.json["budget"]?["paid_allowed"]?.boolValue == false)
        }
    }
}

/// A small parser for the Prometheus text exposition format: every sample line must parse, every
/// family must be declared by a TYPE line before its samples.
enum PrometheusText {
    struct Sample { var labels: [String: String]; var value: Double }

    struct ParseError: Error, CustomStringConvertible { let description: String }

    static func parse(_ text: String) throws -> [String: [Sample]] {
        var types: [String: String] = [:]
        var families: [String: [Sample]] = [:]
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            let line = String(raw)
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(String(parts[3])) else {
                    throw ParseError(description: "line \(number + 1): bad TYPE: \(line)")
                }
                types[String(parts[2])] = String(parts[3])
                continue
            }
            if line.hasPrefix("#") { continue }
            var name = ""
            var labels: [String: String] = [:]
            var rest = Substring(line)
            if let brace = rest.firstIndex(of: "{") {
                name = String(rest[..<brace])
                guard let close = rest.lastIndex(of: "}") else { throw ParseError(description: "line \(number + 1): unclosed labels") }
                let inner = rest[rest.index(after: brace)..<close]
                for pair in splitLabels(inner) {
                    guard let eq = pair.firstIndex(of: "="), pair[pair.index(after: eq)...].hasPrefix("\""), pair.hasSuffix("\"") else {
                        throw ParseError(description: "line \(number + 1): bad label \(pair)")
                    }
                    labels[String(pair[..<eq])] = String(pair[pair.index(eq, offsetBy: 2)..<pair.index(before: pair.endIndex)])
                }
                rest = rest[rest.index(after: close)...]
            } else {
                guard let space = rest.firstIndex(of: " ") else { throw ParseError(description: "line \(number + 1): no value") }
                name = String(rest[..<space])
                rest = rest[space...]
            }
            guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }), !name.isEmpty else {
                throw ParseError(description: "line \(number + 1): bad metric name \(name)")
            }
            let fields = rest.split(separator: " ")
            guard let valueText = fields.first, let value = Double(valueText) ?? (valueText == "+Inf" ? .infinity : nil) else {
                throw ParseError(description: "line \(number + 1): bad value in \(line)")
            }
            var family = name
            for suffix in ["_bucket", "_sum", "_count"] where types[family] == nil && family.hasSuffix(suffix) {
                family = String(family.dropLast(suffix.count))
            }
            guard types[family] != nil else { throw ParseError(description: "line \(number + 1): \(name) has no TYPE line") }
            families[family, default: []].append(Sample(labels: labels, value: value))
            if family == name { continue }
            families[name, default: []].append(Sample(labels: labels, value: value))
        }
        return families.filter { key, _ in types[key] != nil }
    }

    private static func splitLabels(_ text: Substring) -> [Substring] {
        var parts: [Substring] = []
        var start = text.startIndex
        var inQuotes = false
        var index = text.startIndex
        while index < text.endIndex {
            let c = text[index]
            if c == "\"" && (index == text.startIndex || text[text.index(before: index)] != "\\") { inQuotes.toggle() }
            if c == "," && !inQuotes {
                parts.append(text[start..<index])
                start = text.index(after: index)
            }
            index = text.index(after: index)
        }
        if start < text.endIndex { parts.append(text[start...]) }
        return parts
    }
}
