import Foundation
@testable import Gateway
import HTTPTypes
import MeshCore
import MockUpstream
import NIOCore
import NIOHTTP1
import NIOHTTPTypesHTTP1
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

    /// A node serving model `m` from one mock, for `body`; stopped (awaited) before the mock goes.
    func withNode(_ mock: MockUpstream.Configuration = .init(name: "a"), serverExtra: String = "",
                  _ body: (TestNode, MockUpstream) async throws -> Void) async throws {
        try await withMocks([mock]) { mocks in
            let node = try await TestNode.start(yaml: Self.oneModel(mocks[0]), serverExtra: serverExtra)
            do { try await body(node, mocks[0]) } catch { await node.stop(); throw error }
            await node.stop()
        }
    }

    @Test func pipelinedRequests_areAnsweredInOrder_evenWhenTheFirstIsSlowest() async throws {
        try await withNode(.init(name: "slow", latency: .milliseconds(150))) { node, mock in
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
            #expect(mock.requestCount == 1)
        }
    }

    @Test func manyPipelinedRequests_allAnswered_inOrder() async throws {
        try await withNode() { node, mock in
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
        try await withNode() { node, mock in
            let text = try await exchange(node.port, Array("GET /health HTTP/1.0\r\n\r\n".utf8))
            #expect(text.contains(" 200 OK\r\n") && text.contains("\"uptime_seconds\""), "\(text.prefix(300))")
        }
    }

    @Test func halfClosedClient_getsItsAnswer_thenTheConnectionCloses() async throws {
        try await withNode(.init(name: "a", latency: .milliseconds(50))) { node, mock in
            let text = try await exchange(node.port, Self.chatRequest("then I stop sending"), halfClose: true)
            #expect(text.hasPrefix("HTTP/1.1 200 OK"), "\(text.prefix(300))")
            #expect(text.contains("\"chat.completion\""))
        }
    }

    @Test func answers_carryDateServerAndLength() async throws {
        try await withNode() { node, mock in
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
        try await withNode(serverExtra: "max_request_size: 2KB") { node, mock in
            // No Content-Length, so only counting the chunks can tell: 3 × 1,500 bytes against 2 KB.
            var request = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
            for _ in 0..<3 { request += Array("5dc\r\n".utf8) + [UInt8](repeating: 0x78, count: 1500) + Array("\r\n".utf8) }
            request += Array("0\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8)
            let text = try await exchange(node.port, request)
            let answers = text.components(separatedBy: "HTTP/1.1 ").dropFirst()
            #expect(answers.first?.hasPrefix("413") == true, "\(text.prefix(500))")
            #expect(answers.first?.contains("max_request_size") == true, "the error names the setting: \(text.prefix(500))")
            #expect(answers.dropFirst().first?.hasPrefix("200 OK") == true, "the next request on the connection: \(text.suffix(300))")
            #expect(mock.requestCount == 0)
        }
    }

    @Test func bytesThatAreNotHTTP_get400_andTheConnectionCloses() async throws {
        try await withNode() { node, mock in
            let text = try await exchange(node.port, Array("\u{01}\u{02} this is not HTTP at all\r\n\r\n".utf8))
            #expect(text.hasPrefix("HTTP/1.1 400"), "\(text.prefix(200))")
            // The node is fine afterwards.
            let ok = try await node.get("/health")
            #expect(ok.status == 200)
        }
    }

    /// Undoes chunked framing; nil when the bytes are not well-formed chunks ending in the last chunk.
    static func dechunk(_ text: Substring) -> String? {
        var rest = text, body = ""
        while true {
            guard let line = rest.range(of: "\r\n"), let size = Int(rest[..<line.lowerBound], radix: 16) else { return nil }
            rest = rest[line.upperBound...]
            if size == 0 { return rest == "\r\n" ? body : nil }
            let utf8 = Array(rest.utf8)
            guard utf8.count >= size + 2, utf8[size] == 13, utf8[size + 1] == 10 else { return nil }
            body += String(decoding: utf8[..<size], as: UTF8.self)
            rest = Substring(String(decoding: utf8[(size + 2)...], as: UTF8.self))
        }
    }

    @Test func streamedAnswer_isChunked_andItsChunksCarryEveryEvent() async throws {
        try await withNode() { node, mock in
            let chat = chatBody("m", "stream to me", stream: true).bytes
            let request = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: \(chat.count)\r\n\r\n".utf8) + chat
            let text = try await exchange(node.port, request)
            let parts = text.components(separatedBy: "\r\n\r\n")
            let head = parts[0].lowercased()
            #expect(head.hasPrefix("http/1.1 200 ok") && head.contains("\r\ntransfer-encoding: chunked"), "\(head)")
            #expect(!head.contains("content-length"), "\(head)")
            #expect(head.contains("\r\nconnection: close"), "the answer says the connection closes: \(head)")
            let body = Self.dechunk(text[text.range(of: "\r\n\r\n")!.upperBound...])
            #expect(body != nil, "well-formed chunks: \(text.suffix(400))")
            let events = (body ?? "").components(separatedBy: "\n\n").filter { $0.hasPrefix("data: ") }
            #expect(events.count >= 3 && events.last == "data: [DONE]", "\(body ?? "")")
        }
    }

    @Test func headRequest_getsItsHeadWithoutABody_andTheConnectionGoesOn() async throws {
        try await withNode() { node, mock in
            // If the HEAD answer carried a body, the next answer would not start where the client looks.
            let text = try await exchange(node.port, Array("HEAD /v1/models HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8))
            let first = text.components(separatedBy: "\r\n\r\n")[0]
            // Answered as GET would be, with GET's length, without the body.
            #expect(first.hasPrefix("HTTP/1.1 200 OK") && first.lowercased().contains("\r\ncontent-length: "), "\(text.prefix(300))")
            let second = text[text.range(of: "\r\n\r\n")!.upperBound...]
            #expect(second.hasPrefix("HTTP/1.1 200 OK"), "the next answer follows the HEAD answer's head at once: \(text.prefix(600))")
            #expect(second.contains("\"uptime_seconds\""))
        }
    }

    @Test func clientExpecting100Continue_isAskedForItsBody_beforeSendingIt() async throws {
        try await withNode() { node, mock in
            let chat = chatBody("m", "may I?").bytes
            let head = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: \(chat.count)\r\n\r\n".utf8)
            let fd = try connectLoopback(node.port)
            defer { close(fd) }
            var wait = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
            // Send the head only, read the interim answer, then send the body and read to the close.
            let (interim, rest) = await offThePool { () -> (String, String) in
                func sendAll(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
                func readUntil(_ done: (String) -> Bool) -> String {
                    var all: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 4096)
                    while !done(String(decoding: all, as: UTF8.self)) {
                        let n = recv(fd, &buffer, buffer.count, 0)
                        if n <= 0 { break }
                        all += buffer[0..<n]
                    }
                    return String(decoding: all, as: UTF8.self)
                }
                sendAll(head)
                let interim = readUntil { $0.contains("\r\n\r\n") }
                sendAll(chat)
                return (interim, readUntil { _ in false })
            }
            #expect(interim == "HTTP/1.1 100 Continue\r\n\r\n", "\(interim)")
            #expect(rest.hasPrefix("HTTP/1.1 200 OK") && rest.contains("\"chat.completion\""), "\(rest.prefix(300))")
        }
    }

    @Test func http10Client_withKeepAlive_isToldSo_andServedAgainOnTheSameConnection() async throws {
        try await withNode() { node, mock in
            let text = try await exchange(node.port, Array("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /v1/models HTTP/1.0\r\n\r\n".utf8))
            let answers = text.components(separatedBy: "HTTP/1.1 ").dropFirst()
            #expect(answers.count == 2, "\(text.prefix(800))")
            #expect(answers.first?.lowercased().contains("\r\nconnection: keep-alive\r\n") == true, "\(text.prefix(400))")
            #expect(answers.dropFirst().first?.lowercased().contains("\r\nconnection: close\r\n") == true, "\(text.suffix(400))")
            #expect(answers.dropFirst().first?.contains("\"object\":\"list\"") == true)
        }
    }

    @Test func requestConversion_matchesNIOHTTPTypesHTTP1() throws {
        var heads: [HTTPRequestHead] = []
        heads.append(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions?x=1",
                                     headers: ["Host": "node:8080", "Content-Type": "application/json", "host": "second", "Cookie": "a=1; b=2"]))
        heads.append(HTTPRequestHead(version: .http1_0, method: .GET, uri: "/health", headers: ["X-Note": "value", "bad name": "dropped"]))
        heads.append(HTTPRequestHead(version: .http1_1, method: .RAW(value: "QUERY"), uri: "/", headers: [:]))
        heads.append(HTTPRequestHead(version: .http1_1, method: .GET, uri: "http://node:8080/v1/models?all=1", headers: ["HOST": "node:8080"]))
        for head in heads {
            let mine = try LeanHTTP1Handler.request(from: head)
            let theirs = try HTTPRequest(head, secure: false, splitCookie: false)
            #expect(mine == theirs, "\(head)")
        }
        #expect(try LeanHTTP1Handler.request(from: heads[3]).path == "/v1/models?all=1", "absolute form is reduced to its path")
        let converted = try LeanHTTP1Handler.request(from: heads[0])
        #expect(converted.authority == "node:8080" && converted.headerFields[HTTPField.Name("host")!] == "second", "only the first Host leaves the fields")
        #expect(throws: (any Error).self) { try LeanHTTP1Handler.request(from: HTTPRequestHead(version: .http1_1, method: .RAW(value: "BAD METHOD"), uri: "/", headers: [:])) }
    }

    // MARK: Answers as bytes (HTTP1ResponseEncoding)

    @Test func encoding_framesEachKindOfAnswer() {
        typealias E = HTTP1ResponseEncoding
        let length: HTTPFields = [.contentLength: "5"], none: HTTPFields = [:]
        #expect(E.framing(status: .ok, fields: length, headRequest: false, http11: true) == .contentLength)
        #expect(E.framing(status: .ok, fields: none, headRequest: false, http11: true) == .chunked)
        #expect(E.framing(status: .ok, fields: none, headRequest: false, http11: false) == .untilClose)
        #expect(E.framing(status: .ok, fields: length, headRequest: false, http11: false) == .contentLength)
        #expect(E.framing(status: .ok, fields: length, headRequest: true, http11: true) == .noBody)
        #expect(E.framing(status: .noContent, fields: none, headRequest: false, http11: true) == .noBody)
        #expect(E.framing(status: .notModified, fields: length, headRequest: false, http11: true) == .noBody)
        #expect(E.framing(status: .continue, fields: none, headRequest: false, http11: true) == .noBody)
    }

    @Test func encoding_writesTheHeadAsBytes() {
        typealias E = HTTP1ResponseEncoding
        func head(_ response: HTTPResponse, _ framing: ResponseFraming, _ connection: E.ConnectionHeader, server: String? = "aimesh") -> String {
            var buffer = ByteBuffer()
            E.writeHead(response, framing: framing, connection: connection, date: "Thu, 03 Dec 2026 07:00:00 GMT", server: server, into: &buffer)
            return String(buffer: buffer)
        }
        // Names go out as HTTPTypes spells them (its well-known names are capitalized).
        let fields: HTTPFields = [.contentType: "application/json", .contentLength: "2", .date: "theirs", .transferEncoding: "gzip", .connection: "upgrade"]
        #expect(head(HTTPResponse(status: .ok, headerFields: fields), .contentLength, .none)
            == "HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 07:00:00 GMT\r\nserver: aimesh\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n")
        #expect(head(HTTPResponse(status: .tooManyRequests, headerFields: [.retryAfter: "3"]), .chunked, .close, server: nil)
            == "HTTP/1.1 429 Too Many Requests\r\ndate: Thu, 03 Dec 2026 07:00:00 GMT\r\nRetry-After: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        // A 204 carries no length; a HEAD answer keeps the length of what GET would send.
        #expect(!head(HTTPResponse(status: .noContent, headerFields: [.contentLength: "0"]), .noBody, .keepAlive).lowercased().contains("content-length"))
        #expect(head(HTTPResponse(status: .ok, headerFields: [.contentLength: "10"]), .noBody, .keepAlive).hasSuffix("Content-Length: 10\r\nconnection: keep-alive\r\n\r\n"))
        // A value HTTPTypes was given with a line break cannot split the head.
        let sneaky = head(HTTPResponse(status: .ok, headerFields: [HTTPField.Name("x-note")!: "a\r\nset-cookie: b"]), .chunked, .none)
        #expect(!sneaky.contains("\r\nset-cookie"), "\(sneaky)")
        #expect(head(HTTPResponse(status: .init(code: 599, reasonPhrase: "Odd")), .chunked, .none).hasPrefix("HTTP/1.1 599 Odd\r\n"))
        #expect(head(HTTPResponse(status: .init(code: 103, reasonPhrase: "Early Hints")), .noBody, .none).hasPrefix("HTTP/1.1 103 Early Hints\r\n"))
        #expect(head(HTTPResponse(status: .init(code: 7, reasonPhrase: "")), .noBody, .none).hasPrefix("HTTP/1.1 007 \r\n"))
        // Names as long as the ones the encoder writes itself stay; values in UTF-8 are counted in bytes.
        let lookalikes: HTTPFields = [HTTPField.Name("x-ab")!: "1", HTTPField.Name("x-abcd")!: "2", HTTPField.Name("x-abcdefgh")!: "3",
                                      HTTPField.Name("x-aiproxy-cost")!: "4", HTTPField.Name("x-aiproxy-node-ab")!: "5",
                                      HTTPField.Name("x-note")!: "café ✓", .contentLength: "9"]
        #expect(head(HTTPResponse(status: .ok, headerFields: lookalikes), .chunked, .keepAlive)
            == "HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 07:00:00 GMT\r\nserver: aimesh\r\nx-ab: 1\r\nx-abcd: 2\r\nx-abcdefgh: 3\r\n"
                + "x-aiproxy-cost: 4\r\nx-aiproxy-node-ab: 5\r\nx-note: café ✓\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n")
        // The head goes after what the buffer holds already.
        var buffer = ByteBuffer(string: "before|")
        E.writeHead(HTTPResponse(status: .ok), framing: .untilClose, connection: .close, date: "D", server: nil, into: &buffer)
        #expect(String(buffer: buffer) == "before|HTTP/1.1 200 OK\r\ndate: D\r\nconnection: close\r\n\r\n")
    }

    @Test func encoding_writesChunksAndTheLastChunk() {
        typealias E = HTTP1ResponseEncoding
        var buffer = ByteBuffer()
        E.writeChunk(ByteBuffer(string: String(repeating: "x", count: 300)), into: &buffer)
        #expect(String(buffer: buffer) == "12c\r\n" + String(repeating: "x", count: 300) + "\r\n")
        buffer.clear()
        E.writeChunk(ByteBuffer(string: "ok"), into: &buffer)
        E.writeLastChunk(trailers: [HTTPField.Name("x-tokens")!: "7"], into: &buffer)
        #expect(String(buffer: buffer) == "2\r\nok\r\n0\r\nx-tokens: 7\r\n\r\n")
        buffer.clear()
        E.writeLastChunk(trailers: nil, into: &buffer)
        #expect(String(buffer: buffer) == "0\r\n\r\n")
        for value in [0, 7, 10, 99, 100, 65_535, 1 << 40] {
            buffer.clear()
            E.writeHex(value, into: &buffer)
            #expect(String(buffer: buffer) == String(value, radix: 16))
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
        #expect(!busy.answeringLast)
        let busyMayClose = busy.quiesce()
        #expect(!busyMayClose)
        #expect(!busy.answeringLast, "two answers owed: the first is not the last")
        let first = busy.answered(now: 3)
        #expect(first == .none, "one answer still owed")
        #expect(busy.answeringLast, "the second answer is the last (its head says Connection: close)")
        let second = busy.answered(now: 4)
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
