import Foundation
import CurlHTTP
import Gateway
import Ledger
import Logging
import MeshCore
import MockUpstream
import Node
import NodeConfig
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

enum CurlHTTPTestSupport {
    /// One client for tests that only need an instance (no transfers).
    static let sharedClient = CurlClient()
}

/// The folder every test directory of this test process lives in; removed, with all of them, when the
/// process exits (a run used to leave a few hundred directories behind in /tmp).
let testRoot: String = {
    var template = Array("/tmp/aimesh-tests-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buffer in String(cString: mkdtemp(buffer.baseAddress!)) }
    atexit { try? FileManager.default.removeItem(atPath: testRoot) }
    return path
}()

/// A fresh directory for one test, under `testRoot`.
func temporaryDirectory(_ name: String = "test") -> String {
    var template = Array("\(testRoot)/\(name)-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buffer in String(cString: mkdtemp(buffer.baseAddress!)) }
    return path
}

/// A node running in this process on an ephemeral loopback port, built from YAML.
final class TestNode: Sendable {
    let runtime: NodeRuntime
    let task: Task<Void, any Error>
    let port: Int
    let client = CurlClient()
    let dataDir: String

    var base: String { "http://127.0.0.1:\(port)" }
    var gateway: Gateway { runtime.gateway }

    static func start(yaml: String, environment: [String: String] = [:], name: String = "node", nodeExtra: String = "",
                      serverExtra: String = "") async throws -> TestNode {
        let dataDir = temporaryDirectory(name)
        let extra = nodeExtra.isEmpty ? "" : ", " + nodeExtra
        let server = serverExtra.isEmpty ? "" : ", " + serverExtra
        let full = "node: { id: \(name), data_dir: \"\(dataDir)\"\(extra) }\nserver: { listen_addr: \"127.0.0.1:0\"\(server) }\n" + yaml
        let outcome = ConfigLoader.parse(yaml: full, file: "test.yaml", environment: environment)
        guard let configuration = outcome.configuration else { throw TestFailure("bad config: \(outcome.diagnostics)") }
        var logger = Logger(label: "test.\(name)")
        logger.logLevel = .critical
        let runtime = try NodeRuntime(configuration: configuration, logger: logger)
        let task = Task { try await runtime.run(handleSignals: false) }
        let port = try await runtime.waitUntilListening()
        return TestNode(runtime: runtime, task: task, port: port, dataDir: dataDir)
    }

    init(runtime: NodeRuntime, task: Task<Void, any Error>, port: Int, dataDir: String) {
        self.runtime = runtime
        self.task = task
        self.port = port
        self.dataDir = dataDir
    }

    func stop() async {
        await runtime.shutdown()
        _ = try? await task.value
        client.shutdown()
    }

    struct Reply {
        let status: Int
        let head: ResponseHead
        let body: [UInt8]
        var json: JSON { (try? JSONParser.parse(body)) ?? .null }
        var text: String { String(decoding: body, as: UTF8.self) }
        func header(_ name: String) -> String? { head.header(name) }
    }

    func post(_ path: String, _ body: JSON, headers: [(name: String, value: String)] = []) async throws -> Reply {
        try await post(path, bytes: body.bytes, headers: headers)
    }

    func post(_ path: String, bytes: [UInt8], headers: [(name: String, value: String)] = []) async throws -> Reply {
        let (head, body) = try await client.send(.post(base + path, json: bytes, headers: headers, timeouts: Timeouts(connect: .seconds(5), firstByte: .seconds(30), idle: .seconds(30))))
        return Reply(status: head.status, head: head, body: body)
    }

    func get(_ path: String, headers: [(name: String, value: String)] = []) async throws -> Reply {
        let (head, body) = try await client.send(OutboundRequest(url: base + path, headers: headers))
        return Reply(status: head.status, head: head, body: body)
    }

    /// Streams a chat request and returns every SSE event's data.
    func stream(_ body: JSON, headers: [(name: String, value: String)] = []) async throws -> (ResponseHead, [SSEEvent]) {
        let response = try await client.start(.post(base + "/v1/chat/completions", json: body.bytes, headers: headers,
                                                    timeouts: Timeouts(connect: .seconds(5), firstByte: .seconds(30), idle: .seconds(30))))
        var parser = SSEParser()
        var events: [SSEEvent] = []
        while let chunk = try await response.next() { events += try parser.feed(chunk) }
        if let last = parser.finish() { events.append(last) }
        return (response.head, events)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func chatBody(_ model: String, _ text: String = "hello there", stream: Bool = false, extra: JSONObject = [:]) -> JSON {
    var object: JSONObject = ["model": .string(model), "messages": [["role": "user", "content": .string(text)]], "stream": .bool(stream)]
    for member in extra { object[member.key] = member.value }
    return .object(object)
}

/// Starts mocks, runs `body`, and always shuts them down.
func withMocks<T>(_ configurations: [MockUpstream.Configuration], _ body: ([MockUpstream]) async throws -> T) async throws -> T {
    var mocks: [MockUpstream] = []
    for configuration in configurations { mocks.append(try await MockUpstream.start(configuration)) }
    do {
        let result = try await body(mocks)
        for mock in mocks { await mock.shutdown() }
        return result
    } catch {
        for mock in mocks { await mock.shutdown() }
        throw error
    }
}

/// Runs CPU-heavy synchronous work (a long simulation) on its own thread, so it does not hold one of
/// the few cooperative threads that every other test's async work needs (2 cores here).
func offThePool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}

/// Counts by name, from any thread.
final class Counter: Sendable {
    let counts = Mutex<[String: Int]>([:])
    func add(_ key: String) { counts.withLock { $0[key, default: 0] += 1 } }
    func value(_ key: String) -> Int { counts.withLock { $0[key] ?? 0 } }
}
