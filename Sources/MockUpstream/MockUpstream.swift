import MeshCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A fake model server that speaks OpenAI, Anthropic, Gemini and Workers AI on a loopback port, with
/// faults a test can inject: error statuses, delays, connection resets, streams cut mid-way, stalls.
/// Built on bare SwiftNIO so that it can misbehave at the socket level and stays cheap in benchmarks.
public final class MockUpstream: Sendable {
    public enum Fault: Sendable, Equatable {
        /// Answer with this status in the vendor's error format.
        case status(Int)
        /// Close the connection without answering.
        case reset
        /// Wait this long before answering.
        case delay(Duration)
        /// Send this many stream events, then drop the connection.
        case cutAfter(events: Int)
        /// Send the head, then nothing.
        case stall
        /// 200 with a body that is not JSON.
        case malformed
    }

    public struct Configuration: Sendable {
        /// Shown in every answer ("Hello from NAME!").
        public var name: String = "mock"
        public var host: String = "127.0.0.1"
        public var port: Int = 0
        /// Delay before every answer.
        public var latency: Duration = .zero
        /// Gap between stream events.
        public var eventInterval: Duration = .zero
        /// Require this credential in the vendor's header.
        public var requiredKey: String?
        public init(name: String = "mock", host: String = "127.0.0.1", port: Int = 0, latency: Duration = .zero, eventInterval: Duration = .zero, requiredKey: String? = nil) {
            self.name = name
            self.host = host
            self.port = port
            self.latency = latency
            self.eventInterval = eventInterval
            self.requiredKey = requiredKey
        }
    }

    /// A request as it arrived.
    public struct Recorded: Sendable {
        public var method: String
        public var path: String
        public var headers: [(String, String)]
        public var body: [UInt8]
        public var json: JSON? { try? JSONParser.parse(body) }
        public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    }

    struct State {
        var queued: [Fault] = []
        var sticky: Fault?
        var recorded: [Recorded] = []
        var count = 0
        var connections = 0
        var open = 0
        var keepRecords = 1000
    }

    public let configuration: Configuration
    public let port: Int
    let state = Mutex(State())
    let channel: any Channel
    let group: MultiThreadedEventLoopGroup?

    public var baseURL: String { "http://\(configuration.host):\(port)" }

    /// Starts listening. With `group` nil the mock uses one thread of its own.
    public static func start(_ configuration: Configuration = Configuration(), group: (any EventLoopGroup)? = nil) async throws -> MockUpstream {
        let ownGroup = group == nil ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        let loopGroup: any EventLoopGroup = group ?? ownGroup!
        let holder = Holder()
        let responder = MockResponder(name: configuration.name, requiredKey: configuration.requiredKey)
        let bootstrap = ServerBootstrap(group: loopGroup)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                holder.mock.withLock { $0 }?.state.withLock { $0.connections += 1; $0.open += 1 }
                channel.closeFuture.whenComplete { _ in holder.mock.withLock { $0 }?.state.withLock { $0.open -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MockHTTPHandler(holder: holder, responder: responder, configuration: configuration))
                }
            }
        let channel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        let mock = MockUpstream(configuration: configuration, port: channel.localAddress?.port ?? 0, channel: channel, group: ownGroup)
        holder.mock.withLock { $0 = mock }
        return mock
    }

    init(configuration: Configuration, port: Int, channel: any Channel, group: MultiThreadedEventLoopGroup?) {
        self.configuration = configuration
        self.port = port
        self.channel = channel
        self.group = group
    }

    /// Applies `fault` to the next `times` requests.
    public func enqueue(_ fault: Fault, times: Int = 1) {
        state.withLock { $0.queued.append(contentsOf: Array(repeating: fault, count: times)) }
    }

    /// Applies `fault` to every request until cleared with nil.
    public func setSticky(_ fault: Fault?) {
        state.withLock { $0.sticky = fault }
    }

    public var requestCount: Int { state.withLock { $0.count } }
    /// TCP connections accepted so far.
    public var connectionCount: Int { state.withLock { $0.connections } }
    /// TCP connections open now.
    public var activeConnections: Int { state.withLock { $0.open } }
    public var requests: [Recorded] { state.withLock { $0.recorded } }
    public var lastRequest: Recorded? { state.withLock { $0.recorded.last } }

    public func resetCounters() {
        state.withLock {
            $0.count = 0
            $0.recorded.removeAll()
        }
    }

    func nextFault(record: Recorded) -> Fault? {
        state.withLock { state in
            state.count += 1
            state.recorded.append(record)
            if state.recorded.count > state.keepRecords { state.recorded.removeFirst() }
            if !state.queued.isEmpty { return state.queued.removeFirst() }
            return state.sticky
        }
    }

    public func shutdown() async {
        try? await channel.close()
        if let group { try? await group.shutdownGracefully() }
    }
}

final class Holder: Sendable {
    let mock = Mutex<MockUpstream?>(nil)
}

final class MockHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let holder: Holder
    let responder: MockResponder
    let configuration: MockUpstream.Configuration
    var head: HTTPRequestHead?
    var body: [UInt8] = []

    init(holder: Holder, responder: MockResponder, configuration: MockUpstream.Configuration) {
        self.holder = holder
        self.responder = responder
        self.configuration = configuration
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.removeAll(keepingCapacity: true)
        case .body(var buffer):
            if let bytes = buffer.readBytes(length: buffer.readableBytes) { body.append(contentsOf: bytes) }
        case .end:
            guard let head else { return }
            self.head = nil
            handle(context: context, head: head, body: body)
        }
    }

    func handle(context: ChannelHandlerContext, head: HTTPRequestHead, body: [UInt8]) {
        if head.uri.hasPrefix("/_mock/") {
            let (status, reply) = control(path: head.uri, body: body)
            writeFull(context: context, status: status, headers: [("Content-Type", "application/json")], body: reply.bytes, keepAlive: head.isKeepAlive)
            return
        }
        let headers = head.headers.map { ($0.name, $0.value) }
        let record = MockUpstream.Recorded(method: head.method.rawValue, path: head.uri, headers: headers, body: body)
        let fault = holder.mock.withLock { $0 }?.nextFault(record: record)
        let reply = responder.reply(method: head.method.rawValue, path: head.uri, headers: headers, body: body)
        let keepAlive = head.isKeepAlive
        var delay = configuration.latency
        if case .delay(let extra)? = fault { delay += extra }
        let loop = context.eventLoop.assumeIsolated()
        let run = { [self] in
            self.respond(context: context, reply: reply, fault: fault, keepAlive: keepAlive, format: MockResponder.format(of: head.uri))
        }
        if delay > .zero {
            loop.scheduleTask(in: TimeAmount(delay)) { run() }
        } else {
            run()
        }
    }

    /// Control endpoints for scripts: POST /_mock/fault {kind, status, ms, events, times, sticky},
    /// POST /_mock/clear, GET /_mock/stats.
    func control(path: String, body: [UInt8]) -> (Int, JSON) {
        guard let mock = holder.mock.withLock({ $0 }) else { return (503, ["error": "not ready"]) }
        switch path {
        case "/_mock/stats":
            return (200, ["requests": .int(mock.requestCount), "name": .string(configuration.name)])
        case "/_mock/clear":
            mock.setSticky(nil)
            mock.state.withLock { $0.queued.removeAll() }
            return (200, ["cleared": true])
        case "/_mock/fault":
            guard let json = try? JSONParser.parse(body), let kind = json["kind"]?.stringValue else { return (400, ["error": "expected {kind: ...}"]) }
            let fault: MockUpstream.Fault
            switch kind {
            case "status": fault = .status(json["status"]?.intValue ?? 503)
            case "reset": fault = .reset
            case "delay": fault = .delay(.milliseconds(Int64(json["ms"]?.intValue ?? 1000)))
            case "cut": fault = .cutAfter(events: json["events"]?.intValue ?? 2)
            case "stall": fault = .stall
            case "malformed": fault = .malformed
            default: return (400, ["error": .string("unknown fault kind \(kind)")])
            }
            if json["sticky"]?.boolValue == true { mock.setSticky(fault) } else { mock.enqueue(fault, times: json["times"]?.intValue ?? 1) }
            return (200, ["ok": true])
        default:
            return (404, ["error": "unknown control path"])
        }
    }

    func respond(context: ChannelHandlerContext, reply: MockReply, fault: MockUpstream.Fault?, keepAlive: Bool, format: MockFormat) {
        switch fault {
        case .reset?:
            _ = (context.channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
            context.close(promise: nil)
            return
        case .status(let status)?:
            if case .full(_, let contentType, let body) = responder.error(format, status: status, message: "injected failure \(status)") {
                var headers = [("Content-Type", contentType)]
                if status == 429 { headers.append(("Retry-After", "1")) }
                writeFull(context: context, status: status, headers: headers, body: body, keepAlive: keepAlive)
            }
            return
        case .malformed?:
            writeFull(context: context, status: 200, headers: [("Content-Type", "application/json")], body: Array("{\"choices\": [oops".utf8), keepAlive: keepAlive)
            return
        case .stall?:
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Transfer-Encoding", value: "chunked")
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            return
        default:
            break
        }
        switch reply {
        case .full(let status, let contentType, let body):
            writeFull(context: context, status: status, headers: [("Content-Type", contentType)], body: body, keepAlive: keepAlive)
        case .stream(let status, let events):
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/event-stream")
            headers.add(name: "Cache-Control", value: "no-cache")
            headers.add(name: "Transfer-Encoding", value: "chunked")
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers))), promise: nil)
            var cutAfter: Int?
            if case .cutAfter(let count)? = fault { cutAfter = count }
            sendEvents(context: context, events: events[...], sent: 0, cutAfter: cutAfter, keepAlive: keepAlive)
        }
    }

    /// A stream waiting for the client to read (the channel went unwritable): resumed when it drains.
    var pendingStream: (events: ArraySlice<[UInt8]>, sent: Int, cutAfter: Int?, keepAlive: Bool)?

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let pending = pendingStream {
            pendingStream = nil
            sendEvents(context: context, events: pending.events, sent: pending.sent, cutAfter: pending.cutAfter, keepAlive: pending.keepAlive)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Writes events in a loop (paced by `eventInterval` when set), pausing while the client does not
    /// read, so a long stream neither recurses nor piles up in memory.
    func sendEvents(context: ChannelHandlerContext, events: ArraySlice<[UInt8]>, sent: Int, cutAfter: Int?, keepAlive: Bool) {
        var events = events, sent = sent
        while true {
            guard context.channel.isActive else { return }
            if let cutAfter, sent >= cutAfter {
                context.flush()
                _ = (context.channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
                context.close(promise: nil)
                return
            }
            guard let first = events.popFirst() else {
                context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                    if !keepAlive { context.close(promise: nil) }
                }
                return
            }
            var buffer = context.channel.allocator.buffer(capacity: first.count)
            buffer.writeBytes(first)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            sent += 1
            let interval = configuration.eventInterval
            if interval > .zero && !events.isEmpty {
                context.flush()
                let rest = events, count = sent
                context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(interval)) { [self] in
                    self.sendEvents(context: context, events: rest, sent: count, cutAfter: cutAfter, keepAlive: keepAlive)
                }
                return
            }
            if !context.channel.isWritable {
                // A flush that drains at once turns the channel writable again (and fires the change
                // while pendingStream is still nil): go on; otherwise wait for channelWritabilityChanged.
                context.flush()
                if context.channel.isWritable { continue }
                pendingStream = (events, sent, cutAfter, keepAlive)
                return
            }
            if sent % 64 == 0 { context.flush() }
        }
    }

    func writeFull(context: ChannelHandlerContext, status: Int, headers extra: [(String, String)], body: [UInt8], keepAlive: Bool) {
        var headers = HTTPHeaders()
        for (name, value) in extra { headers.add(name: name, value: value) }
        headers.add(name: "Content-Length", value: String(body.count))
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
