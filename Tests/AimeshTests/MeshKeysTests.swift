import Foundation
@testable import Gateway
import Ledger
import MeshCore
import MeshState
import Sodium
import Testing

/// Mesh-wide API keys: admin-signed records gossiped between whole nodes on 127.0.0.1.
@Suite(.timeLimit(.minutes(1)), .serialized)
struct MeshKeysTests {
    static func node(_ name: String, admin: Ed25519.KeyPair, mock: String, seed: Int? = nil, paid: Bool = false) async throws -> TestNode {
        let peers = seed.map { ", peers: [\"127.0.0.1:\($0)\"]" } ?? ""
        let provider = paid ? "p: { type: openai_compatible, base_url: \(mock)/v1, api_key: k-1234567, models: [ { name: m, cost_per_1k_tokens: 1 } ] }"
                            : "local: { type: local, base_url: \(mock)/v1, models: [ { name: m }, { name: other } ] }"
        let node = try await TestNode.start(yaml: """
        providers:
          \(provider)
        security:
          auth: { enabled: true }
        """, name: name, nodeExtra: "mesh: { enabled: true, listen_addr: \"127.0.0.1:0\"\(peers), trust: { mode: open, admin_public_key: \"\(admin.nodeID.hex)\" }, \(MeshForwardTests.fastMesh) }")
        return node
    }

    /// Node a, and node c joined through it.
    static func pair(admin: Ed25519.KeyPair, mock: String, paid: Bool = false) async throws -> (TestNode, TestNode) {
        let a = try await node("a", admin: admin, mock: mock, paid: paid)
        let seed = try #require(a.runtime.mesh?.boundPort)
        return (a, try await node("c", admin: admin, mock: mock, seed: seed, paid: paid))
    }

    /// A fresh client key and the wall-clock time to issue it at.
    static func newKey() -> (key: String, now: Int64) {
        ("sk-aimesh-" + ByteEncoding.hex(Sodium.randomBytes(24)), Int64(Date().timeIntervalSince1970 * 1000))
    }

    /// Per-minute tests must fit in one wall-clock minute: past its 45th second, wait for the next
    /// (the minute boundary is the event; there is nothing else to wait on).
    /// Two keyed nodes (a, c) early in a minute, with a fresh mesh key `name` (with these per-minute
    /// limits) admitted through a; `body` gets the nodes and the key's authorization header.
    static func withLimitedKey(_ name: String, requestsPerMinute: UInt32 = 0, tokensPerMinute: UInt32 = 0,
                               _ body: (TestNode, TestNode, [(String, String)]) async throws -> Void) async throws {
        try await withMocks([.init(name: "u")]) { mocks in
            let admin = Ed25519.KeyPair.generate()
            let (a, c) = try await Self.pair(admin: admin, mock: mocks[0].baseURL)
            defer { Task { await a.stop(); await c.stop() } }
            try await Self.startOfAMinute()
            let (key, now) = Self.newKey()
            let record = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: name, issuedAtMillis: now, requestsPerMinute: requestsPerMinute,
                                   tokensPerMinute: tokensPerMinute, admin: admin.nodeID).signed(by: admin)
            #expect(try await a.post("/aiproxy/keys", bytes: Array(record.fileText.utf8)).status == 200)
            try await body(a, c, [("authorization", "Bearer \(key)")])
        }
    }

    static func startOfAMinute() async throws {
        let intoMinute = Int64(Date().timeIntervalSince1970 * 1000) % 60_000
        if intoMinute > 45_000 { try await Task.sleep(for: .milliseconds(60_000 - intoMinute + 100)) }
    }

    @Test func keyMadeOnOneNode_worksOnAnother_andRevocationStopsItEverywhere() async throws {
        try await withMocks([.init(name: "u")]) { mocks in
            let admin = Ed25519.KeyPair.generate()
            let (a, c) = try await Self.pair(admin: admin, mock: mocks[0].baseURL)
            defer { Task { await a.stop(); await c.stop() } }
            let (key, now) = Self.newKey()
            let record = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: "team-x", issuedAtMillis: now, requestsPerMinute: 5, models: ["m"],
                                   admin: admin.nodeID).signed(by: admin)
            let auth = [("authorization", "Bearer \(key)")]
            #expect(try await c.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 401, "unknown before it is issued")

            // A record signed by someone else is refused.
            let rogue = Ed25519.KeyPair.generate()
            let forged = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: "x", issuedAtMillis: now, admin: rogue.nodeID).signed(by: rogue)
            let refused = try await a.post("/aiproxy/keys", bytes: Array(forged.fileText.utf8))
            #expect(refused.status == 400 && refused.text.contains("admin"), "\(refused.text)")

            let submitted = try await a.post("/aiproxy/keys", bytes: Array(record.fileText.utf8))
            #expect(submitted.status == 200, "\(submitted.text)")
            #expect(try await eventually { try await c.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 200 },
                    "the key reached c by gossip")
            let other = try await c.post("/v1/chat/completions", chatBody("other"), headers: auth)
            #expect(other.status == 403 && other.json["error"]?["code"]?.stringValue == "model_not_allowed")
            // 5 requests per minute: the sixth within the minute is refused with retry-after.
            var statuses: [Int] = []
            for _ in 0..<6 { statuses.append(try await a.post("/v1/chat/completions", chatBody("m"), headers: auth).status) }
            #expect(statuses.last == 429, "\(statuses)")

            let revocation = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: "team-x", issuedAtMillis: now + 1, revoked: true, admin: admin.nodeID).signed(by: admin)
            #expect(try await c.post("/aiproxy/keys", bytes: Array(revocation.fileText.utf8)).status == 200)
            #expect(try await eventually {
                let atA = try await a.post("/v1/chat/completions", chatBody("m"), headers: auth)
                return atA.status == 401 && atA.text.contains("revoked")
            }, "revoked everywhere")
            #expect(try await c.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 401)
            // A stale re-issue cannot bring it back.
            #expect(try await a.post("/aiproxy/keys", bytes: Array(record.fileText.utf8)).status == 200)
            #expect(try await a.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 401)
        }
    }

    @Test func keyBudget_isMeshWide_andNeverOverspent() async throws {
        try await withMocks([.init(name: "u")]) { mocks in
            let admin = Ed25519.KeyPair.generate()
            let (a, c) = try await Self.pair(admin: admin, mock: mocks[0].baseURL, paid: true)
            defer { Task { await a.stop(); await c.stop() } }
            let (key, now) = Self.newKey()
            let record = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: "budgeted", issuedAtMillis: now, dailyBudget: 0.05, admin: admin.nodeID).signed(by: admin)
            #expect(try await a.post("/aiproxy/keys", bytes: Array(record.fileText.utf8)).status == 200)
            let auth = [("authorization", "Bearer \(key)")]
            #expect(try await eventually { try await c.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 20]), headers: auth).status == 200 })
            // $0.001 a token; each request may cost (prompt + 20) tokens and really costs ~11.
            #expect(try await a.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 20]), headers: auth).status == 200)
            // c learns a's spend from a's record, so the key's budget holds across the mesh.
            let spentAtA = a.gateway.keyBudgets.localSpend(key: "budgeted", day: KeyBudgets.day(millis: now))
            #expect(try await eventually {
                spentAtA > 0 && (c.gateway.meshKeySpend?("budgeted", KeyBudgets.day(millis: now)) ?? 0) >= spentAtA - 1e-9
            }, "a's spend reached c: \(spentAtA) vs \(c.gateway.meshKeySpend?("budgeted", KeyBudgets.day(millis: now)) ?? -1); a's own record: \(a.runtime.mesh?.records().first { $0.record.origin == a.runtime.mesh?.nodeID }?.record.spend ?? [])")
            var statuses: [Int] = []
            for _ in 0..<6 { statuses.append(try await c.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 20]), headers: auth).status) }
            #expect(statuses.contains(429), "the budget ran out: \(statuses)")
            let refused = try await c.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 20]), headers: auth)
            #expect(refused.json["error"]?["code"]?.stringValue == "budget_exceeded", "\(refused.text)")
            await a.gateway.ledger?.flush()
            await c.gateway.ledger?.flush()
            let total = try [a, c].reduce(0.0) { sum, node in
                sum + (try LedgerReader(path: node.dataDir + "/ledger.sqlite").recent(limit: 100).filter { $0.apiKey == "budgeted" }.reduce(0) { $0 + $1.cost })
            }
            #expect(total <= 0.05 + 1e-9, "mesh-wide spend \(total)")
            #expect(total > 0.03)
        }
    }

    @Test func adminEndpoints_needTheAdminsSignature() async throws {
        try await withMocks([.init(name: "u")]) { mocks in
            let admin = Ed25519.KeyPair.generate()
            let node = try await TestNode.start(yaml: """
            providers:
              local: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: m } ] }
            """, name: "admin", nodeExtra: "mesh: { enabled: true, listen_addr: \"127.0.0.1:0\", trust: { mode: open, admin_public_key: \"\(admin.nodeID.hex)\" } }")
            defer { Task { await node.stop() } }
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            func signed(_ target: String, by key: Ed25519.KeyPair, at time: Int64 = now) -> [(name: String, value: String)] {
                [(AdminSignature.name, AdminSignature.sign(method: "GET", target: target, key: key, timestampMillis: time))]
            }
            let plain = try await node.get("/aiproxy/usage?group_by=model")
            #expect(plain.status == 403 && plain.json["error"]?["code"]?.stringValue == "admin_required")
            #expect(try await node.get("/aiproxy/usage?group_by=model", headers: signed("/aiproxy/usage?group_by=model", by: admin)).status == 200)
            #expect(try await node.get("/aiproxy/usage?group_by=model", headers: signed("/aiproxy/usage?group_by=node", by: admin)).status == 403, "signed for another request")
            #expect(try await node.get("/aiproxy/usage?group_by=model", headers: signed("/aiproxy/usage?group_by=model", by: .generate())).status == 403, "not the admin")
            #expect(try await node.get("/aiproxy/usage?group_by=model", headers: signed("/aiproxy/usage?group_by=model", by: admin, at: now - 600_000)).status == 403, "too old")
            #expect(try await node.get("/aiproxy/mesh/table").status == 403)
            let topology = try await node.get("/aiproxy/mesh/topology")
            #expect(topology.status == 200 && !topology.text.contains("gossip"), "no addresses without the admin key")
            let full = try await node.get("/aiproxy/mesh/topology", headers: signed("/aiproxy/mesh/topology", by: admin))
            #expect(full.text.contains("gossip"))
        }
    }

    @Test func perMinuteLimit_holdsAcrossTheMesh() async throws {
        try await Self.withLimitedKey("shared", requestsPerMinute: 6) { a, c, auth in
            #expect(try await eventually { try await c.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 200 })
            for _ in 0..<3 { #expect(try await a.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 200) }
            // c hears of a's three (and counts its own one) before it decides.
            let minute = KeyRequestCounts.minute(millis: Int64(Date().timeIntervalSince1970 * 1000))
            #expect(try await eventually { (c.gateway.meshKeyRequests?("shared", minute) ?? 0) >= 3 })
            var statuses: [Int] = []
            for _ in 0..<4 { statuses.append(try await c.post("/v1/chat/completions", chatBody("m"), headers: auth).status) }
            #expect(statuses == [200, 200, 429, 429], "6 per minute across both nodes: \(statuses)")
        }
    }

    @Test func tokensPerMinute_holdAcrossTheMesh() async throws {
        try await Self.withLimitedKey("tokens", tokensPerMinute: 15) { a, c, auth in
            #expect(try await eventually { try await a.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 200 })
            // One answer is ~9 tokens; c learns that from a's record.
            let minute = KeyRequestCounts.minute(millis: Int64(Date().timeIntervalSince1970 * 1000))
            #expect(try await eventually { (c.gateway.meshKeyRequests?("tokens:tokens", minute) ?? 0) >= 5 })
            #expect(try await eventually { try await c.post("/v1/chat/completions", chatBody("m"), headers: auth).status == 200 })
            let refused = try await c.post("/v1/chat/completions", chatBody("m"), headers: auth)
            #expect(refused.status == 429 && refused.text.contains("tokens"), "\(refused.text)")
            #expect(refused.header("retry-after") != nil)
        }
    }

    @Test func duringASplit_eachNodeKeepsToItsShareOfTheBudget() async throws {
        try await withMocks([.init(name: "u")]) { mocks in
            let admin = Ed25519.KeyPair.generate()
            let (a, c) = try await Self.pair(admin: admin, mock: mocks[0].baseURL, paid: true)
            defer { Task { await a.stop(); await c.stop() } }
            let (key, now) = Self.newKey()
            let record = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: "split", issuedAtMillis: now, dailyBudget: 0.1, admin: admin.nodeID).signed(by: admin)
            #expect(try await a.post("/aiproxy/keys", bytes: Array(record.fileText.utf8)).status == 200)
            let auth = [("authorization", "Bearer \(key)")]
            #expect(try await eventually { (c.runtime.mesh?.apiKey(hash: Sodium.sha256(Array(key.utf8))) != nil) })
            // c drops off the network (no goodbye): a cannot tell a crash from a split.
            await c.runtime.mesh?.stop()
            #expect(try await eventually { a.runtime.mesh?.members().first?.status != .alive }, "a notices")
            var served = 0
            for _ in 0..<10 where try await a.post("/v1/chat/completions", chatBody("m", extra: ["max_tokens": 20]), headers: auth).status == 200 { served += 1 }
            let spent = a.gateway.keyBudgets.localSpend(key: "split", day: KeyBudgets.day(millis: now))
            // a keeps to half of the $0.10 that remained (2 nodes), so c may spend the other half.
            #expect(spent <= 0.05 + 1e-9, "a spent \(spent) in \(served) requests")
            #expect(served >= 1 && served < 8, "the whole budget would have allowed ~8: \(served)")
        }
    }
}
