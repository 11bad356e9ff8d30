import Foundation
@testable import Gateway
import MeshCore
import MockUpstream
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The API port's HTTP/1.1 server (`LeanHTTP1Channel`) spoken to over raw sockets: what clients send that
/// the usual client never does — pipelined requests, a half-closed socket, a chunked body past the limit,
/// bytes that are not HTTP — and the headers every answer carries.
@Suite struct HTTPServerTests {
    /// A chat completion for model `m` as raw HTTP/1.1 bytes, with its length.
    static func chatRequest(_ text: String) -> [UInt8] {
        let chat = chatBody("m", text).bytes
        return Array("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: \(chat.count)\r\n\r\n".utf8) + chat
    }

    static func oneModel(_ mock: MockUpstream) -> String {
        "providers:\n  only: { type: local, base_url: \(mock.baseURL)/v1, models: [ { name: m } ] }\n"
    }

    @Test func pipelinedRequests_areAnsweredInOrder_evenWhenTheFirstIsSlowest() async throws {
        try await withMocks([.init(name: "slow", latency: .milliseconds(150))]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            defer { Task { await node.stop() } }
            // One write: a chat request that waits 150 ms on its upstream, then two quick ones, the last
            // asking to close.
            let requests = Self.chatRequest("first in line")
                + Array("GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8)
            let text = try await exchange(node.port, requests)
            let answers = text.components(separatedBy: "HTTP/1.1 ").dropFirst()
            #expect(answers.count == 3, "three answers: \(text.prefix(600))")
            #expect(answers.allSatisfy { $0.hasPrefix("200 OK") }, "\(text.prefix(600))")
            let order = answers.map { answer in
                answer.contains("\"chat.completion\"") ? "chat" : answer.contains("\"uptime_seconds\"") ? "health" : answer.contains("\"object\":\"list\"") ? "models" : "?"
            }
            #expect(order == ["chat", "health", "models"], "\(text.prefix(800))")
            #expect(mocks[0].requestCount == 1)
        }
    }

    @Test func manyPipelinedRequests_allAnswered_inOrder() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            defer { Task { await node.stop() } }
            // 300 requests in one write: more than the handler holds before it stops reading.
            var requests: [UInt8] = []
            for i in 0..<300 {
                requests += Array("GET /v1/models/m?n=\(i) HTTP/1.1\r\nHost: t\r\n\(i == 299 ? "Connection: close\r\n" : "")\r\n".utf8)
            }
            let text = try await exchange(node.port, requests)
            #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count - 1 == 300, "\(text.suffix(300))")
        }
    }

    @Test func http10Client_withoutKeepAlive_getsItsAnswer_thenTheConnectionCloses() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            defer { Task { await node.stop() } }
            let text = try await exchange(node.port, Array("GET /health HTTP/1.0\r\n\r\n".utf8))
            #expect(text.contains(" 200 OK\r\n") && text.contains("\"uptime_seconds\""), "\(text.prefix(300))")
        }
    }

    @Test func halfClosedClient_getsItsAnswer_thenTheConnectionCloses() async throws {
        try await withMocks([.init(name: "a", latency: .milliseconds(50))]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            defer { Task { await node.stop() } }
            let text = try await exchange(node.port, Self.chatRequest("then I stop sending"), halfClose: true)
            #expect(text.hasPrefix("HTTP/1.1 200 OK"), "\(text.prefix(300))")
            #expect(text.contains("\"chat.completion\""))
        }
    }

    @Test func answers_carryDateServerAndLength() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            defer { Task { await node.stop() } }
            let text = try await exchange(node.port, Array("GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8))
            let head = text.components(separatedBy: "\r\n\r\n")[0].lowercased()
            #expect(head.contains("\r\nserver: aimesh"), "\(head)")
            #expect(head.contains("\r\ncontent-length: "), "\(head)")
            // IMF-fixdate: "date: Thu, 03 Dec 2026 04:25:04 GMT"
            let date = head.components(separatedBy: "\r\n").first { $0.hasPrefix("date: ") } ?? ""
            #expect(date.count == "date: thu, 03 dec 2026 04:25:04 gmt".count && date.hasSuffix(" gmt"), "\(date)")
        }
    }

    @Test func chunkedBodyPastTheLimit_is413_andTheConnectionServesTheNextRequest() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]), serverExtra: "max_request_size: 2KB")
            defer { Task { await node.stop() } }
            // No Content-Length, so only counting the chunks can tell: 3 × 1,500 bytes against 2 KB.
            var request = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
            for _ in 0..<3 { request += Array("5dc\r\n".utf8) + [UInt8](repeating: 0x78, count: 1500) + Array("\r\n".utf8) }
            request += Array("0\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8)
            let text = try await exchange(node.port, request)
            let answers = text.components(separatedBy: "HTTP/1.1 ").dropFirst()
            #expect(answers.first?.hasPrefix("413") == true, "\(text.prefix(500))")
            #expect(answers.first?.contains("max_request_size") == true, "the error names the setting: \(text.prefix(500))")
            #expect(answers.dropFirst().first?.hasPrefix("200 OK") == true, "the next request on the connection: \(text.suffix(300))")
            #expect(mocks[0].requestCount == 0)
        }
    }

    @Test func bytesThatAreNotHTTP_get400_andTheConnectionCloses() async throws {
        try await withMocks([.init(name: "a")]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            defer { Task { await node.stop() } }
            let text = try await exchange(node.port, Array("\u{01}\u{02} this is not HTTP at all\r\n\r\n".utf8))
            #expect(text.hasPrefix("HTTP/1.1 400"), "\(text.prefix(200))")
            // The node is fine afterwards.
            let ok = try await node.get("/health")
            #expect(ok.status == 200)
        }
    }

    @Test func shutdown_answersTheRequestInFlight_andClosesIdleConnections() async throws {
        try await withMocks([.init(name: "slow", latency: .milliseconds(400))]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]))
            let idle = try connectLoopback(node.port)
            defer { close(idle) }
            // Keep-alive: the connection ends only because the node shuts down.
            async let answer = exchange(node.port, Self.chatRequest("answer me before you go"))
            #expect(await eventually(.seconds(10)) { mocks[0].requestCount == 1 }, "the request reached the upstream")
            // Bounded: a node that never finished quiescing would hang here.
            let stopped = Counter()
            Task { await node.stop(); stopped.add("stopped") }
            #expect(await eventually(.seconds(10)) { stopped.value("stopped") == 1 }, "the node stopped")
            let text = try await answer
            #expect(text.hasPrefix("HTTP/1.1 200 OK"), "\(text.prefix(300))")
            #expect(text.contains("\"chat.completion\""))
            #expect(await eventually(.seconds(5)) { closedByPeer(idle) }, "the idle connection was closed")
        }
    }

    // MARK: server.read_timeout and quiescing, as a state machine (times in nanoseconds)

    @Test func idleState_closesAnIdleConnection_afterTheTimeout_countedFromItsLastPart() {
        var state = ConnectionIdleState(timeout: 100, now: 0)
        #expect(state.firstCheck == 100)
        #expect(state.check(now: 99) == .recheck(at: 100))
        #expect(state.check(now: 100) == .close)
        // A slow sender: its head arrived at 50, nothing since; the clock runs from 50.
        state.readHead(now: 50)
        #expect(state.check(now: 100) == .recheck(at: 150))
        state.readBody(now: 120)
        #expect(state.check(now: 150) == .recheck(at: 220))
        #expect(state.check(now: 220) == .close)
    }

    @Test func idleState_neverClosesAConnectionBeingAnswered_andRestartsTheClockAfterTheAnswer() {
        var state = ConnectionIdleState(timeout: 100, now: 0)
        state.readHead(now: 10)
        state.readEnd(now: 10)
        #expect(state.check(now: 10_000) == .none, "an answer taking longer than the timeout is not cut")
        let after = state.answered(now: 10_000)
        #expect(after == .recheck(at: 10_100))
        #expect(state.check(now: 10_099) == .recheck(at: 10_100))
        #expect(state.check(now: 10_100) == .close)
    }

    @Test func idleState_withoutATimeout_neverCloses() {
        var state = ConnectionIdleState(timeout: nil, now: 0)
        #expect(state.firstCheck == nil)
        state.readHead(now: 1)
        state.readEnd(now: 1)
        let after = state.answered(now: 2)
        #expect(after == .none)
        #expect(state.check(now: .max) == .none)
    }

    @Test func idleState_quiescing_closesAnIdleConnectionAtOnce_aBusyOneAfterItsLastAnswer() {
        var idle = ConnectionIdleState(timeout: 100, now: 0)
        let idleMayClose = idle.quiesce()
        #expect(idleMayClose)
        var busy = ConnectionIdleState(timeout: 100, now: 0)
        busy.readHead(now: 1); busy.readEnd(now: 1)
        busy.readHead(now: 2); busy.readEnd(now: 2)  // pipelined behind the first
        let busyMayClose = busy.quiesce()
        #expect(!busyMayClose)
        let first = busy.answered(now: 3), second = busy.answered(now: 4)
        #expect(first == .none, "one answer still owed")
        #expect(second == .close)
    }

    /// Sends `bytes` on a fresh connection (then half-closes it, if asked) and reads until the node closes
    /// it; gives up after 10 s. Runs on its own thread: the reads block.
    func exchange(_ port: Int, _ bytes: [UInt8], halfClose: Bool = false) async throws -> String {
        let fd = try connectLoopback(port)
        defer { close(fd) }
        var wait = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        let received = await offThePool { () -> [UInt8]? in
            var sent = 0
            while sent < bytes.count {
                let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { return nil }
                sent += n
            }
            if halfClose { shutdown(fd, Int32(SHUT_WR)) }
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n == 0 { return all }
                if n < 0 { if errno == EINTR { continue }; return nil }
                all += buffer[0..<n]
            }
        }
        guard let received else { throw TestFailure("the connection failed or timed out before the node closed it") }
        return String(decoding: received, as: UTF8.self)
    }
}
