import MeshCore
import Routing
import Testing

@Suite struct TokenBucketTests {
    @Test func spendsTheBurst_thenRefillsAtItsRate() {
        var bucket = TokenBucket(count: 3, per: .seconds(60), now: .zero)  // 1 token / 20 s
        #expect(bucket.take(now: .zero) == nil)
        #expect(bucket.take(now: .zero) == nil)
        #expect(bucket.take(now: .zero) == nil)
        let wait = bucket.take(now: .zero)
        #expect(wait == .seconds(20), "\(String(describing: wait))")
        #expect(bucket.take(now: .seconds(10)) == .seconds(10))
        #expect(bucket.take(now: .seconds(20)) == nil, "refilled")
        #expect(bucket.take(now: .seconds(20)) != nil)
    }

    @Test func neverExceedsCapacity_andChargesCanGoNegative() {
        var bucket = TokenBucket(capacity: 10, refillPerSecond: 1, now: .zero)
        bucket.charge(25, now: .zero)
        #expect(bucket.tokens == -15)
        #expect(bucket.wait(now: .zero) == .seconds(16))
        #expect(bucket.wait(now: .seconds(100)) == .zero)
        #expect(bucket.tokens == 10, "capped at capacity")
    }
}

@Suite(.timeLimit(.minutes(1)))
struct RateLimitTests {
    @Test func perKeyAndPerIPLimits_give429WithRetryAfter() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              only: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            security:
              auth: { enabled: true, api_keys: [ { key: k-small-123, name: small, rate_limit: 3 }, { key: k-big-12345, name: big, rate_limit: 100 } ] }
              rate_limiting: { enabled: true, default_limit: 6, by_ip: true, by_api_key: true }
            """, name: "limits")
            defer { Task { await node.stop() } }
            let small = [("authorization", "Bearer k-small-123")], big = [("authorization", "Bearer k-big-12345")]
            for _ in 0..<3 { #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: small).status == 200) }
            let limited = try await node.post("/v1/chat/completions", chatBody("m"), headers: small)
            #expect(limited.status == 429, "\(limited.text)")
            #expect(limited.json["error"]?["code"]?.stringValue == "rate_limited")
            #expect(limited.json["error"]?["message"]?.stringValue?.contains("small") == true)
            let retry = Int(limited.header("retry-after") ?? "") ?? 0
            #expect(retry >= 1 && retry <= 1200, "retry-after \(retry)")
            // Another key still works, until the client IP (6 per hour by default) is spent.
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: big).status == 200)
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: big).status == 200)
            #expect(try await node.post("/v1/chat/completions", chatBody("m"), headers: big).status == 200)
            let byIP = try await node.post("/v1/chat/completions", chatBody("m"), headers: big)
            #expect(byIP.status == 429 && byIP.text.contains("127.0.0.1"), "\(byIP.text)")
            #expect(mocks[0].requestCount == 6, "refused requests never reach the upstream")
            #expect(try await node.get("/health").status == 200, "health is not limited")
        }
    }
}
