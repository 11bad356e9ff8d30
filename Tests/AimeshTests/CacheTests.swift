import Ledger
import MeshCore
import Testing

@Suite(.timeLimit(.minutes(1)))
struct CacheTests {
    @Test func cacheHit_returnsTheSameContent_withoutAnUpstreamCall() async throws {
        try await withMocks([.init(name: "u")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              p: { type: openai_compatible, base_url: \(mocks[0].baseURL)/v1, api_key: k-1234567, models: [ { name: cached, cache_ttl: 10m, input_cost_per_1m: 1, output_cost_per_1m: 1 }, { name: plain } ] }
            """, name: "cache")
            defer { Task { await node.stop() } }
            let first = try await node.post("/v1/chat/completions", chatBody("cached", "same question"))
            #expect(first.status == 200 && first.header("x-aiproxy-cache") == "miss")
            #expect(first.json["x_aiproxy"]?["cache"]?["stored"]?.boolValue == true)
            // Same request with its keys in another order and a different `user`: still the same entry.
            let reordered: JSON = ["messages": [["content": "same question", "role": "user"]], "user": "someone", "model": "cached", "stream": false]
            let second = try await node.post("/v1/chat/completions", reordered)
            #expect(second.status == 200 && second.header("x-aiproxy-cache") == "hit")
            #expect(second.json["choices"] == first.json["choices"], "identical content")
            #expect(second.json["x_aiproxy"]?["cache"]?["hit"]?.boolValue == true)
            #expect(second.json["x_aiproxy"]?["cost"]?.doubleValue == 0)
            #expect(mocks[0].requestCount == 1, "the hit never reached the upstream")
            // Different parameters, another entry; models without cache_ttl are not cached unless asked.
            _ = try await node.post("/v1/chat/completions", chatBody("cached", "same question", extra: ["temperature": .double(0.2)]))
            #expect(mocks[0].requestCount == 2)
            _ = try await node.post("/v1/chat/completions", chatBody("plain", "q"))
            _ = try await node.post("/v1/chat/completions", chatBody("plain", "q"))
            #expect(mocks[0].requestCount == 4)
            _ = try await node.post("/v1/chat/completions", chatBody("plain", "q"), headers: [("x-aiproxy-cache-ttl", "60")])
            let asked = try await node.post("/v1/chat/completions", chatBody("plain", "q"), headers: [("x-aiproxy-cache-ttl", "60")])
            #expect(asked.header("x-aiproxy-cache") == "hit" && mocks[0].requestCount == 5)
            // Streams are never served from the cache.
            let (head, _) = try await node.stream(chatBody("cached", "same question", stream: true))
            #expect(head.header("x-aiproxy-cache") == nil && mocks[0].requestCount == 6)
            #expect(try await node.post("/v1/chat/completions", chatBody("plain", "q"), headers: [("x-aiproxy-cache-ttl", "forever")]).status == 400)
            // Numbers no duration holds are a 400 too (they trapped the node before).
            for huge in ["1e30", "99999999999999999999999"] {
                #expect(try await node.post("/v1/chat/completions", chatBody("plain", "q"), headers: [("x-aiproxy-cache-ttl", huge)]).status == 400)
                #expect(try await node.post("/v1/chat/completions", chatBody("plain", "q"), headers: [("x-aiproxy-timeout", huge)]).status == 400)
            }
            #expect(try await node.get("/health").status == 200)
            await node.gateway.ledger?.flush()
            let rows = try LedgerReader(path: node.dataDir + "/ledger.sqlite").recent(limit: 50)
            #expect(rows.filter { $0.outcome == "cache_hit" }.count == 2)
            #expect(try await node.get("/metrics").text.contains("aimesh_cache_total"))
        }
    }

    @Test func bounds_evictTheOldest_andRefuseOversizedEntries() throws {
        let dir = temporaryDirectory("cache-bounds")
        let cache = try ResponseCache(path: dir + "/cache.sqlite", limits: .init(maxEntryBytes: 100, maxTotalBytes: 250, maxEntries: 3))
        defer { cache.close() }
        func key(_ n: UInt8) -> [UInt8] { [UInt8](repeating: n, count: 32) }
        #expect(!cache.store(key(9), model: "m", body: [UInt8](repeating: 1, count: 101), promptTokens: 1, completionTokens: 1, ttlMillis: 1000, nowMillis: 0))
        for n in 1...3 { cache.store(key(UInt8(n)), model: "m", body: [UInt8](repeating: UInt8(n), count: 80), promptTokens: 1, completionTokens: 1, ttlMillis: 10_000, nowMillis: Int64(n)) }
        #expect(cache.stats.entries == 3 && cache.stats.bytes == 240)
        cache.store(key(4), model: "m", body: [UInt8](repeating: 4, count: 80), promptTokens: 1, completionTokens: 1, ttlMillis: 10_000, nowMillis: 4)
        #expect(cache.stats.entries == 3, "count bound")
        #expect(cache.lookup(key(1), nowMillis: 5) == nil, "the oldest went first")
        #expect(cache.lookup(key(4), nowMillis: 5)?.body.first == 4)
        cache.store(key(5), model: "m", body: [UInt8](repeating: 5, count: 100), promptTokens: 1, completionTokens: 1, ttlMillis: 10_000, nowMillis: 6)
        #expect(cache.stats.bytes <= 250, "byte bound")
        #expect(cache.lookup(key(5), nowMillis: 20_000) == nil, "expired")
    }
}
