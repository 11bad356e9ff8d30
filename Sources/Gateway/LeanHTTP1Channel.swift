import CurlHTTP
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypesHTTP1
import Synchronization

/// The API port's HTTP/1.1 connections: Hummingbird's router, middleware, `Request` and `Response`, served
/// from a plain NIO channel handler instead of Hummingbird's `HTTP1Channel`.
///
/// `HTTP1Channel` turns each connection into a `NIOAsyncChannel` and runs the router in that connection's
/// task, reading every request part through an async iterator and writing every response part through an
/// async writer, with the request body a stream. Here one handler gathers each request (its body up to
/// `maxBodyBytes`; past that it keeps one byte more than the limit, so a route's own `collectBody(upTo:)`
/// answers 413 as before) and hands it to the connection's task, which runs the responder and writes the
/// answer straight to the pipeline. (One task per connection, as before: a task per request would allocate
/// its async frames anew each time, 26 KiB a request for a chat completion.) The head goes with the first
/// body chunk, each chunk is flushed as it is written (a one-buffer answer with a length leaves in one
/// `writev`), and the writer waits while the channel is unwritable.
/// Requests pipelined behind one being answered wait in the handler, in order; it stops reading only when
/// many wait (NIO's `HTTPServerPipelineHandler` would take the socket out of the poll set and put it back
/// around every request: two `epoll_ctl` calls each time).
///
/// The handler reads NIO's HTTP/1 request parts and converts heads itself (as NIOHTTPTypesHTTP1's codec does),
/// writes answers as bytes itself (`HTTP1ResponseEncoding`: no conversion to NIO's head, no
/// `HTTPResponseEncoder` or `HTTPServerProtocolErrorHandler`), and keeps the idle timeout and graceful
/// quiescing itself (as Hummingbird's `HTTPConnectionStateHandler` does): four pipeline handlers fewer,
/// 4 % and then 2.5 % of a node's CPU per request (`bench-pair`).
///
/// What `HTTP1Channel` did is kept: HTTP/1.1 parsing with the same limits, a malformed request answered 400
/// and the connection closed, `Connection: close` (and HTTP/1.0 without keep-alive, which `HTTP1Channel`
/// kept open) and the client's half-close honoured after the answer, answers to HEAD without a body, chunked
/// bodies for answers without a length (to an HTTP/1.0 client, the body up to the close instead),
/// the idle timeout (`server.read_timeout`) and graceful quiescing, the extra handlers (the node's
/// write-stall guard), an error thrown past the router answered 500, and the `Date` and `Server` headers.
public struct LeanHTTP1Channel: ServerChildChannel {
    public typealias Responder = ExactPathResponder<GatewayContext>

    public struct Connection: ServerChildChannelValue {
        public let channel: any Channel
        let sink: ConnectionSink
    }

    public struct Configuration: Sendable {
        /// The most body bytes a request may carry (the largest any route accepts); a larger one is
        /// passed on cut to `maxBodyBytes + 1` bytes, so the route reports it too large.
        public var maxBodyBytes: Int
        public var idleTimeout: TimeAmount?
        public var serverName: String?
        public var additionalChannelHandlers: @Sendable () -> [any RemovableChannelHandler]

        public init(maxBodyBytes: Int, idleTimeout: TimeAmount? = nil, serverName: String? = nil,
                    additionalChannelHandlers: @escaping @Sendable () -> [any RemovableChannelHandler] = { [] }) {
            self.maxBodyBytes = maxBodyBytes
            self.idleTimeout = idleTimeout
            self.serverName = serverName
            self.additionalChannelHandlers = additionalChannelHandlers
        }
    }

    let responder: Responder
    let configuration: Configuration

    public init(responder: Responder, configuration: Configuration) {
        self.responder = responder
        self.configuration = configuration
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Connection> {
        channel.eventLoop.makeCompletedFuture {
            let pipeline = channel.pipeline.syncOperations
            // Hummingbird's decoder limits (HTTP1Channel.Configuration.DecoderConfiguration's defaults).
            var limits = NIOHTTPDecoderLimitConfiguration()
            limits.maxHeaderFieldSize = 80 * 1024
            limits.maxHeaderListSize = 80 * 1024
            limits.maxHeaderFieldCount = 1000
            // NIO's request decoder (llhttp); answers are written as bytes by the handler
            // (`HTTP1ResponseEncoding`), which also keeps pipelined requests in order and answers a request
            // that cannot be parsed with 400.
            try pipeline.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)))
            try pipeline.addHandlers(configuration.additionalChannelHandlers())
            let handler = LeanHTTP1Handler(configuration: configuration)
            try pipeline.addHandler(handler)
            return Connection(channel: channel, sink: ConnectionSink(handler: NIOLoopBound(handler, eventLoop: channel.eventLoop), loop: channel.eventLoop))
        }
    }

    /// The connection's task: answers its requests one after another as the handler hands them over,
    /// until the connection closes (the server waits for these tasks when it shuts down); closes the
    /// connection if cancelled.
    public func handle(value: Connection, logger: Logger) async {
        let channel = value.channel, sink = value.sink, responder = self.responder
        await withTaskCancellationHandler {
            while let pending = await sink.nextRequest() {
                var response: Response
                do {
                    response = try await responder.respond(to: pending.request, context: GatewayContext(source: .init(channel: channel, logger: logger)))
                } catch {
                    logger.debug("unhandled error from the router", metadata: ["error.type": "\(String(reflecting: type(of: error)))"])
                    response = Response(status: .internalServerError, body: .init())
                }
                do {
                    try await sink.writeHead(response.head)
                    try await response.body.write(LeanBodyWriter(sink: sink))
                } catch {
                    // The client went away or the answer failed half-way: the connection cannot carry more.
                    channel.close(promise: nil)
                    break
                }
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }
}

/// A request gathered by the handler, waiting for the connection's task.
struct PendingRequest: Sendable {
    let request: Request
}

/// `server.read_timeout` and graceful quiescing for one connection, by the rules of Hummingbird's
/// `HTTPConnectionStateHandler`: a connection that has gone `timeout` without a request part while not being
/// answered is closed (an idle keep-alive connection, a slow sender); one being answered is not, however
/// long its answer takes. Asked to quiesce, an idle connection closes at once, a busy one after its
/// answers. Pure: times are nanoseconds of any monotonic clock, handed in.
struct ConnectionIdleState {
    enum Action: Equatable {
        case close
        /// Look again at this time.
        case recheck(at: UInt64)
        case none
    }

    let timeout: UInt64?
    /// Requests read (their head) and not yet answered (their end written).
    private(set) var inProgress = 0
    /// Between a request's head and its end.
    private(set) var readingRequest = false
    private(set) var lastActive: UInt64
    private(set) var closeWhenAnswered = false

    init(timeout: UInt64?, now: UInt64) {
        self.timeout = timeout
        self.lastActive = now
    }

    /// When to look first, from the connection's start (nil: no timeout).
    var firstCheck: UInt64? { timeout.map { lastActive + $0 } }

    mutating func readHead(now: UInt64) {
        inProgress += 1
        readingRequest = true
        lastActive = now
    }

    mutating func readBody(now: UInt64) { lastActive = now }

    mutating func readEnd(now: UInt64) {
        readingRequest = false
        lastActive = now
    }

    /// An answer's end was written.
    mutating func answered(now: UInt64) -> Action {
        inProgress -= 1
        guard inProgress == 0 else { return .none }
        if closeWhenAnswered { return .close }
        lastActive = now
        return timeout.map { .recheck(at: now + $0) } ?? .none
    }

    /// The scheduled check is due.
    func check(now: UInt64) -> Action {
        guard let timeout else { return .none }
        // Being answered: the answer's end starts the clock again.
        if !readingRequest, inProgress > 0 { return .none }
        let deadline = lastActive + timeout
        return now >= deadline ? .close : .recheck(at: deadline)
    }

    /// The answer being written is the connection's last: it is quiescing and owes no other.
    var answeringLast: Bool { closeWhenAnswered && inProgress == 1 }

    /// Graceful shutdown: true when the connection may close now; otherwise it closes after its answers.
    mutating func quiesce() -> Bool {
        if inProgress > 0 { closeWhenAnswered = true; return false }
        return true
    }
}

/// One connection's requests: gathers each and hands it to the connection's task; writes what the task
/// sends back; keeps pipelined requests in order, the idle timeout and quiescing.
final class LeanHTTP1Handler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    /// Parts of pipelined requests held while one is answered; past this many, reading pauses.
    static let maxQueuedParts = 64

    let configuration: LeanHTTP1Channel.Configuration

    private var context: ChannelHandlerContext?
    private var head: HTTPRequest?
    /// The request being gathered or answered: whether the connection stays open after it, whether it is a
    /// HEAD request (its answer has no body), whether it is HTTP/1.1 (or later), which can take chunks.
    private var keepAlive = true
    private var headRequest = false
    private var http11 = true
    /// The answer being written: how its body is framed; nil between answers.
    private var framing: ResponseFraming?
    private var body: ByteBuffer?
    /// Between a request's end and its answer's end.
    private var responding = false
    /// Parts that arrived while answering, in order.
    private var queued = CircularBuffer<HTTPServerRequestPart>()
    /// A `read` held back while the queue is full.
    private var readHeld = false
    /// The client closed its side (half-close): close once every request it sent is answered.
    private var inputClosed = false
    /// Completed when the channel becomes writable again (or fails when it closes).
    private var writable: EventLoopPromise<Void>?
    /// The connection's task, waiting for the next request; or the request gathered before it asked.
    private var waiter: UnsafeContinuation<PendingRequest?, Never>?
    private var ready: PendingRequest?
    private var gone = false
    /// server.read_timeout and quiescing (`ConnectionIdleState`), and the check scheduled for it.
    private var idle: ConnectionIdleState
    private var idleCheck: Scheduled<Void>?

    init(configuration: LeanHTTP1Channel.Configuration) {
        self.configuration = configuration
        self.idle = ConnectionIdleState(timeout: configuration.idleTimeout.map { UInt64(max(0, $0.nanoseconds)) },
                                        now: NIODeadline.now().uptimeNanoseconds)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { scheduleIdleCheck(context, at: idle.firstCheck) }
    }

    func channelActive(context: ChannelHandlerContext) {
        scheduleIdleCheck(context, at: idle.firstCheck)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        idleCheck?.cancel()
        idleCheck = nil
        releaseWriters()
        end()
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        idleCheck = nil
        releaseWriters()
        queued.removeAll()
        end()
        context.fireChannelInactive()
    }

    private func scheduleIdleCheck(_ context: ChannelHandlerContext, at nanoseconds: UInt64?) {
        guard let nanoseconds, idleCheck == nil else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleCheck = context.eventLoop.scheduleTask(deadline: NIODeadline.uptimeNanoseconds(nanoseconds)) { bound.value.idleCheckDue() }
    }

    private func idleCheckDue() {
        idleCheck = nil
        guard let context, context.channel.isActive else { return }
        switch idle.check(now: NIODeadline.now().uptimeNanoseconds) {
        case .close: context.close(promise: nil)
        case .recheck(let at): scheduleIdleCheck(context, at: at)
        case .none: break
        }
    }

    /// No more requests: the connection's task stops waiting.
    private func end() {
        gone = true
        ready = nil
        if let waiter {
            self.waiter = nil
            waiter.resume(returning: nil)
        }
    }

    /// The connection's task asks for the next request.
    fileprivate func next(_ continuation: UnsafeContinuation<PendingRequest?, Never>) {
        if let ready {
            self.ready = nil
            continuation.resume(returning: ready)
        } else if gone {
            continuation.resume(returning: nil)
        } else {
            waiter = continuation
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let writable {
            self.writable = nil
            writable.succeed()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            inputClosed = true
            closeIfDone(context)
        } else if event is ChannelShouldQuiesceEvent {
            if idle.quiesce() { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A malformed request (from the decoder; answered 400 unless an answer is half-written) or a failed
    /// read: the connection cannot go on.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError, framing == nil, context.channel.isActive {
            writeFixed(HTTP1ResponseEncoding.badRequest, context)
        }
        context.close(promise: nil)
    }

    /// Writes and flushes a fixed answer (400, or 100 Continue).
    private func writeFixed(_ text: StaticString, _ context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: text.utf8CodeUnitCount)
        buffer.writeStaticString(text)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if queued.count >= Self.maxQueuedParts { readHeld = true } else { context.read() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After an answer that closed the connection's output, what else the client sends goes unanswered.
        guard !gone else { return }
        let part = unwrapInboundIn(data)
        let now = NIODeadline.now().uptimeNanoseconds
        switch part {
        case .head: idle.readHead(now: now)
        case .body: idle.readBody(now: now)
        case .end: idle.readEnd(now: now)
        }
        if responding || !queued.isEmpty { queued.append(part) } else { take(part, context: context) }
    }

    private func take(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let old):
            // HTTPTypes' request (what the router and the gateway read), as NIOHTTPTypesHTTP1's codec makes it.
            guard var head = try? Self.request(from: old) else {
                writeFixed(HTTP1ResponseEncoding.badRequest, context)
                context.close(promise: nil)
                return
            }
            // HEAD is GET without the body (RFC 9110 §9.3.2): the router answers it as GET, the body is not sent.
            if head.method == .head { head.method = .get }
            self.head = head
            self.keepAlive = old.isKeepAlive  // HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with keep-alive
            self.headRequest = old.method == .HEAD
            self.http11 = old.version.major > 1 || (old.version.major == 1 && old.version.minor >= 1)
            self.body = nil
            // A client that waits to be asked for its body (curl does past 1 MiB, for up to a second) is asked.
            if http11, let expect = old.headers.first(name: "expect"), expect.equalsIgnoringASCIICase("100-continue") {
                writeFixed(HTTP1ResponseEncoding.continue, context)
            }
        case .body(var chunk):
            // Past the limit the rest is dropped: what is kept is already too large for every route.
            let room = configuration.maxBodyBytes + 1 - (body?.readableBytes ?? 0)
            guard room > 0 else { return }
            if chunk.readableBytes > room { chunk.moveWriterIndex(to: chunk.readerIndex + room) }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
        case .end:
            guard let head = self.head.take() else { return }
            responding = true
            let pending = PendingRequest(request: Request(head: head, body: RequestBody(buffer: body.take() ?? ByteBuffer())))
            if let waiter {
                self.waiter = nil
                waiter.resume(returning: pending)
            } else {
                ready = pending
            }
        }
    }

    /// HTTPTypes' request for NIO's head, as NIOHTTPTypesHTTP1's `HTTPRequest(_:secure:splitCookie:)` makes
    /// it (authority from the first `Host`, which leaves the fields; names that are not tokens dropped;
    /// `Cookie` not split). A path in origin form (`/…`, what every client sends to a gateway) is taken as
    /// it is; that initializer parses each one with Foundation's `URLComponents` to find out, and compares
    /// every name with a lowercased copy of it until it meets `Host`. Other forms go to it.
    static func request(from old: HTTPRequestHead) throws -> HTTPRequest {
        guard old.uri.utf8.first == UInt8(ascii: "/") else { return try HTTPRequest(old, secure: false, splitCookie: false) }
        var fields = HTTPFields()
        fields.reserveCapacity(old.headers.count)
        var authority: String?
        for (name, value) in old.headers {
            if authority == nil, name.equalsIgnoringASCIICase("host") {
                authority = value
            } else if let name = HTTPField.Name(name) {
                fields.append(HTTPField(name: name, value: value))
            }
        }
        return HTTPRequest(method: try HTTPRequest.Method(old.method), scheme: "http", authority: authority, path: old.uri, headerFields: fields)
    }

    /// After an answer: the requests that waited, then a held read, then a close the client asked for.
    private func answered(_ context: ChannelHandlerContext) {
        while !responding, let part = queued.popFirst() { take(part, context: context) }
        if readHeld, queued.count < Self.maxQueuedParts {
            readHeld = false
            context.read()
        }
        closeIfDone(context)
    }

    private func closeIfDone(_ context: ChannelHandlerContext) {
        if inputClosed, !responding, head == nil, queued.isEmpty { context.close(promise: nil) }
    }

    // MARK: Writing, always on the loop

    private func liveContext() throws -> ChannelHandlerContext {
        guard let context, context.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        return context
    }

    /// Writes the head (with `Date` and `Server`), not yet flushed: it leaves with the first body chunk.
    fileprivate func writeHead(_ head: HTTPResponse) throws -> EventLoopFuture<Void>? {
        let context = try liveContext()
        let framing = HTTP1ResponseEncoding.framing(status: head.status, fields: head.headerFields, headRequest: headRequest, http11: http11)
        if framing == .untilClose { keepAlive = false }
        self.framing = framing
        // The client is told when this answer is the connection's last: it asked, or the node is shutting down
        // and owes no other answer on it.
        let last = !keepAlive || idle.answeringLast
        let connection: HTTP1ResponseEncoding.ConnectionHeader = last ? .close : http11 ? .none : .keepAlive
        var buffer = context.channel.allocator.buffer(capacity: 384)
        HTTP1ResponseEncoding.writeHead(head, framing: framing, connection: connection, date: HTTPDate.now(),
                                        server: configuration.serverName, into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
        return nil
    }

    /// Writes a body chunk with the head before it, flushed at once (a one-buffer answer with a length
    /// leaves in one write: its end adds no bytes); returns a future to wait on when the channel is full.
    fileprivate func writeBody(_ buffer: ByteBuffer) throws -> EventLoopFuture<Void>? {
        let context = try liveContext()
        switch framing {
        case .noBody?, nil:
            return nil
        case .chunked?:
            guard buffer.readableBytes > 0 else { return nil }  // an empty chunk would end the body
            var chunk = context.channel.allocator.buffer(capacity: buffer.readableBytes + 20)
            HTTP1ResponseEncoding.writeChunk(buffer, into: &chunk)
            context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
        case .contentLength?, .untilClose?:
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
        guard !context.channel.isWritable else { return nil }
        if let writable { return writable.futureResult }
        let promise = context.eventLoop.makePromise(of: Void.self)
        writable = promise
        return promise.futureResult
    }

    fileprivate func writeEnd(_ trailers: HTTPFields?) throws -> EventLoopFuture<Void>? {
        let context = try liveContext()
        if framing == .chunked {
            var last = context.channel.allocator.buffer(capacity: 64)
            HTTP1ResponseEncoding.writeLastChunk(trailers: trailers, into: &last)
            context.writeAndFlush(wrapOutboundOut(last), promise: nil)
        } else {
            context.flush()  // the head, when the body was empty
        }
        framing = nil
        responding = false
        switch idle.answered(now: NIODeadline.now().uptimeNanoseconds) {
        case .close:
            context.close(promise: nil)
            return nil
        case .recheck(let at): scheduleIdleCheck(context, at: at)
        case .none: break
        }
        if !keepAlive {
            // What is queued goes out first, then end of file; the client closes (or the idle timeout
            // does). Requests it sent after this one are not answered.
            context.close(mode: .output, promise: nil)
            queued.removeAll()
            end()
            return nil
        }
        answered(context)
        return nil
    }

    private func releaseWriters() {
        if let writable {
            self.writable = nil
            writable.fail(ChannelError.ioOnClosedChannel)
        }
    }
}

/// The way between a connection's task and its handler: each step runs on the handler's loop (inline when
/// the task is already there, as it is in a node, where tasks run on the event loops).
final class ConnectionSink: Sendable {
    let handler: NIOLoopBound<LeanHTTP1Handler>
    let loop: any EventLoop

    init(handler: NIOLoopBound<LeanHTTP1Handler>, loop: any EventLoop) {
        self.handler = handler
        self.loop = loop
    }

    /// The next request, once the handler has gathered it; nil when the connection has closed.
    func nextRequest() async -> PendingRequest? {
        await withUnsafeContinuation { continuation in
            if loop.inEventLoop {
                handler.value.next(continuation)
            } else {
                let handler = self.handler
                loop.execute { handler.value.next(continuation) }
            }
        }
    }

    // Each write runs inline when the task is on the handler's loop (no closure is allocated for it),
    // else as a closure submitted to the loop.

    func writeHead(_ head: HTTPResponse) async throws {
        if loop.inEventLoop { _ = try handler.value.writeHead(head) } else { try await perform { try $0.writeHead(head) } }
    }

    func writeBody(_ buffer: ByteBuffer) async throws {
        if loop.inEventLoop { if let full = try handler.value.writeBody(buffer) { try await full.get() } } else { try await perform { try $0.writeBody(buffer) } }
    }

    func writeEnd(_ trailers: HTTPFields?) async throws {
        if loop.inEventLoop { _ = try handler.value.writeEnd(trailers) } else { try await perform { try $0.writeEnd(trailers) } }
    }

    /// Runs `step` with the handler on its loop; waits for the future it returns, if any.
    private func perform(_ step: @escaping @Sendable (LeanHTTP1Handler) throws -> EventLoopFuture<Void>?) async throws {
        let handler = self.handler
        try await loop.flatSubmit {
            do { return try step(handler.value) ?? handler.eventLoop.makeSucceededVoidFuture() } catch { return handler.eventLoop.makeFailedFuture(error) }
        }.get()
    }
}

struct LeanBodyWriter: ResponseBodyWriter {
    let sink: ConnectionSink

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await sink.writeBody(buffer)
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await sink.writeEnd(trailingHeaders)
    }
}

/// The `Date` header's value, formatted once per second (`httpDate`).
enum HTTPDate {
    private static let cache = Mutex<(second: Int64, text: String)>((-1, ""))

    static func now() -> String {
        let second = wallClockMillis() / 1000
        return cache.withLock { cache in
            if cache.second != second { cache = (second, httpDate(seconds: second)) }
            return cache.text
        }
    }
}
