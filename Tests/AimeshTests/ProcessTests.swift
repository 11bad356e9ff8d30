import CurlHTTP
import Foundation
import Ledger
import MeshState
import MeshCore
import MockUpstream
import Testing

/// The `aimesh` executable, built next to the test bundle.
enum AimeshBinary {
    static var path: String? {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = URL(fileURLWithPath: exe).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent("aimesh").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return nil
    }
}

/// A child process whose output is collected; killed when the test ends.
final class Child: Sendable {
    let process: ChildProcess

    init(_ arguments: [String], environment: [String: String]? = nil) throws {
        guard let binary = AimeshBinary.path else { throw TestFailure("the aimesh executable is not built next to the tests") }
        process = try ChildProcess(program: binary, arguments: arguments, environment: environment, stdout: .pipe, stderr: .pipe)
    }

    /// Runs to completion (bounded) and returns the exit code and everything printed.
    static func run(_ arguments: [String], environment: [String: String]? = nil, timeout: Duration = .seconds(20)) async throws -> (Int32, String) {
        let child = try Child(arguments, environment: environment)
        // The watchdog only fires if the process outlives its time; the exit itself is awaited.
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            child.kill()
        }
        let output = await offThePool { child.collectedOutput() }  // reads to EOF: the process has exited or closed its output
        let status = await offThePool { child.process.wait() }
        let timedOut = watchdog.isCancelled == false && status == .signalled(SIGKILL)
        watchdog.cancel()
        if timedOut { throw TestFailure("aimesh \(arguments) did not finish within \(timeout)") }
        guard case .exited(let code) = status else { throw TestFailure("aimesh \(arguments) \(status)") }
        return (code, output)
    }

    func collectedOutput() -> String {
        String(decoding: process.readOutput(), as: UTF8.self)
    }

    func kill(signal: Int32 = SIGKILL) {
        process.signal(signal)
        process.wait()
    }
}

/// Polls `url` until it answers 200 (bounded).
func waitForHTTP(_ url: String, client: CurlClient, timeout: Duration = .seconds(20)) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if let (head, _) = try? await client.send(OutboundRequest(url: url, timeouts: Timeouts(connect: .seconds(1), firstByte: .seconds(2), idle: .seconds(2)))), head.status == 200 {
            return
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestFailure("\(url) did not answer within \(timeout)")
}

/// A blocking TCP connection to 127.0.0.1:`port` (for tests that misbehave on purpose).
func connectLoopback(_ port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { close(fd); throw TestFailure("cannot connect to 127.0.0.1:\(port)") }
    return fd
}

/// True once the peer has closed the connection (a read sees end of file or a reset).
func closedByPeer(_ fd: Int32) -> Bool {
    var byte: UInt8 = 0
    let count = recv(fd, &byte, 1, Int32(MSG_DONTWAIT))
    return count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
}

/// True when the node's end of this loopback connection (local port `apiPort`, remote: `fd`'s port) is
/// listed in /proc/net/tcp past ESTABLISHED: the node closed it while data toward the client is still
/// queued (so the socket lingers in FIN_WAIT1). Not listed counts as not known yet — a read of the table
/// can skip entries while other sockets come and go — so callers poll.
func nodeSideClosed(_ fd: Int32, apiPort: Int) -> Bool {
    guard let line = nodeSideSocket(fd, apiPort: apiPort) else { return false }
    return line.split(separator: " ")[3] != "01"
}

/// The node's end of this loopback connection as /proc/net/tcp lists it (for diagnostics), nil when gone.
func nodeSideSocket(_ fd: Int32, apiPort: Int) -> String? {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
    }
    // Read to the end (readSmallFile loops until EOF): /proc files report size 0, and a one-shot read stops
    // after the first page — with thousands of sockets open (the suite runs in parallel) this one would be missed.
    guard named, let table = readSmallFile("/proc/net/tcp", limit: 64 << 20) else { return nil }
    let local = String(format: "0100007F:%04X", apiPort), remote = String(format: "0100007F:%04X", Int(UInt16(bigEndian: address.sin_port)))
    for line in table.split(separator: "\n") {
        let fields = line.split(separator: " ")
        if fields.count > 3, fields[1] == local, fields[2] == remote { return fields.joined(separator: " ") }
    }
    return nil
}

/// The first bytes waiting on `fd`, left in place (for diagnostics).
func peekText(_ fd: Int32, count: Int = 200) -> String {
    var buffer = [UInt8](repeating: 0, count: count)
    let n = recv(fd, &buffer, count, Int32(MSG_PEEK | MSG_DONTWAIT))
    return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : "(nothing: \(n), errno \(errno))"
}

func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw TestFailure("no free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// The real executable, as users run it.
@Suite(.timeLimit(.minutes(1)), .serialized)
struct ProcessTests {
    @Test func ledger_survivesKill9MidLoad_forEveryAcknowledgedRow_andTheNodeServesAgain() async throws {
        let client = CurlClient()
        defer { client.shutdown() }
        let mockPort = try freeLoopbackPort(), apiPort = try freeLoopbackPort()
        let mock = try Child(["mock-upstream", "--listen", "127.0.0.1:\(mockPort)", "--name", "up"])
        defer { mock.kill() }
        let dataDir = temporaryDirectory("kill9")
        let configPath = dataDir + "/node.yaml"
        try """
        node: { id: crashy, data_dir: "\(dataDir)/data" }
        server: { listen_addr: "127.0.0.1:\(apiPort)" }
        providers:
          local: { type: local, base_url: "http://127.0.0.1:\(mockPort)/v1", models: [ { name: m } ] }
        observability: { logging: { level: error } }
        """.write(toFile: configPath, atomically: true, encoding: .utf8)
        let node = try Child(["node", "--config", configPath])
        defer { node.kill() }
        try await waitForHTTP("http://127.0.0.1:\(mockPort)/_mock/stats", client: client)
        try await waitForHTTP("http://127.0.0.1:\(apiPort)/health", client: client)

        // Load from four concurrent clients; kill -9 the node while requests are in flight, once it has
        // acknowledged at least 40 rows as committed.
        let stop = Counter()
        let served = Counter()
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<4 {
                    group.addTask {
                        var i = 0
                        while stop.value("stop") == 0 {
                            i += 1
                            if let (head, _) = try? await client.send(.post("http://127.0.0.1:\(apiPort)/v1/chat/completions", json: chatBody("m", "w\(worker) row \(i)").bytes)),
                               head.status == 200 { served.add("ok") }
                        }
                    }
                }
            }
        }
        var committed = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while committed < 40, ContinuousClock.now < deadline {
            if let (_, body) = try? await client.send(OutboundRequest(url: "http://127.0.0.1:\(apiPort)/aiproxy/ledger/status")) {
                committed = (try? JSONParser.parse(body))?["committed_sequence"]?.intValue ?? 0
            }
            if committed < 40 { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(committed >= 40, "the writer commits within a bounded time")
        node.kill(signal: SIGKILL)
        stop.add("stop")
        await load.value

        let reader = try LedgerReader(path: dataDir + "/data/ledger.sqlite")
        #expect(try reader.integrityCheck() == "ok")
        #expect(try reader.count(upToSequence: committed) == committed, "every row acknowledged as committed is on disk")
        let before = try reader.count()

        // The node starts again on the same files, serves, and appends after what survived.
        let again = try Child(["node", "--config", configPath])
        defer { again.kill() }
        try await waitForHTTP("http://127.0.0.1:\(apiPort)/health", client: client)
        for i in 0..<5 {
            let (head, _) = try await client.send(.post("http://127.0.0.1:\(apiPort)/v1/chat/completions", json: chatBody("m", "after \(i)").bytes))
            #expect(head.status == 200)
        }
        #expect(await eventually(.seconds(10)) { ((try? reader.count()) ?? 0) == before + 5 }, "new rows are appended after the restart")
        #expect(try reader.integrityCheck() == "ok")
        // Key and data directory permissions: nothing readable by others.
        let attributes = try FileManager.default.attributesOfItem(atPath: dataDir + "/data")
        #expect((attributes[.posixPermissions] as? Int ?? 0o777) & 0o077 == 0)
    }

    @Test func configCheck_printsFileLineFieldAndExitsNonZero() async throws {
        let dir = temporaryDirectory("cfgcheck")
        let path = dir + "/bad.yaml"
        try """
        node: { id: n1 }
        server:
          listen_addr: "127.0.0.1:99999"
        providers:
          gpu:
            type: locl
            base_url: http://127.0.0.1:8000/v1
            models: [ { name: m } ]
        routing:
          strategy: cheapest-please
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try await Child.run(["config", "check", path])
        #expect(status != 0)
        #expect(output.contains("\(path):3: server.listen_addr"), "\(output)")
        #expect(output.contains("\(path):6: providers.gpu.type"), "\(output)")
        #expect(output.contains("local"), "did-you-mean for the provider type: \(output)")
        #expect(output.contains("\(path):10: routing.strategy"), "\(output)")

        let good = dir + "/good.yaml"
        try "providers:\n  gpu: { type: local, base_url: \"http://127.0.0.1:8000/v1\", models: [ { name: m } ] }\n".write(toFile: good, atomically: true, encoding: .utf8)
        let (okStatus, okOutput) = try await Child.run(["config", "check", good])
        #expect(okStatus == 0, "\(okOutput)")
    }

    @Test func cli_chatStreamsAndModelsLists() async throws {
        let client = CurlClient()
        defer { client.shutdown() }
        let mockPort = try freeLoopbackPort(), apiPort = try freeLoopbackPort()
        let mock = try Child(["mock-upstream", "--listen", "127.0.0.1:\(mockPort)", "--name", "up"])
        defer { mock.kill() }
        let dataDir = temporaryDirectory("cli")
        try await waitForHTTP("http://127.0.0.1:\(mockPort)/_mock/stats", client: client)
        let configPath = dataDir + "/node.yaml"
        try """
        providers:
          local: { type: local, base_url: "http://127.0.0.1:\(mockPort)/v1", models: [ { name: m } ] }
        """.write(toFile: configPath, atomically: true, encoding: .utf8)
        // Flags override the file: the API address and data directory come from the command line.
        let node = try Child(["node", "--config", configPath, "--api-listen", "127.0.0.1:\(apiPort)", "--data-dir", dataDir + "/data", "--log-level", "error"])
        defer { node.kill() }
        try await waitForHTTP("http://127.0.0.1:\(apiPort)/health", client: client)
        let url = "http://127.0.0.1:\(apiPort)"
        let (chatStatus, chatOutput) = try await Child.run(["chat", "--node", url, "-m", "m", "are you there"])
        #expect(chatStatus == 0)
        #expect(chatOutput.contains("Hello from up! You said: are you there"), "\(chatOutput)")
        let (modelsStatus, modelsOutput) = try await Child.run(["models", "--node", url])
        #expect(modelsStatus == 0)
        #expect(modelsOutput.contains("m") && modelsOutput.contains("local"), "\(modelsOutput)")
        let (badStatus, badOutput) = try await Child.run(["chat", "--node", url, "-m", "nope", "hi"])
        #expect(badStatus != 0)
        #expect(badOutput.contains("nope"), "\(badOutput)")
        #expect(FileManager.default.fileExists(atPath: dataDir + "/data/ledger.sqlite"), "--data-dir was used")
        let (versionStatus, versionOutput) = try await Child.run(["version"])
        #expect(versionStatus == 0 && !versionOutput.isEmpty)
    }

    @Test func meshAdminFlow_idInitAdmitRevoke() async throws {
        let dir = temporaryDirectory("admin-flow")
        let (idStatus, idOutput) = try await Child.run(["id", "--data-dir", dir + "/node"])
        #expect(idStatus == 0)
        let nodeID = idOutput.split(separator: "\n").map(String.init).first { $0.count == 64 } ?? ""
        #expect(NodeID(hex: nodeID) != nil, "\(idOutput)")
        let (again, againOutput) = try await Child.run(["id", "--data-dir", dir + "/node"])
        #expect(again == 0 && againOutput.contains(nodeID), "the same key the second time")

        let (initStatus, initOutput) = try await Child.run(["mesh", "init", "--out", dir + "/admin"])
        #expect(initStatus == 0, "\(initOutput)")
        let adminID = initOutput.split(separator: "\n").map(String.init).first { $0.count == 64 } ?? ""
        #expect(NodeID(hex: adminID) != nil)
        let (reinit, reinitOutput) = try await Child.run(["mesh", "init", "--out", dir + "/admin"])
        #expect(reinit != 0 && reinitOutput.contains("exists"), "never overwrites an admin key")

        let (admit, admitOutput) = try await Child.run(["mesh", "admit", nodeID, "--name", "gpu-1", "--expires", "30d",
                                                        "--admin-key", dir + "/admin/admin.key", "--out", dir + "/node.cert"])
        #expect(admit == 0, "\(admitOutput)")
        let certificate = try Certificate(fileText: String(contentsOfFile: dir + "/node.cert", encoding: .utf8))
        #expect(certificate.node.hex == nodeID && certificate.admin.hex == adminID && certificate.isSignatureValid && certificate.name == "gpu-1")
        let days = Double(certificate.expiresAtMillis - certificate.issuedAtMillis) / 86_400_000
        #expect(abs(days - 30) < 0.01)

        let (badAdmit, badOutput) = try await Child.run(["mesh", "admit", "nothex", "--name", "x", "--admin-key", dir + "/admin/admin.key"])
        #expect(badAdmit != 0 && badOutput.contains("64 hex"))

        let (revoke, revokeOutput) = try await Child.run(["mesh", "revoke", nodeID, "--admin-key", dir + "/admin/admin.key", "--out", dir + "/revocation"])
        #expect(revoke == 0, "\(revokeOutput)")
        let revocation = try Revocation(fileText: String(contentsOfFile: dir + "/revocation", encoding: .utf8))
        #expect(revocation.node.hex == nodeID)

        let (keygen, secret) = try await Child.run(["mesh", "keygen"])
        #expect(keygen == 0 && secret.trimmingCharacters(in: .whitespacesAndNewlines).count == 64)
    }

    @Test func sigterm_leavesTheMeshGracefully() async throws {
        let client = CurlClient()
        defer { client.shutdown() }
        let dir = temporaryDirectory("sigterm")
        let (apiA, gossipA, apiB, gossipB) = (try freeLoopbackPort(), try freeLoopbackPort(), try freeLoopbackPort(), try freeLoopbackPort())
        let a = try Child(["node", "--node-id", "a", "--api-listen", "127.0.0.1:\(apiA)", "--gossip-listen", "127.0.0.1:\(gossipA)", "--data-dir", dir + "/a", "--log-level", "error"])
        defer { a.kill() }
        let b = try Child(["node", "--node-id", "b", "--api-listen", "127.0.0.1:\(apiB)", "--gossip-listen", "127.0.0.1:\(gossipB)",
                           "--peers", "127.0.0.1:\(gossipA)", "--data-dir", dir + "/b", "--log-level", "error"])
        func peerStatus() async -> String? {
            guard let (_, body) = try? await client.send(OutboundRequest(url: "http://127.0.0.1:\(apiA)/aiproxy/mesh/status")),
                  let json = try? JSONParser.parse(body) else { return nil }
            return json["peers"]?.arrayValue?.first { $0["id"]?.stringValue == "b" }?["status"]?.stringValue
        }
        #expect(await eventually { await peerStatus() == "healthy" })
        b.kill(signal: SIGTERM)
        #expect(b.process.wait() == .exited(0), "a clean exit on SIGTERM")
        // "left" straight away, not "suspect" then "unreachable" seconds later.
        #expect(await eventually(.seconds(2)) { await peerStatus() == "left" })
    }

    /// A peer machine that freezes (SIGSTOP: its TCP connections stay open, nothing answers) while a
    /// request waits on it: the entry node fails the request over as soon as the mesh declares the peer
    /// dead, not after the forwarding timeouts (120 s to the first byte). Found by scripts/chaos.
    @Test func frozenPeer_requestWaitingOnIt_failsOverWhenTheMeshDeclaresItDead() async throws {
        try await withMocks([.init(name: "p1"), .init(name: "p2")]) { mocks in
            mocks[1].setSticky(.delay(.seconds(40)))
            let client = CurlClient()
            defer { client.shutdown() }
            let dir = temporaryDirectory("frozen")
            let seedGossip = try freeLoopbackPort()
            func start(_ name: String, gossip: Int, mock: MockUpstream?) throws -> (Child, Int) {
                let api = try freeLoopbackPort()
                let peers = gossip == seedGossip ? "" : ", peers: [ \"127.0.0.1:\(seedGossip)\" ]"
                let providers = mock.map { "providers:\n  local: { type: local, base_url: \($0.baseURL)/v1, models: [ { name: shared } ] }\n" } ?? ""
                let yaml = """
                node: { id: \(name), data_dir: \(dir)/\(name), mesh: { enabled: true, listen_addr: "127.0.0.1:\(gossip)"\(peers), probe_interval: 200ms, probe_timeout: 80ms, gossip_interval: 50ms, suspicion_multiplier: 2 } }
                server: { listen_addr: "127.0.0.1:\(api)" }
                \(providers)observability: { logging: { level: error } }
                """
                try yaml.write(toFile: "\(dir)/\(name).yaml", atomically: true, encoding: .utf8)
                return (try Child(["node", "--config", "\(dir)/\(name).yaml"]), api)
            }
            let (a, apiA) = try start("a", gossip: seedGossip, mock: nil)
            defer { a.kill() }
            let (p1, _) = try start("p1", gossip: try freeLoopbackPort(), mock: mocks[0])
            defer { p1.kill() }
            let (p2, _) = try start("p2", gossip: try freeLoopbackPort(), mock: mocks[1])
            defer { p2.process.signal(SIGCONT); p2.kill() }
            func post(_ i: Int) async throws -> (ResponseHead, [UInt8]) {
                try await client.send(OutboundRequest(method: "POST", url: "http://127.0.0.1:\(apiA)/v1/chat/completions",
                                                      headers: [("content-type", "application/json"), ("x-aiproxy-strategy", "round_robin")],
                                                      body: chatBody("shared", "r\(i)").bytes, timeouts: Timeouts(firstByte: .seconds(60))))
            }
            #expect(await eventually(.seconds(20)) {
                guard let (_, body) = try? await client.send(OutboundRequest(url: "http://127.0.0.1:\(apiA)/v1/models/shared")) else { return false }
                return ((try? JSONParser.parse(body))?["providers"]?.arrayValue?.count ?? 0) == 2
            })
            // Round robin: within two requests one waits on p2 (its upstream takes 40 s).
            var waiting: Task<(ResponseHead, [UInt8]), any Error>?
            for i in 0..<4 where waiting == nil {
                let request = Task { try await post(i) }
                let done = Counter()
                Task { _ = try? await request.value; done.add("done") }
                _ = await eventually { mocks[1].activeConnections == 1 || done.value("done") == 1 }
                if mocks[1].activeConnections == 1 { waiting = request }
            }
            let request = try #require(waiting, "a request reached p2's upstream")
            p2.process.signal(SIGSTOP)
            let (head, body) = try await request.value
            let json = try JSONParser.parse(body)
            #expect(head.status == 200, "\(String(decoding: body, as: UTF8.self))")
            #expect(head.header("x-aiproxy-route")?.contains("p1") == true)
            let attempts = json["x_aiproxy"]?["attempts"]?.arrayValue ?? []
            #expect(attempts.first?["route"]?.stringValue == "p2")
            #expect(attempts.first?["error"]?.stringValue?.contains("became unreachable") == true, "\(JSON.array(attempts).text)")
        }
    }

    /// A mock upstream and a node in front of it (model `m`), with extra `server:` settings; both answer
    /// before this returns.
    static func startNodeOnMock(_ name: String, server: String, client: CurlClient) async throws -> (mock: Child, node: Child, apiPort: Int) {
        let mockPort = try freeLoopbackPort(), apiPort = try freeLoopbackPort()
        let mock = try Child(["mock-upstream", "--listen", "127.0.0.1:\(mockPort)", "--name", "up"])
        let dir = temporaryDirectory(name)
        try """
        node: { id: patient, data_dir: "\(dir)/data" }
        server: { listen_addr: "127.0.0.1:\(apiPort)", \(server) }
        providers:
          local: { type: local, base_url: "http://127.0.0.1:\(mockPort)/v1", models: [ { name: m } ] }
        observability: { logging: { level: error } }
        """.write(toFile: dir + "/node.yaml", atomically: true, encoding: .utf8)
        let node = try Child(["node", "--config", dir + "/node.yaml"])
        do {
            try await waitForHTTP("http://127.0.0.1:\(mockPort)/_mock/stats", client: client)
            try await waitForHTTP("http://127.0.0.1:\(apiPort)/health", client: client)
        } catch {
            mock.kill(); node.kill()
            throw error
        }
        return (mock, node, apiPort)
    }

    /// Two thousand idle connections and a few slowloris senders (a request head dribbled out, never
    /// finished) do not stop the node answering others, and `server.read_timeout` closes them all.
    @Test func idleAndSlowlorisConnections_areClosedAfterTheReadTimeout_andOthersAreServed() async throws {
        let client = CurlClient()
        defer { client.shutdown() }
        let (mock, node, apiPort) = try await Self.startNodeOnMock("slowloris", server: "read_timeout: 1s", client: client)
        defer { mock.kill(); node.kill() }

        let idle = try (0..<2000).map { _ in try connectLoopback(apiPort) }
        let slow = try (0..<20).map { _ in try connectLoopback(apiPort) }
        defer { for fd in idle + slow { close(fd) } }
        let head = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n".utf8)
        for fd in slow { _ = send(fd, head, head.count, Int32(MSG_NOSIGNAL)) }
        // Keep dribbling header lines (never the blank line that ends the head) while others are served.
        let dribble = Task {
            let line = Array("X-Slow: 1\r\n".utf8)
            for _ in 0..<30 {
                for fd in slow { _ = send(fd, line, line.count, Int32(MSG_NOSIGNAL)) }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        for i in 0..<5 {
            let (reply, _) = try await client.send(.post("http://127.0.0.1:\(apiPort)/v1/chat/completions", json: chatBody("m", "served \(i)").bytes))
            #expect(reply.status == 200, "answered while 2,020 connections sit on the node")
        }
        #expect(await eventually(.seconds(10)) { idle.allSatisfy(closedByPeer) }, "idle connections closed after read_timeout")
        #expect(await eventually(.seconds(10)) { slow.allSatisfy(closedByPeer) }, "slow senders closed although they keep sending")
        dribble.cancel()
        let (after, _) = try await client.send(.post("http://127.0.0.1:\(apiPort)/v1/chat/completions", json: chatBody("m", "after").bytes))
        #expect(after.status == 200)
    }

    /// A client that asks for a long stream and then reads nothing (its window full, the node's queue
    /// past the high-water mark) is cut off after `server.write_timeout`, counted, and the node keeps
    /// serving; a client that reads is not cut.
    @Test func clientThatStopsReading_isCutOffAfterTheWriteTimeout() async throws {
        let client = CurlClient()
        defer { client.shutdown() }
        let (mock, node, apiPort) = try await Self.startNodeOnMock("stalled-reader", server: "write_timeout: 1s, read_timeout: 300s", client: client)
        defer { mock.kill(); node.kill() }
        func timeouts() async throws -> Int {
            let (_, body) = try await client.send(OutboundRequest(url: "http://127.0.0.1:\(apiPort)/metrics"))
            let line = String(decoding: body, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("aimesh_http_write_timeouts_total") }
            return line.flatMap { $0.split(separator: " ").last }.flatMap { Int(Double($0) ?? 0) } ?? 0
        }
        #expect(try await timeouts() == 0)

        // The mock echoes the prompt word by word: 5,000 words of 1,000 letters make a 6 MB stream.
        let body = chatBody("m", String(repeating: String(repeating: "w", count: 1_000) + " ", count: 5_000), stream: true).bytes
        let head = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
        func ask(_ fd: Int32, smallWindow: Bool) {
            var small: Int32 = 4096
            if smallWindow { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size)) }
            let all = head + body
            var sent = 0
            while sent < all.count {
                let n = all[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { break }
                sent += n
            }
        }
        let stalled = try connectLoopback(apiPort)
        defer { close(stalled) }
        ask(stalled, smallWindow: true)
        // A second client asks for the same and keeps reading all through the time the first one is cut.
        let slow = try connectLoopback(apiPort)
        defer { close(slow) }
        ask(slow, smallWindow: false)
        // On its own thread with blocking reads, so a busy machine does not starve it for a write_timeout.
        let stop = Counter()
        var wait = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        let reader = Task {
            await offThePool { () -> (Int, Bool) in
                var buffer = [UInt8](repeating: 0, count: 1 << 16)
                var total = 0
                while stop.value("stop") == 0 {
                    let n = recv(slow, &buffer, buffer.count, 0)
                    if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { return (total, false) }
                    if n > 0 { total += n; stop.add("reads") }
                }
                return (total, true)
            }
        }
        // Both 5 MB requests are parsed and forwarded before either stream starts, and the stalled one can
        // be cut before the reader's stream has begun (so the reader would not be checked at all): wait for it.
        #expect(await eventually(.seconds(30)) { stop.value("reads") > 0 }, "the reading client's stream began")
        // The node closes its end of the stalled connection: the kernel lists the node's socket as past
        // ESTABLISHED (FIN_WAIT …), though the bytes already queued toward this client sit unread.
        #expect(await eventually(.seconds(30)) { nodeSideClosed(stalled, apiPort: apiPort) },
                "the stalled reader was cut off; node side: \(nodeSideSocket(stalled, apiPort: apiPort) ?? "gone")")
        #expect(await eventually(.seconds(5)) { ((try? await timeouts()) ?? 0) >= 1 },
                "and counted; node side: \(nodeSideSocket(stalled, apiPort: apiPort) ?? "gone"); the answer began: \(peekText(stalled))")
        stop.add("stop")
        let (read, open) = await reader.value
        #expect(open && read > 0, "the reading client kept its stream (read \(read) bytes)")
        #expect(try await timeouts() == 1, "only the reader that stopped was cut")
        let (after, _) = try await client.send(.post("http://127.0.0.1:\(apiPort)/v1/chat/completions", json: chatBody("m", "after").bytes))
        #expect(after.status == 200)
    }

    /// The kept fuzzing corpus (Tests/Fuzz/TARGET, grown by `scripts/fuzz --save`) replays through every
    /// parser without a crash: what fuzzing found once stays a regression test.
    @Test func fuzzCorpus_replaysWithoutACrash() async throws {
        let binary = try #require(AimeshBinary.path.map { URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("FuzzWire").path },
                                  "the aimesh executable is built next to the tests")
        #expect(FileManager.default.isExecutableFile(atPath: binary), "FuzzWire is built with the tests")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz").path
        for target in ["wire", "hop", "json", "sse", "request", "upstream", "config"] {
            let files = try FileManager.default.contentsOfDirectory(atPath: "\(root)/\(target)").map { "\(root)/\(target)/\($0)" }
            #expect(!files.isEmpty, "seeds for \(target)")
            let process = try ChildProcess(program: binary, arguments: files, environment: ["AIMESH_FUZZ_TARGET": target], stdout: .pipe)
            let printed = await offThePool { String(decoding: process.readOutput(), as: UTF8.self) }
            let status = await offThePool { process.wait() }
            #expect(status == .exited(0) && printed.contains("replayed \(files.count) input(s)"), "\(target): \(printed)")
        }
    }
}

/// Programs started with `posix_spawn` (Foundation's `Process.run()` crashes now and then on Linux).
@Suite(.timeLimit(.minutes(1))) struct ChildProcessTests {
    @Test func output_status_andStreams() throws {
        let script = "echo out; echo err >&2; exit 3"
        let both = try ChildProcess(program: "/bin/sh", arguments: ["-c", script], stdout: .pipe, stderr: .pipe)
        #expect(String(decoding: both.readOutput(), as: UTF8.self) == "out\nerr\n")
        #expect(both.wait() == .exited(3))
        #expect(both.wait() == .exited(3), "asked again")
        #expect(both.readOutput().isEmpty, "read once")

        let quiet = try ChildProcess(program: "sh", arguments: ["-c", script], stdout: .pipe, stderr: .discard)
        #expect(String(decoding: quiet.readOutput(), as: UTF8.self) == "out\n", "looked up on PATH; stderr dropped")
        #expect(quiet.wait() == .exited(3))

        let capped = try ChildProcess(program: "/bin/sh", arguments: ["-c", "head -c 100000 /dev/zero"], stdout: .pipe)
        #expect(capped.readOutput(limit: 1000).count == 1000, "the rest is read and dropped, so the child can finish")
        #expect(capped.wait() == .exited(0))
    }

    @Test func theEnvironment_replacesThisProcesses_whenGiven() throws {
        let child = try ChildProcess(program: "/usr/bin/env", arguments: [], environment: ["ONLY": "this one"], stdout: .pipe)
        #expect(String(decoding: child.readOutput(), as: UTF8.self) == "ONLY=this one\n")
        #expect(child.wait() == .exited(0))
    }

    /// The child gets standard input, output and error only: none of this process's sockets and files.
    @Test func theChild_inheritsNoOtherDescriptor() throws {
        var leaked: [Int32] = [-1, -1]
        #expect(pipe(&leaked) == 0)   // not close-on-exec
        defer { close(leaked[0]); close(leaked[1]) }
        // `ls` opens the directory itself (one more descriptor, 3).
        let child = try ChildProcess(program: "/bin/ls", arguments: ["/proc/self/fd"], stdout: .pipe)
        let listed = String(decoding: child.readOutput(), as: UTF8.self).split(separator: "\n").compactMap { Int($0) }
        #expect(child.wait() == .exited(0))
        #expect(Set(listed).isSubset(of: [0, 1, 2, 3]), "\(listed)")
    }

    @Test func aSignal_endsTheChild_andIsNotSentAfterItIsReaped() throws {
        let child = try ChildProcess(program: "/bin/sleep", arguments: ["30"])
        child.signal(SIGTERM)
        #expect(child.wait() == .signalled(SIGTERM))
        child.signal(SIGKILL)   // reaped: nothing is sent (the pid may belong to another process by now)
        #expect(child.wait() == .signalled(SIGTERM))
    }

    @Test func aMissingProgram_isAnError() {
        #expect(throws: ChildProcess.SpawnError.self) { try ChildProcess(program: "/nonexistent/program", arguments: []) }
        #expect(throws: ChildProcess.SpawnError.self) { try ChildProcess(program: "no-such-program-on-path", arguments: []) }
    }
}
