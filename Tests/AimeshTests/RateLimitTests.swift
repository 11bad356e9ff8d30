@testable import Gateway
import Ledger
import Logging
import MeshCore
import NIOPosix
import NodeConfig
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

@Suite struct BudgetGateTests {
    static func gate() -> BudgetGate {
        var settings = BudgetSection()
        settings.enabled = true
        settings.dailyLimit = 10
        settings.alerts = [.init(thresholdPercent: 80, action: .log), .init(thresholdPercent: 95, action: .disablePaidProviders)]
        var logger = Logger(label: "t")
        logger.logLevel = .critical
        return BudgetGate(settings: settings, logger: logger, nowMillis: 1_795_400_000_000)
    }

    @Test func at95Percent_paidRoutesStop_freeOnesContinue() {
        let gate = Self.gate()
        let now: Int64 = 1_795_400_000_000
        gate.add(cost: 9.4, nowMillis: now)
        #expect(gate.status(nowMillis: now).paidAllowed, "94 %: still allowed (the 80 % alert only logs)")
        gate.add(cost: 0.2, nowMillis: now)
        let status = gate.status(nowMillis: now)
        #expect(!status.paidAllowed && status.reason?.contains("95") == true, "96 %: \(String(describing: status.reason))")
        // The hard limit still binds reservations: $9.60 spent, $0.50 more would pass $10.
        #expect(!gate.reserve(requestID: "r", maxCost: 0.5, nowMillis: now))
        #expect(gate.reserve(requestID: "r", maxCost: 0.3, nowMillis: now))
        // A new UTC day starts from zero.
        #expect(gate.status(nowMillis: now + 86_400_000).paidAllowed)
    }

    @Test func reservations_holdMoneyUntilSettled() {
        let gate = Self.gate()
        let now: Int64 = 1_795_400_000_000
        #expect(gate.reserve(requestID: "a", maxCost: 6, nowMillis: now))
        #expect(!gate.reserve(requestID: "b", maxCost: 6, nowMillis: now), "6 + 6 would pass the $10 day")
        gate.settle(requestID: "a", cost: 1, nowMillis: now)
        #expect(gate.reserved == 0)
        #expect(gate.reserve(requestID: "b", maxCost: 6, nowMillis: now), "the real cost was 1")
        gate.release(requestID: "b")
        #expect(gate.reserved == 0)
    }

    @Test func keyBudgets_duringASplit_keepToTheirShare() {
        let budgets = KeyBudgets()
        // $10 a day, $2 spent elsewhere before the split, 4 nodes: this node may add $2 = (10 − 2) / 4.
        var served = 0
        for i in 0..<20 {
            if budgets.reserve(requestID: "r\(i)", key: "k", maxCost: 0.5, budget: 10, elsewhere: 2, day: 1, unreachable: true, nodes: 4) {
                budgets.settle(requestID: "r\(i)", key: "k", cost: 0.5, day: 1)
                served += 1
            }
        }
        #expect(served == 4 && budgets.localSpend(key: "k", day: 1) == 2)
        // Everyone reachable again: the whole remaining budget is usable.
        #expect(budgets.reserve(requestID: "x", key: "k", maxCost: 0.5, budget: 10, elsewhere: 2, day: 1))
    }
}

@Suite(.timeLimit(.minutes(1)))
struct RateLimitTests {
    @Test func usageReport_groupsTheLedger() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let node = try await TestNode.start(yaml: """
            providers:
              cheap: { type: openai_compatible, base_url: \(mocks[0].baseURL)/v1, api_key: k-1234567, models: [ { name: m1, input_cost_per_1m: 1, output_cost_per_1m: 1 } ] }
              free:  { type: local, base_url: \(mocks[1].baseURL)/v1, models: [ { name: m2 } ] }
            """, name: "usage")
            defer { Task { await node.stop() } }
            for _ in 0..<3 { _ = try await node.post("/v1/chat/completions", chatBody("m1")) }
            for _ in 0..<2 { _ = try await node.post("/v1/chat/completions", chatBody("m2")) }
            _ = try await node.post("/v1/chat/completions", chatBody("nope"))
            await node.gateway.ledger?.flush()
            let usage = try await node.get("/aiproxy/usage?group_by=model&since=1h")
            #expect(usage.status == 200, "\(usage.text)")
            let rows = usage.json["rows"]?.arrayValue ?? []
            let m1 = try #require(rows.first { $0["group"]?.stringValue == "m1" })
            #expect(m1["requests"]?.intValue == 3 && (m1["cost"]?.doubleValue ?? 0) > 0)
            #expect(rows.first { $0["group"]?.stringValue == "m2" }?["cost"]?.doubleValue == 0)
            #expect(rows.first { $0["group"]?.stringValue == "nope" }?["errors"]?.intValue == 1)
            #expect(usage.json["total"]?["requests"]?.intValue == 6)
            #expect(try await node.get("/aiproxy/usage?group_by=colour").status == 400)
            #expect(try await node.get("/aiproxy/usage?since=yesterday-ish").status == 400)
        }
    }

    /// On an event loop the gateway wakes the ledger writer only after the current job (so after the response
    /// is written); the entries must still reach the disk by themselves, with nobody flushing or hurrying.
    @Test func ledgerWakeAfterTheResponse_stillCommits() async throws {
        let node = try await TestNode.start(yaml: "providers: {}", name: "ledger-wake")
        defer { Task { await node.stop() } }
        let gateway = node.gateway
        let ledger = try #require(gateway.ledger)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        for round in 1...3 {
            // One at a time: each finds the writer idle again (after the first), so each needs its own wake-up.
            let sequence = try await loop.submit {
                #expect(MultiThreadedEventLoopGroup.currentEventLoop != nil)
                return gateway.record(in: ledger, LedgerEntry(requestID: "wake-\(round)", timestampMillis: 0, model: "m", node: "n"))
            }.get()
            await ledger.waitUntilCommitted(sequence, hurry: false)
        }
        #expect(ledger.committedSequence >= 3)
    }

    @Test func since_acceptsMillisDatesAndSpans() {
        let now: Int64 = 1_795_400_000_000
        #expect(Gateway.parseSince("1700000000000", now: now) == 1_700_000_000_000)
        #expect(Gateway.parseSince("24h", now: now) == now - 86_400_000)
        #expect(Gateway.parseSince("7d", now: now) == now - 7 * 86_400_000)
        #expect(Gateway.parseSince("1970-01-02", now: now) == 86_400_000)
        #expect(Gateway.parseSince("2026-11-23", now: now) == 1_795_392_000_000)
        #expect(Gateway.parseSince("soon", now: now) == nil)
    }

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
            // A query string does not take a request out of the limits (the path is read without it).
            let byIP = try await node.post("/v1/chat/completions?via=query", chatBody("m"), headers: big)
            #expect(byIP.status == 429 && byIP.text.contains("127.0.0.1"), "\(byIP.text)")
            #expect(mocks[0].requestCount == 6, "refused requests never reach the upstream")
            #expect(try await node.get("/health").status == 200, "health is not limited")
        }
    }
}
