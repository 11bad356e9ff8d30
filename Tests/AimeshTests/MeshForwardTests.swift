import CurlHTTP
import Foundation
import Ledger
import MeshCore
import MeshState
import MockUpstream
import Sodium
import Synchronization
import Testing

/// Requests served across the mesh: whole nodes in this process, gossip and HTTP over 127.0.0.1.
@Suite(.timeLimit(.minutes(1)), .serialized)
struct MeshForwardTests {
    static let fastMesh = "probe_interval: 200ms, probe_timeout: 80ms, gossip_interval: 50ms, push_pull_interval: 2s"

    static func meshNode(_ name: String, providers: String = "", seed: Int? = nil, extraMesh: String = "") async throws -> TestNode {
        let peers = seed.map { ", peers: [\"127.0.0.1:\($0)\"]" } ?? ""
        let node = try await TestNode.start(yaml: providers, name: name,
                                            nodeExtra: "mesh: { enabled: true, listen_addr: \"127.0.0.1:0\"\(peers), \(fastMesh)\(extraMesh) }")
        return node
    }

    static func local(_ mock: MockUpstream, models: [String]) -> String {
        "providers:\n  local: { type: local, base_url: \(mock.baseURL)/v1, models: [ \(models.map { "{ name: \($0) }" }.joined(separator: ", ")) ] }\n"
    }

    /// Waits until every node lists `count` models mesh-wide (records spread, members alive).
    static func settled(_ nodes: [TestNode], models: Set<String>) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            var ok = true
            for node in nodes {
                let ids = Set((try await node.get("/v1/models").json["data"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue })
                if !models.isSubset(of: ids) { ok = false }
            }
            if ok { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    @Test func requestForAModelOnlyAnotherNodeHas_isServedThere_andBilledToTheForwarder() async throws {
        try await withMocks([.init(name: "gpu-c")]) { mocks in
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let b = try await Self.meshNode("b", seed: seed)
            let c = try await Self.meshNode("c", providers: Self.local(mocks[0], models: ["only-on-c"]), seed: seed)
            defer { Task { await a.stop(); await b.stop(); await c.stop() } }
            #expect(try await Self.settled([a, b], models: ["only-on-c"]))

            let reply = try await a.post("/v1/chat/completions", chatBody("only-on-c", "where am I served"))
            #expect(reply.status == 200, "\(reply.text)")
            #expect(reply.json["choices"]?[0]?["message"]?["content"]?.stringValue == "Hello from gpu-c! You said: where am I served")
            let info = reply.json["x_aiproxy"]
            #expect(info?["route"]?.arrayValue?.compactMap(\.stringValue) == ["a", "c", "local"])
            #expect(info?["downstream"]?["node"]?.stringValue == "c")
            #expect(reply.header("x-aiproxy-route") == "a,c,local")
            #expect(info?["tokens"]?["estimated"]?.boolValue == false, "usage comes from the serving node")

            // a's table joins c's record with a's own record of forwarding to it.
            let table = try await a.get("/aiproxy/mesh/table").json
            let cRow = try #require(table["records"]?.arrayValue?.first { $0["name"]?.stringValue == "c" })
            #expect(cRow["observed"]?["forwards"]?["successes"]?.intValue == 1)
            #expect(cRow["observed"]?["forwards"]?["failures"]?.intValue == 0)
            #expect(cRow["observed"]?["status"]?.stringValue == "healthy")
            await a.gateway.ledger?.flush()
            await c.gateway.ledger?.flush()
            let atC = try #require(try LedgerReader(path: c.dataDir + "/ledger.sqlite").recent(limit: 1).first)
            #expect(atC.apiKey == "node:a" && atC.fromNode == "a", "the serving node bills the forwarder")
            let atA = try #require(try LedgerReader(path: a.dataDir + "/ledger.sqlite").recent(limit: 1).first)
            #expect(atA.route == ["a", "c", "local"], "the entry node records the whole path")
        }
    }

    @Test func streamingThroughTwoHops_deliversEveryChunkInOrder() async throws {
        try await withMocks([.init(name: "far", eventInterval: .milliseconds(2)), .init(name: "broken")]) { mocks in
            mocks[1].setSticky(.status(503))
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let b = try await Self.meshNode("b", providers: Self.local(mocks[1], models: ["far-model"]), seed: seed)
            let c = try await Self.meshNode("c", providers: Self.local(mocks[0], models: ["far-model"]), seed: seed)
            defer { Task { await a.stop(); await b.stop(); await c.stop() } }
            #expect(try await eventually { (try await a.get("/v1/models/far-model").json["providers"]?.arrayValue?.count ?? 0) == 2 })
            let words = (1...30).map { "w\($0)" }.joined(separator: " ")
            // Pin a's first hop to b; b's own server fails before the first byte, so b fails over to c: two hops.
            let (head, events) = try await a.stream(chatBody("far-model", words, stream: true), headers: [("x-aiproxy-provider", "b")])
            #expect(head.status == 200)
            #expect(events.last?.dataString == "[DONE]")
            let chunks = events.dropLast().compactMap { try? JSONParser.parse($0.data) }
            let text = chunks.compactMap { $0["choices"]?[0]?["delta"]?["content"]?.stringValue }.joined()
            #expect(text == "Hello from far! You said: \(words)", "every chunk, in order")
            let info = try #require(chunks.last?["x_aiproxy"])
            #expect(info["route"]?.arrayValue?.compactMap(\.stringValue) == ["a", "b", "c", "local"])
        }
    }

    @Test func twoPeersServingAModel_shareTheLoad() async throws {
        try await withMocks([.init(name: "p1"), .init(name: "p2")]) { mocks in
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let p1 = try await Self.meshNode("p1", providers: Self.local(mocks[0], models: ["shared"]), seed: seed)
            let p2 = try await Self.meshNode("p2", providers: Self.local(mocks[1], models: ["shared"]), seed: seed)
            defer { Task { await a.stop(); await p1.stop(); await p2.stop() } }
            #expect(try await Self.settled([a], models: ["shared"]))
            #expect(try await eventually { (try await a.get("/v1/models/shared").json["providers"]?.arrayValue?.count ?? 0) == 2 })
            for strategy in ["least_loaded", "round_robin"] {
                mocks[0].resetCounters()
                mocks[1].resetCounters()
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for i in 0..<40 {
                        group.addTask { try await a.post("/v1/chat/completions", chatBody("shared", "r\(i)"), headers: [("x-aiproxy-strategy", strategy)]).status }
                        if i % 8 == 7 { for _ in 0..<8 { _ = try await group.next() } }
                    }
                    for try await status in group { #expect(status == 200) }
                }
                let counts = [mocks[0].requestCount, mocks[1].requestCount]
                #expect(counts.reduce(0, +) == 40)
                // Stated tolerance: neither peer gets less than a quarter of the requests.
                #expect(counts.allSatisfy { $0 >= 10 }, "\(strategy): \(counts)")
            }
        }
    }

    /// The entry node keeps the peer routes it built while the mesh stays the same; a peer joining or
    /// leaving changes them for the very next request that sees the new table (pinning a provider by
    /// name fails with provider_not_found when no route of that name exists).
    @Test func peerRoutes_followPeersJoiningAndLeaving() async throws {
        try await withMocks([.init(name: "p1"), .init(name: "p2")]) { mocks in
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let p1 = try await Self.meshNode("p1", providers: Self.local(mocks[0], models: ["shared"]), seed: seed)
            defer { Task { await a.stop(); await p1.stop() } }
            #expect(try await Self.settled([a], models: ["shared"]))
            func pinned(_ name: String) async throws -> (status: Int, route: String?) {
                let reply = try await a.post("/v1/chat/completions", chatBody("shared", "to \(name)"), headers: [("x-aiproxy-provider", name)])
                return (reply.status, reply.header("x-aiproxy-route"))
            }
            for _ in 0..<3 { #expect(try await pinned("p1").status == 200) }
            #expect(try await pinned("p2").status == 400, "no p2 yet")
            let p2 = try await Self.meshNode("p2", providers: Self.local(mocks[1], models: ["shared"]), seed: seed)
            #expect(try await eventually { try await pinned("p2").status == 200 }, "p2's route appears once its record arrives")
            #expect(try await pinned("p2").route?.hasSuffix("p2,local") == true)
            #expect(mocks[1].requestCount > 0)
            await p2.stop()
            #expect(try await eventually { try await pinned("p2").status == 400 }, "p2's route goes once it leaves")
            #expect(try await pinned("p1").status == 200)
        }
    }

    @Test func peerStoppedMidLoad_failsNoRequest() async throws {
        try await withMocks([.init(name: "p1", latency: .milliseconds(5)), .init(name: "p2", latency: .milliseconds(5))]) { mocks in
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let p1 = try await Self.meshNode("p1", providers: Self.local(mocks[0], models: ["shared"]), seed: seed)
            let p2 = try await Self.meshNode("p2", providers: Self.local(mocks[1], models: ["shared"]), seed: seed)
            defer { Task { await a.stop(); await p1.stop() } }
            #expect(try await eventually { (try await a.get("/v1/models/shared").json["providers"]?.arrayValue?.count ?? 0) == 2 })
            let failures = Counter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<60 {
                    if i == 20 { group.addTask { await p2.stop() } }
                    group.addTask {
                        let reply = try await a.post("/v1/chat/completions", chatBody("shared", "r\(i)"), headers: [("x-aiproxy-strategy", "round_robin")])
                        if reply.status != 200 { failures.add("failed") }
                    }
                    if i % 4 == 3 { try await group.waitForAll() }
                }
                try await group.waitForAll()
            }
            #expect(failures.value("failed") == 0, "failover covers a peer that goes away")
            #expect(mocks[0].requestCount > 0)
        }
    }

    @Test func forgedReplayedTamperedAndNonMemberForwards_areRefused() async throws {
        try await withMocks([.init(name: "c")]) { mocks in
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let c = try await Self.meshNode("c", providers: Self.local(mocks[0], models: ["m"]), seed: seed)
            defer { Task { await a.stop(); await c.stop() } }
            #expect(try await Self.settled([a], models: ["m"]))
            let aKey = try KeyFile.load(path: a.dataDir + "/node.key", kind: "node")
            let body = chatBody("m", "forward me").bytes
            func post(_ hop: String, _ bytes: [UInt8] = body) async throws -> TestNode.Reply {
                try await c.post("/v1/chat/completions", bytes: bytes, headers: [(HopHeader.name, hop)])
            }
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let good = HopHeader.sign(from: aKey, requestID: "r1", timestampMillis: now, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(good).status == 200, "a member's signed forward is served")
            let replay = try await post(good)
            #expect(replay.status == 403 && replay.json["error"]?["code"]?.stringValue == "forward_refused", "replay: \(replay.text)")
            let tampered = HopHeader.sign(from: aKey, requestID: "r2", timestampMillis: now, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(tampered, chatBody("m", "something else").bytes).status == 403, "digest mismatch")
            let stale = HopHeader.sign(from: aKey, requestID: "r3", timestampMillis: now - 120_000, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(stale).status == 403, "outside the time window")
            let stranger = Ed25519.KeyPair.generate()
            let outsider = HopHeader.sign(from: stranger, requestID: "r4", timestampMillis: now, body: body, visited: [stranger.nodeID]).value
            let refused = try await post(outsider)
            #expect(refused.status == 403 && refused.json["error"]?["message"]?.stringValue?.contains("members") == true)
            var forged = HopHeader.sign(from: aKey, requestID: "r5", timestampMillis: now, body: body, visited: [aKey.nodeID]).value
            forged = String(forged.dropLast(4)) + (forged.hasSuffix("AAAA") ? "BBBB" : "AAAA")
            #expect(try await post(forged).status == 403, "bad signature")
            let cID = try #require(c.runtime.mesh?.nodeID)
            let loop = HopHeader.sign(from: aKey, requestID: "r6", timestampMillis: now, body: body, visited: [cID, aKey.nodeID]).value
            #expect(try await post(loop).status == 403, "already visited")
            #expect(try await post("not base64 !!").status == 403)
            // Version 2 (what nodes send): a MAC under the key a and c share.
            let hopKey = try #require(HopKey.derive(own: SealedBox.KeyPair(converting: aKey), ownID: aKey.nodeID, peer: cID))
            let v2 = HopHeader.authenticate(from: aKey.nodeID, to: cID, key: hopKey, requestID: "r7", timestampMillis: now, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(v2).status == 200, "a version 2 forward is served")
            #expect(try await post(v2).status == 403, "and refused when replayed")
            let elsewhere = HopHeader.authenticate(from: aKey.nodeID, to: stranger.nodeID, key: hopKey, requestID: "r8", timestampMillis: now, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(elsewhere).status == 403, "addressed to another node")
            let strangerKey = try #require(HopKey.derive(own: SealedBox.KeyPair(converting: stranger), ownID: stranger.nodeID, peer: cID))
            let wrongKey = HopHeader.authenticate(from: aKey.nodeID, to: cID, key: strangerKey, requestID: "r9", timestampMillis: now, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(wrongKey).status == 403, "a MAC a did not make")
            // A member's header stamped at the far end of time is stale, not an overflow (it crashed the node).
            let ancient = HopHeader.authenticate(from: aKey.nodeID, to: cID, key: hopKey, requestID: "r10", timestampMillis: .min, body: body, visited: [aKey.nodeID]).value
            #expect(try await post(ancient).status == 403, "stamped Int64.min")
            #expect(try await c.get("/health").status == 200)
            #expect(mocks[0].requestCount == 2, "only the genuine forwards reached the model")
            let metrics = try await c.get("/metrics").text
            #expect(metrics.contains("hop_replay") && metrics.contains("hop_not_member") && metrics.contains("hop_misdirected"))
        }
    }

    @Test func forwardingLoop_isImpossible() async throws {
        try await withMocks([.init(name: "x"), .init(name: "y"), .init(name: "z")]) { mocks in
            for mock in mocks { mock.setSticky(.status(503)) }
            let a = try await Self.meshNode("a", providers: Self.local(mocks[0], models: ["loop"]))
            let seed = try #require(a.runtime.mesh?.boundPort)
            let b = try await Self.meshNode("b", providers: Self.local(mocks[1], models: ["loop"]), seed: seed)
            let c = try await Self.meshNode("c", providers: Self.local(mocks[2], models: ["loop"]), seed: seed)
            defer { Task { await a.stop(); await b.stop(); await c.stop() } }
            #expect(try await eventually { (try await a.get("/v1/models/loop").json["providers"]?.arrayValue?.count ?? 0) == 3 })
            let reply = try await a.post("/v1/chat/completions", chatBody("loop"), headers: [("x-aiproxy-timeout", "10s")])
            #expect(reply.status == 502, "\(reply.text)")
            // Every node's own upstream was tried a bounded number of times: no request went round.
            let total = mocks.reduce(0) { $0 + $1.requestCount }
            #expect(total <= 12, "upstream calls: \(mocks.map(\.requestCount))")
        }
    }

    @Test func topology_listsEveryNodeAndEdge() async throws {
        try await withMocks([.init(name: "g")]) { mocks in
            let a = try await Self.meshNode("a")
            let seed = try #require(a.runtime.mesh?.boundPort)
            let b = try await Self.meshNode("b", providers: Self.local(mocks[0], models: ["gm"]), seed: seed)
            let c = try await Self.meshNode("c", seed: seed)
            defer { Task { await a.stop(); await b.stop(); await c.stop() } }
            #expect(try await eventually {
                let topology = try await a.get("/aiproxy/mesh/topology").json
                let names = Set((topology["nodes"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue })
                return names == ["a", "b", "c"] && (topology["edges"]?.arrayValue?.count ?? 0) == 2
            })
            let topology = try await a.get("/aiproxy/mesh/topology").json
            let names = Set((topology["nodes"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue })
            #expect(names == ["a", "b", "c"])
            let bNode = try #require(topology["nodes"]?.arrayValue?.first { $0["name"]?.stringValue == "b" })
            #expect(bNode["status"]?.stringValue == "healthy")
            #expect(bNode["models"]?.arrayValue?.contains { $0["name"]?.stringValue == "gm" } == true)
            let edges = topology["edges"]?.arrayValue ?? []
            #expect(edges.allSatisfy { $0["from"]?.stringValue == "a" && $0["rtt_ms"] != nil })
        }
    }

}
