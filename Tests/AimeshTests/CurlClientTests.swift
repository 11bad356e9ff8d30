import Foundation
import CurlHTTP
import MeshCore
import MockUpstream
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite(.timeLimit(.minutes(1))) struct CurlClientTests {
    let client = CurlClient()

    /// A node's curl thread runs as batch work unless `server.io_scheduling: normal` (where the kernel has
    /// the policy at all: a probe thread asks first, so the test holds on any kernel).
    @Test func aNodesCurlThread_runsAsBatch_unlessConfiguredNormal() async throws {
        let kernelHasBatch = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            Thread { continuation.resume(returning: scheduleCurrentThreadAsBatch() && currentThreadIsBatch()) }.start()
        }
        #expect(!currentThreadIsBatch(), "the probe changed its own thread only")
        let plain = CurlClient()
        #expect(await eventually { plain.runsAsBatch != nil })
        #expect(plain.runsAsBatch == false, "a plain client keeps an ordinary thread")
        for (setting, batch) in [("", kernelHasBatch), ("io_scheduling: normal", false), ("io_scheduling: batch", kernelHasBatch)] {
            let node = try await TestNode.start(yaml: "", name: "sched", serverExtra: setting)
            let started = await eventually { node.runtime.client.runsAsBatch != nil }
            let runsAsBatch = node.runtime.client.runsAsBatch
            await node.stop()
            #expect(started, "the curl thread started (\(setting))")
            #expect(runsAsBatch == batch, "\(setting.isEmpty ? "default" : setting): batch \(String(describing: runsAsBatch))")
        }
    }

    @Test func post_getsTheWholeJSONBody_andReusesTheConnection() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let url = mocks[0].baseURL + "/v1/chat/completions"
            for _ in 0..<3 {
                let (head, body) = try await client.send(.post(url, json: chatBody("x").bytes))
                #expect(head.status == 200)
                #expect(head.header("content-type") == "application/json")
                #expect(try JSONParser.parse(body)["choices"]?[0]?["message"]?["content"]?.stringValue == "Hello from m! You said: hello there")
            }
            #expect(mocks[0].connectionCount == 1)
            #expect(mocks[0].lastRequest?.header("expect") == nil)
            // Cleartext hops go without a User-Agent (only TLS endpoints get one).
            #expect(mocks[0].lastRequest?.header("user-agent") == nil)
            #expect(mocks[0].lastRequest?.header("content-type") == "application/json")
        }
    }

    /// Header names match without ASCII case and without lowercased copies; only letters fold.
    @Test func headerNames_matchWithoutASCIICase() {
        let head = ResponseHead(status: 200, headers: [("Content-Type", "application/json"), ("X-AIProxy-Route", "b,local"),
                                                       ("x-aiproxy-cost", "0.1"), ("X-Other", "1"), ("x-aiproxy", "short")])
        #expect(head.header("content-type") == "application/json")
        #expect(head.header("CONTENT-TYPE") == "application/json")
        #expect(head.header("content-typ") == nil)
        #expect(head.header("content-type2") == nil)
        #expect(head.headers(withPrefix: "x-aiproxy-").map(\.name) == ["X-AIProxy-Route", "x-aiproxy-cost"])
        #expect("X-AIPROXY-ROUTE".equalsIgnoringASCIICase("x-aiproxy-route"))
        // Only ASCII letters fold: '[' (0x5B) is not '{' (0x7B), and non-ASCII bytes compare exactly.
        #expect(!"[".equalsIgnoringASCIICase("{"))
        #expect(!"É".equalsIgnoringASCIICase("é"))
        #expect("".hasPrefixIgnoringASCIICase(""))
        #expect(!"x".hasPrefixIgnoringASCIICase("xy"))
    }

    /// The response head is read from curl's header lines as bytes: an interim 100 answer is dropped, the
    /// status needs no reason phrase, values lose surrounding blanks (not inner ones or colons), an empty
    /// value stays empty.
    @Test func responseHead_isReadFromTheRawLines() async throws {
        let head = "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 201\r\nX-Url: \t http://a:b/c \t\r\nX-Empty:\r\nX-Inner:  one  two\r\nContent-Length: 2\r\n\r\nok"
        let (port, served) = try oneShotServer(answer: Array(head.utf8))
        let (response, body) = try await client.send(OutboundRequest(url: "http://127.0.0.1:\(port)/"))
        await served.value
        #expect(response.status == 201)
        #expect(response.header("x-url") == "http://a:b/c")
        #expect(response.header("x-empty") == "")
        #expect(response.header("x-inner") == "one  two")
        #expect(response.headers.count == 4, "the 100 answer's head is not kept: \(response.headers)")
        #expect(body == Array("ok".utf8))
    }

    /// An `AbortSignal` ends a transfer from outside with `.aborted` and its reason: one waiting for its head
    /// (the mock answers after 5 s), a stream mid-body, and one whose signal fired before it started.
    @Test func abortSignal_endsTheTransfer_withItsReason() async throws {
        try await withMocks([.init(name: "slow", latency: .seconds(5)), .init(name: "fast", eventInterval: .milliseconds(50))]) { mocks in
            let waiting = AbortSignal()
            let started = ContinuousClock.now
            async let head: (ResponseHead, [UInt8]) = client.send(OutboundRequest(method: "POST", url: mocks[0].baseURL + "/v1/chat/completions",
                                                                                   body: chatBody("x").bytes, abort: waiting))
            #expect(await eventually { mocks[0].requestCount >= 1 })
            waiting.fire("the peer was declared dead")
            do {
                _ = try await head
                Issue.record("the transfer should have been aborted")
            } catch let error as TransferError {
                #expect(error.kind == .aborted && error.message == "the peer was declared dead" && error.phase == .beforeResponse)
            }
            #expect(ContinuousClock.now - started < .seconds(4), "not after the answer")

            let streaming = AbortSignal()
            let stream = try await client.start(.post(mocks[1].baseURL + "/v1/chat/completions", json: chatBody("x", "one two three four five six", stream: true).bytes)
                                                .with(abort: streaming))
            _ = try await stream.next()
            streaming.fire("stop")
            await #expect(throws: TransferError.self) { while try await stream.next() != nil {} }

            let early = AbortSignal()
            early.fire("before it began")
            do {
                _ = try await client.send(OutboundRequest(url: mocks[1].baseURL + "/v1/models", abort: early))
                Issue.record("an aborted request is not sent")
            } catch let error as TransferError {
                #expect(error.kind == .aborted && error.message == "before it began")
            }
            let (after, _) = try await client.send(OutboundRequest(url: mocks[1].baseURL + "/v1/models"))
            #expect(after.status == 200, "the client is fine afterwards")
        }
    }

    /// Request headers reach the upstream as given, long ones and non-ASCII ones included; a header that
    /// would split the request (a line break in its name or value, a colon in its name) is refused before
    /// anything is sent.
    @Test func requestHeaders_arriveWhole_andLineBreaksAreRefused() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let url = mocks[0].baseURL + "/v1/chat/completions"
            let long = String(repeating: "AbC0+/=", count: 60) + "-é✓"
            let (head, _) = try await client.send(.post(url, json: chatBody("x").bytes, headers: [("x-long", long), ("X-Mixed-Case", "v")]))
            #expect(head.status == 200)
            #expect(mocks[0].lastRequest?.header("x-long") == long)
            #expect(mocks[0].lastRequest?.header("x-mixed-case") == "v")
            let sent = mocks[0].requestCount
            for header in [("x-evil", "a\r\nx-injected: 1"), ("x-evil\r\nx-injected", "1"), ("x-evil:x", "1"), ("x-evil", "a\nb")] {
                do {
                    _ = try await client.send(.post(url, json: chatBody("x").bytes, headers: [header]))
                    Issue.record("a header with a line break or a colon in its name was sent: \(header)")
                } catch let error as TransferError {
                    #expect(error.kind == .invalidRequest, "\(error)")
                }
            }
            #expect(mocks[0].requestCount == sent, "nothing was sent")
        }
    }

    /// Requests of different kinds through one client, whose easy handles are reused without a reset: nothing
    /// of one (method, body, headers, timeouts) reaches the next.
    @Test func mixedRequests_carryNothingOver() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let base = mocks[0].baseURL
            let (postHead, _) = try await client.send(.post(base + "/v1/chat/completions", json: chatBody("x").bytes, headers: [("x-one", "1")]))
            #expect(postHead.status == 200)
            #expect(mocks[0].lastRequest?.header("x-one") == "1")
            let (getHead, getBody) = try await client.send(OutboundRequest(url: base + "/v1/models"))
            #expect(getHead.status == 200)
            #expect(try JSONParser.parse(getBody)["data"]?[0]?["id"]?.stringValue == "mock-model")
            let seen = try #require(mocks[0].lastRequest)
            #expect(seen.method == "GET" && seen.body.isEmpty && seen.header("x-one") == nil && seen.header("content-type") == nil)
            let stream = try await client.start(.post(base + "/v1/chat/completions", json: chatBody("x", stream: true).bytes))
            while try await stream.next() != nil {}
            let (again, _) = try await client.send(OutboundRequest(url: base + "/v1/models"))
            #expect(again.status == 200 && mocks[0].lastRequest?.method == "GET")

            // HEAD reads no body; the POST after it must read its whole answer again.
            let (headHead, headBody) = try await client.send(OutboundRequest(method: "HEAD", url: base + "/v1/models"))
            #expect(mocks[0].lastRequest?.method == "HEAD" && headBody.isEmpty && headHead.status > 0)
            let (afterHead, afterHeadBody) = try await client.send(.post(base + "/v1/chat/completions", json: chatBody("x").bytes))
            #expect(afterHead.status == 200 && mocks[0].lastRequest?.method == "POST")
            #expect(try JSONParser.parse(afterHeadBody)["choices"] != nil, "the answer to a POST after a HEAD has its body")
            // A method of its own, with and without a body, and plain GET and POST after it.
            _ = try await client.send(OutboundRequest(method: "PUT", url: base + "/v1/chat/completions", body: chatBody("x").bytes))
            #expect(mocks[0].lastRequest?.method == "PUT" && mocks[0].lastRequest?.body.isEmpty == false)
            _ = try await client.send(OutboundRequest(method: "DELETE", url: base + "/v1/models"))
            #expect(mocks[0].lastRequest?.method == "DELETE" && mocks[0].lastRequest?.body.isEmpty == true)
            _ = try await client.send(OutboundRequest(url: base + "/v1/models"))
            #expect(mocks[0].lastRequest?.method == "GET" && mocks[0].lastRequest?.body.isEmpty == true)
            _ = try await client.send(.post(base + "/v1/chat/completions", json: chatBody("x").bytes))
            #expect(mocks[0].lastRequest?.method == "POST")

            // A total timeout is its transfer's alone: the next, without one, may take longer.
            var quick = Timeouts()
            quick.total = .milliseconds(150)
            let (timed, _) = try await client.send(OutboundRequest(url: base + "/v1/models", timeouts: quick))
            #expect(timed.status == 200)
            mocks[0].enqueue(.delay(.milliseconds(400)))
            let (slow, _) = try await client.send(OutboundRequest(url: base + "/v1/models"))
            #expect(slow.status == 200, "no total timeout left over from the transfer before")
        }
    }

    /// Transfers hand curl their URL parsed once per URL: each one still goes to its own server, path and
    /// query, on handles reused between URLs, and a URL curl cannot parse fails as an error of its own.
    @Test func eachTransfer_goesWhereItsURLSays() async throws {
        try await withMocks([.init(name: "a"), .init(name: "b")]) { mocks in
            let targets = [(0, "/v1/chat/completions"), (1, "/v1/chat/completions"), (0, "/v1/models"), (1, "/v1/models?limit=2"),
                           (0, "/v1/chat/completions"), (1, "/v1/chat/completions")]
            for (index, path) in targets {
                let (head, _) = try await client.send(path.contains("chat")
                    ? .post(mocks[index].baseURL + path, json: chatBody("x").bytes)
                    : OutboundRequest(url: mocks[index].baseURL + path))
                #expect(head.status == 200)
                #expect(mocks[index].lastRequest?.path == path, "\(path) went to mock \(index)")
            }
            #expect(mocks[0].requestCount == 3 && mocks[1].requestCount == 3)
            for bad in ["http://[::1/v1/models", "http://127.0.0.1:99999/v1/models", "notascheme://x/y"] {
                await #expect(throws: TransferError.self, "\(bad)") { _ = try await client.send(OutboundRequest(url: bad)) }
            }
            let (after, _) = try await client.send(OutboundRequest(url: mocks[1].baseURL + "/v1/models"))
            #expect(after.status == 200 && mocks[1].lastRequest?.path == "/v1/models")
        }
    }

    @Test func send_refusesABodyOverItsLimit_andCutsTheStreamWithAnError() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let url = mocks[0].baseURL + "/v1/chat/completions"
            await #expect(throws: TransferError.self) {
                _ = try await client.send(.post(url, json: chatBody("x").bytes), maxBytes: 16)
            }
            // The whole-body path reports a cut stream as an error, not as a short success.
            mocks[0].enqueue(.cutAfter(events: 2))
            await #expect(throws: TransferError.self) {
                _ = try await client.send(.post(url, json: chatBody("x", stream: true).bytes))
            }
            let (head, _) = try await client.send(.post(url, json: chatBody("x").bytes))
            #expect(head.status == 200, "the client is fine afterwards")
        }
    }

    @Test func proxyVariables_areHonoured_exceptForLoopback() async throws {
        // The mock answers a proxy-form request line (`POST http://host/…`) like any other, so it can
        // stand in for a proxy: a host that does not resolve is reachable only through it. The variables
        // are set for a child (`aimesh chat`, which sends with CurlClient), not here: setenv while other
        // threads start processes or read the environment can crash them.
        try await withMocks([.init(name: "proxy"), .init(name: "direct")]) { mocks in
            var environment = ProcessInfo.processInfo.environment
            environment["http_proxy"] = mocks[0].baseURL
            environment["no_proxy"] = nil
            environment["NO_PROXY"] = nil
            let (status, output) = try await Child.run(["chat", "--node", "http://upstream.invalid", "-m", "x", "--no-stream", "hello there"], environment: environment)
            #expect(status == 0, "\(output)")
            #expect(output.contains("Hello from proxy! You said: hello there"), "\(output)")
            #expect(mocks[0].lastRequest?.path.hasPrefix("http://upstream.invalid/") == true, "the request went through the proxy")
            // Loopback never goes through it: a proxy that does not exist does not matter.
            environment["http_proxy"] = "http://127.0.0.1:1"
            let (direct, answer) = try await Child.run(["chat", "--node", mocks[1].baseURL, "-m", "x", "--no-stream", "hello there"], environment: environment)
            #expect(direct == 0, "\(answer)")
            #expect(answer.contains("Hello from direct! You said: hello there"), "\(answer)")
        }
    }

    @Test func stream_arrivesChunkByChunk() async throws {
        try await withMocks([.init(name: "m", eventInterval: .milliseconds(5))]) { mocks in
            let response = try await client.start(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x", stream: true).bytes))
            #expect(response.head.header("content-type") == "text/event-stream")
            var chunks = 0
            var parser = SSEParser()
            var events: [SSEEvent] = []
            while let chunk = try await response.next() {
                chunks += 1
                events += try parser.feed(chunk)
            }
            #expect(chunks >= 5)
            #expect(events.last?.isDone == true)
        }
    }

    /// A reader that falls behind pauses the transfer, and curl hands the refused bytes over again after the
    /// unpause: none may be queued twice (they once were, and a paused stream repeated a chunk).
    @Test func pausedStream_deliversEveryByteOnce() async throws {
        var configuration = CurlClient.Configuration()
        configuration.pauseAboveBufferedBytes = 2  // pause whenever a chunk waits unread
        let client = CurlClient(configuration: configuration)
        try await withMocks([.init(name: "m")]) { mocks in
            // The mock echoes the prompt word by word: 2,000 numbered words of ~500 bytes, about 1 MB of stream.
            let words = (0..<2_000).map { "w\($0)-" + String(repeating: "x", count: 500) }
            let body = chatBody("x", words.joined(separator: " "), stream: true).bytes
            let response = try await client.start(.post(mocks[0].baseURL + "/v1/chat/completions", json: body))
            var parser = SSEParser()
            var text = ""
            while let chunk = try await response.next() {
                for event in try parser.feed(chunk) where !event.isDone {
                    text += try JSONParser.parse(event.data)["choices"]?[0]?["delta"]?["content"]?.stringValue ?? ""
                }
            }
            let echoed = text.split(separator: " ").filter { $0.hasPrefix("w") && $0.contains("-") }.map(String.init)
            #expect(client.pauses > 0, "the reader fell behind at least once, so the pause path was taken")
            #expect(echoed.count == words.count)
            #expect(echoed == words, "every word once, in order")
            // The handle goes back for reuse: whatever pausing left in it must not reach the next transfers.
            for _ in 0..<3 {
                let (head, answer) = try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes))
                let choices = try JSONParser.parse(answer)["choices"]
                #expect(head.status == 200 && choices != nil)
                let again = try await client.start(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x", stream: true).bytes))
                var events = 0
                var parser = SSEParser()
                while let chunk = try await again.next() { events += try parser.feed(chunk).count }
                #expect(events > 1)
            }
        }
    }

    /// A burst of streams to one cleartext upstream opens a connection each; none waits for another's
    /// connection to come free (it once did: with PIPEWAIT, most of a burst queued behind the first streams).
    @Test func burstOfStreams_allOpenAtOnce() async throws {
        try await withMocks([.init(name: "m", eventInterval: .seconds(1))]) { mocks in
            let count = 30
            let url = mocks[0].baseURL + "/v1/chat/completions"
            let body = chatBody("x", stream: true).bytes
            let heads = try await withThrowingTaskGroup(of: OutboundResponse?.self) { group -> [OutboundResponse] in
                for _ in 0..<count { group.addTask { try await client.start(.post(url, json: body)) } }
                // Every stream lasts about 9 s: if heads queue behind whole streams, give up long before.
                group.addTask { try await Task.sleep(for: .seconds(8)); return nil }
                var heads: [OutboundResponse] = []
                for try await head in group {
                    guard let head else { break }
                    heads.append(head)
                    if heads.count == count { break }
                }
                group.cancelAll()
                return heads
            }
            #expect(heads.count == count, "every stream's head arrived while the others were still open")
            #expect(mocks[0].activeConnections == count, "one upstream connection per open stream")
            for head in heads { head.cancel() }
        }
    }

    @Test func firstByteTimeout_failsBeforeAnyResponse() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            mocks[0].enqueue(.delay(.seconds(30)))
            let started = ContinuousClock.now
            await #expect {
                try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes, timeouts: Timeouts(firstByte: .milliseconds(200))))
            } throws: { error in
                (error as? TransferError)?.kind == .firstByteTimeout && (error as? TransferError)?.phase == .beforeResponse
            }
            // Far less than the 30 s the server would take (generous for a busy 2-core machine).
            #expect(ContinuousClock.now - started < .seconds(10))
            // The next transfer, on the reused handle, has no first-byte limit of its own and waits longer.
            mocks[0].enqueue(.delay(.milliseconds(400)))
            let (head, _) = try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes,
                                                        timeouts: Timeouts(firstByte: nil)))
            #expect(head.status == 200)
        }
    }

    /// The engine walks its transfers only when the earliest deadline it knows of comes: a short first-byte
    /// limit and a short idle limit still fire on time while a transfer waits for a first byte 30 s away and
    /// a stream sits under a 30 s idle limit. Fails if a deadline noted when a transfer starts is lost (the
    /// walk would then wait for the far ones).
    @Test func shortDeadlines_fireOnTime_whileFarOnesAreOpen() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let url = mocks[0].baseURL + "/v1/chat/completions"
            mocks[0].enqueue(.delay(.seconds(30)))
            let slow = Task { try await client.send(.post(url, json: chatBody("x").bytes, timeouts: Timeouts(firstByte: .seconds(30)))) }
            try #require(await eventually { mocks[0].requestCount >= 1 }, "the slow transfer reached the server")
            mocks[0].enqueue(.stall)
            let open = try await client.start(.post(url, json: chatBody("x", stream: true).bytes, timeouts: Timeouts(idle: .seconds(30))))

            let started = ContinuousClock.now
            mocks[0].enqueue(.delay(.seconds(30)))
            await #expect {
                try await client.send(.post(url, json: chatBody("x").bytes, timeouts: Timeouts(firstByte: .milliseconds(200))))
            } throws: { error in
                (error as? TransferError)?.kind == .firstByteTimeout
            }
            mocks[0].enqueue(.stall)
            let stalled = try await client.start(.post(url, json: chatBody("x", stream: true).bytes, timeouts: Timeouts(idle: .milliseconds(200))))
            await #expect {
                while try await stalled.next() != nil {}
            } throws: { error in
                (error as? TransferError)?.kind == .idleTimeout
            }
            // Far less than the 30 s of the open ones (generous for a busy 2-core machine).
            #expect(ContinuousClock.now - started < .seconds(10))
            slow.cancel()
            open.cancel()
        }
    }

    @Test func connectionReset_isReportedBeforeResponse() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            mocks[0].enqueue(.reset)
            await #expect {
                try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes))
            } throws: { error in
                (error as? TransferError)?.phase == .beforeResponse
            }
        }
    }

    @Test func streamCut_isReportedDuringBody() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            mocks[0].enqueue(.cutAfter(events: 2))
            let response = try await client.start(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x", stream: true).bytes))
            await #expect {
                while try await response.next() != nil {}
            } throws: { error in
                (error as? TransferError)?.phase == .duringBody
            }
        }
    }

    @Test func stalledStream_hitsTheIdleTimeout() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            mocks[0].enqueue(.stall)
            let response = try await client.start(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x", stream: true).bytes, timeouts: Timeouts(idle: .milliseconds(200))))
            await #expect {
                while try await response.next() != nil {}
            } throws: { error in
                (error as? TransferError)?.kind == .idleTimeout
            }
        }
    }

    @Test func cancellingTheTask_endsTheTransfer() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            mocks[0].enqueue(.delay(.seconds(20)))
            let task = Task { try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes)) }
            // Cancel once the request has reached the server.
            while mocks[0].requestCount == 0 { await Task.yield() }
            task.cancel()
            await #expect {
                _ = try await task.value
            } throws: { error in
                (error as? TransferError)?.kind == .cancelled
            }
            // The cancelled transfer's handle is kept for reuse; the next transfers run whole on it.
            for _ in 0..<3 {
                let (head, answer) = try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes))
                let choices = try JSONParser.parse(answer)["choices"]
                #expect(head.status == 200 && choices != nil)
            }
        }
    }

    @Test func refusedConnection_andBadScheme_areErrors() async throws {
        await #expect {
            try await client.send(OutboundRequest(url: "http://127.0.0.1:1/nothing", timeouts: Timeouts(connect: .seconds(2))))
        } throws: { error in
            (error as? TransferError)?.kind == .couldNotConnect
        }
        await #expect(throws: TransferError.self) { try await client.send(OutboundRequest(url: "ftp://example.org/")) }
    }

    /// 8 MiB up and the same echoed back down: more than a socket buffer holds either way, so curl waits
    /// to write and the engine waits for the server to read, then reads the answer in many pieces.
    @Test func largeBodies_arriveWhole_bothWays() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let text = String(repeating: "abcdefgh", count: 1 << 20)
            let request = chatBody("x", text).bytes
            let (head, body) = try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: request), maxBytes: 64 << 20)
            #expect(head.status == 200)
            #expect(mocks[0].lastRequest?.body == request, "every byte of the upload arrived, in order")
            let answer = try JSONParser.parse(body)["choices"]?[0]?["message"]?["content"]?.stringValue
            #expect(answer == "Hello from m! You said: " + text, "every byte of the answer came back")
        }
    }

    /// The server closes the connection after an answer: the next request opens a new connection
    /// instead of failing on the dead one.
    @Test func serverClosingTheConnection_isNotReusedAfterwards() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let url = mocks[0].baseURL + "/v1/chat/completions"
            let (first, _) = try await client.send(.post(url, json: chatBody("x").bytes, headers: [("Connection", "close")]))
            #expect(first.status == 200)
            let (second, _) = try await client.send(.post(url, json: chatBody("x").bytes))
            #expect(second.status == 200)
            #expect(mocks[0].connectionCount == 2)
        }
    }

    /// The engine's thread names itself: a new thread inherits the name of the event loop that started it,
    /// and `top -H` or a profile then showed curl's work as the event loop's.
    @Test func engineThread_isNamed() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            // A response is read by the engine's thread (the submitter only sends), so after one answer it has run.
            let (head, _) = try await client.send(.post(mocks[0].baseURL + "/v1/chat/completions", json: chatBody("x").bytes))
            #expect(head.status == 200)
            let names = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap {
                readSmallFile("/proc/self/task/\($0)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            #expect(names.contains("aimesh-curl"))
        }
    }

    @Test func headerWithLineBreak_isRefused() async throws {
        await #expect(throws: TransferError.self) {
            try await client.send(OutboundRequest(url: "http://127.0.0.1:1/", headers: [("X-Evil", "a\r\nInjected: 1")]))
        }
    }
}

/// A loopback server that accepts one connection, reads the request head and answers with `answer` verbatim.
private func oneShotServer(answer: [UInt8]) throws -> (port: Int, done: Task<Void, Never>) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    guard bound == 0, listen(fd, 1) == 0 else { close(fd); throw TransferError(kind: .other(code: -1), phase: .beforeResponse, message: "bind failed") }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    let port = Int(UInt16(bigEndian: address.sin_port))
    let done = Task.detached {
        defer { close(fd) }
        let connection = accept(fd, nil, nil)
        guard connection >= 0 else { return }
        defer { close(connection) }
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !request.suffix(4).elementsEqual("\r\n\r\n".utf8) {
            let count = read(connection, &buffer, buffer.count)
            if count <= 0 { return }
            request += buffer[..<count]
        }
        _ = answer.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
    }
    return (port, done)
}

extension OutboundRequest {
    func with(abort signal: AbortSignal) -> OutboundRequest {
        var copy = self
        copy.abort = signal
        return copy
    }
}
