import CCurl
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An HTTP client over one libcurl multi handle, driven by its own thread so that no event loop ever
/// blocks on the network. Connections are kept and reused per host (the multi handle's cache).
///
/// `start(_:)` returns as soon as the response head has arrived; the body then arrives chunk by chunk
/// through `OutboundResponse.next()`, never buffered whole. A consumer that stops reading makes the
/// transfer pause (back-pressure); one that goes away or is cancelled ends the transfer.
public final class CurlClient: Sendable {
    public struct Configuration: Sendable {
        /// Connections kept open for reuse.
        public var maxCachedConnections: Int = 256
        /// Pause a transfer when this many body bytes wait unread.
        public var pauseAboveBufferedBytes: Int = 1 << 20
        /// Sent to TLS (https) endpoints only.
        public var userAgent: String = "aimesh"
        /// Run the engine's thread as batch work (`SCHED_BATCH` on Linux, `scheduleCurrentThreadAsBatch`):
        /// woken while every CPU is busy, it waits for the running thread's turn instead of preempting it,
        /// and finds several answers ready when it runs. A node turns it on (`server.io_scheduling`).
        public var batchScheduling: Bool = false
        public init() {}
    }

    let engine: CurlEngine

    /// Whether the engine's thread runs as batch work (`Configuration.batchScheduling`, where the kernel has
    /// it); nil until the thread has started.
    public var runsAsBatch: Bool? {
        switch engine.threadScheduling.load(ordering: .acquiring) {
        case 0: nil
        case 2: true
        default: false
        }
    }

    /// How many times a stream was paused because its reader fell behind (back-pressure at work).
    public var pauses: Int { engine.pauses.load(ordering: .relaxed) }

    public init(configuration: Configuration = Configuration()) {
        self.engine = CurlEngine(configuration: configuration)
    }

    /// Sends the request and waits for the response head (or an error). Cancelling the calling task
    /// aborts the transfer.
    public func start(_ request: OutboundRequest) async throws -> OutboundResponse {
        let transfer = try Transfer(request: request, engine: engine)
        request.abort?.onFire { [weak transfer] reason in transfer?.abort(reason) }
        let head: ResponseHead = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ResponseHead, any Error>) in
                transfer.state.withLock { $0.headContinuation = continuation }
                engine.submit(.add(transfer))
            }
        } onCancel: {
            transfer.cancel()
        }
        return OutboundResponse(head: head, transfer: transfer)
    }

    /// Sends the request and returns the head with the whole body, refusing bodies above `maxBytes`.
    /// The engine gathers the body and wakes the caller once, at the end — one wake-up
    /// instead of one per head and chunk — so use it whenever nothing is streamed to a client.
    public func send(_ request: OutboundRequest, maxBytes: Int = 64 << 20) async throws -> (ResponseHead, [UInt8]) {
        let transfer = try Transfer(request: request, engine: engine, wholeBodyLimit: maxBytes)
        request.abort?.onFire { [weak transfer] reason in transfer?.abort(reason) }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<(ResponseHead, [UInt8]), any Error>) in
                transfer.state.withLock { $0.wholeContinuation = continuation }
                engine.submit(.add(transfer))
            }
        } onCancel: {
            transfer.cancel()
        }
    }

    /// Ends every transfer and stops the thread. Further calls fail with `.shutdown`.
    public func shutdown() {
        engine.shutdown()
    }
}

/// A response whose body is still arriving.
public final class OutboundResponse: Sendable, AsyncSequence {
    public typealias Element = [UInt8]
    public let head: ResponseHead
    let transfer: Transfer

    init(head: ResponseHead, transfer: Transfer) {
        self.head = head
        self.transfer = transfer
    }

    deinit {
        transfer.cancel()
    }

    /// The next piece of the body, or nil at its end.
    public func next() async throws -> [UInt8]? {
        try await withTaskCancellationHandler {
            try await transfer.nextChunk()
        } onCancel: {
            transfer.cancel()
        }
    }

    /// The next piece of the body if it has already arrived: `.some(chunk)`, `.some(nil)` at the end, or nil
    /// when reading it would have to wait. Throws the transfer's failure.
    public func nextIfAvailable() throws -> [UInt8]?? {
        try transfer.nextChunkIfAvailable()
    }

    /// The rest of the body as one array.
    public func collect(maxBytes: Int) async throws -> [UInt8] {
        var body: [UInt8] = []
        while let chunk = try await next() {
            if body.isEmpty { body = chunk } else { body.append(contentsOf: chunk) }
            if body.count > maxBytes {
                transfer.cancel()
                throw TransferError(kind: .tooLarge(limit: maxBytes), phase: .duringBody, message: "response body larger than \(maxBytes) bytes")
            }
        }
        return body
    }

    /// Stops the transfer; `next()` then fails with `.cancelled`.
    public func cancel() { transfer.cancel() }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let response: OutboundResponse
        public mutating func next() async throws -> [UInt8]? { try await response.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(response: self) }
}

/// One transfer's state, shared between the engine and the task reading the body.
final class Transfer: @unchecked Sendable {
    struct State {
        var headContinuation: CheckedContinuation<ResponseHead, any Error>?
        var headDelivered = false
        var chunks: [[UInt8]] = []
        var chunkIndex = 0
        var buffered = 0
        var finished: TransferError?? = nil  // .some(nil) = clean end
        var bodyContinuation: CheckedContinuation<[UInt8]?, any Error>?
        var paused = false
        var cancelRequested = false
        /// Set by `abort(_:)`: the transfer ends with `.aborted` and this message instead of `.cancelled`.
        var abortReason: String?
        /// Whole-body mode (`send`): the caller waits here for head and body together.
        var wholeContinuation: CheckedContinuation<(ResponseHead, [UInt8]), any Error>?
        var wholeBody: [UInt8] = []
        var overLimit = false
    }

    let state = Mutex(State())
    unowned(unsafe) let engine: CurlEngine
    let request: OutboundRequest
    // Touched only inside the engine, holding its lock, which is what keeps their accesses apart: the
    // runtime's exclusivity checks on them (a call and a thread-local lookup for each access, about 3,500
    // instructions a request with the engine's own, callgrind) are left out.
    @exclusivity(unchecked) var easy: UnsafeMutableRawPointer?
    @exclusivity(unchecked) var headerList: UnsafeMutablePointer<curl_slist>?
    @exclusivity(unchecked) var bodyPointer: UnsafeMutableRawPointer?
    let errorBuffer: UnsafeMutablePointer<CChar>
    @exclusivity(unchecked) var status = 0
    @exclusivity(unchecked) var headers: [(name: String, value: String)] = []
    @exclusivity(unchecked) var headSeen = false
    @exclusivity(unchecked) var firstByteDeadline: ContinuousClock.Instant?
    @exclusivity(unchecked) var idleDeadline: ContinuousClock.Instant?
    @exclusivity(unchecked) var lastActivity: ContinuousClock.Instant
    let pauseAbove: Int
    /// The event loop the caller runs on (when NIO is the executor): answers are handed back there, so
    /// the waiting task wakes on the loop that owns its connection instead of any loop, and writes its
    /// response without one more hop.
    let homeLoop: (any EventLoop)?
    /// Set in whole-body mode: the most bytes the body may have.
    let wholeBodyLimit: Int?

    init(request: OutboundRequest, engine: CurlEngine, wholeBodyLimit: Int? = nil) throws {
        self.wholeBodyLimit = wholeBodyLimit
        guard request.url.hasPrefix("http://") || request.url.hasPrefix("https://") else {
            throw TransferError(kind: .invalidRequest, phase: .beforeResponse, message: "unsupported URL scheme in \(CurlEngine.redact(request.url))")
        }
        self.request = request
        self.engine = engine
        self.pauseAbove = engine.configuration.pauseAboveBufferedBytes
        self.errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        self.errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        self.lastActivity = .now
        self.homeLoop = MultiThreadedEventLoopGroup.currentEventLoop
    }

    /// Runs `resume` (a continuation's resumption) on the caller's event loop, or here when it has none.
    private func handBack(_ resume: @escaping @Sendable () -> Void) {
        if let homeLoop, !homeLoop.inEventLoop {
            homeLoop.execute(resume)
        } else {
            resume()
        }
    }

    deinit {
        errorBuffer.deallocate()
        bodyPointer?.deallocate()
    }

    /// Asks the engine to end the transfer. Safe from any thread, any number of times.
    func cancel() {
        let first = state.withLock { state -> Bool in
            if state.cancelRequested || state.finished != nil { return false }
            state.cancelRequested = true
            return true
        }
        if first { engine.submit(.cancel(self)) }
    }

    /// Ends the transfer with `.aborted` and `reason` (its `AbortSignal` fired).
    func abort(_ reason: String) {
        let first = state.withLock { state -> Bool in
            if state.cancelRequested || state.finished != nil { return false }
            state.cancelRequested = true
            state.abortReason = reason
            return true
        }
        if first { engine.submit(.cancel(self)) }
    }

    /// The error a cancelled transfer ends with: `.aborted` with its reason if it was aborted.
    func cancellationError(phase: TransferError.Phase) -> TransferError {
        if let reason = state.withLock({ $0.abortReason }) {
            return TransferError(kind: .aborted, phase: phase, message: reason)
        }
        return TransferError(kind: .cancelled, phase: phase, message: "request cancelled")
    }

    private enum Immediate { case chunk([UInt8]), end, failure(TransferError), wait }

    /// What the body has ready without waiting (a chunk, its end or its failure), or `.wait`.
    private func immediate() -> Immediate {
        let (immediate, unpause): (Immediate, Bool) = state.withLock { state in
            if state.chunkIndex < state.chunks.count {
                let chunk = state.chunks[state.chunkIndex]
                state.chunkIndex += 1
                if state.chunkIndex == state.chunks.count {
                    state.chunks.removeAll(keepingCapacity: true)
                    state.chunkIndex = 0
                }
                state.buffered -= chunk.count
                let unpause = state.paused && state.buffered < self.pauseAbove / 2
                if unpause { state.paused = false }
                return (.chunk(chunk), unpause)
            }
            if let finished = state.finished {
                if let error = finished { return (.failure(error), false) }
                return (.end, false)
            }
            return (.wait, false)
        }
        if unpause { engine.submit(.unpause(self)) }
        return immediate
    }

    func nextChunkIfAvailable() throws(TransferError) -> [UInt8]?? {
        switch immediate() {
        case .chunk(let chunk): return .some(chunk)
        case .end: return .some(nil)
        case .failure(let error): throw error
        case .wait: return nil
        }
    }

    func nextChunk() async throws -> [UInt8]? {
        // Fast path without suspending.
        switch immediate() {
        case .chunk(let chunk): return chunk
        case .end: return nil
        case .failure(let error): throw error
        case .wait:
            return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8]?, any Error>) in
                let resolved: Result<[UInt8]?, TransferError>? = state.withLock { state in
                    if state.chunkIndex < state.chunks.count {
                        let chunk = state.chunks[state.chunkIndex]
                        state.chunkIndex += 1
                        state.buffered -= chunk.count
                        return .success(chunk)
                    }
                    if let finished = state.finished {
                        if let error = finished { return .failure(error) }
                        return .success(nil)
                    }
                    state.bodyContinuation = continuation
                    return nil
                }
                if let resolved { continuation.resume(with: resolved) }
            }
        }
    }

    // MARK: Called inside the engine

    /// Delivers body bytes; returns false when the transfer should pause.
    func deliver(_ bytes: [UInt8]) -> Bool {
        if let limit = wholeBodyLimit {
            let over = state.withLock { state -> Bool in
                if state.wholeBody.isEmpty { state.wholeBody = bytes } else { state.wholeBody.append(contentsOf: bytes) }
                if state.wholeBody.count > limit { state.overLimit = true }
                return state.overLimit
            }
            if over { cancel() }
            return true
        }
        let (waiter, keepGoing): (CheckedContinuation<[UInt8]?, any Error>?, Bool) = state.withLock { state in
            if let waiter = state.bodyContinuation {
                state.bodyContinuation = nil
                return (waiter, true)
            }
            // Pausing refuses these bytes: curl keeps them and delivers them again after the unpause, so
            // they must not be queued now (they once were, and a paused stream repeated a chunk).
            if state.buffered > self.pauseAbove {
                state.paused = true
                return (nil, false)
            }
            state.chunks.append(bytes)
            state.buffered += bytes.count
            return (nil, true)
        }
        if let waiter { handBack { waiter.resume(returning: bytes) } }
        if !keepGoing { engine.pauses.add(1, ordering: .relaxed) }
        return keepGoing
    }

    func deliverHead() {
        if wholeBodyLimit != nil {
            state.withLock { $0.headDelivered = true }
            return
        }
        let head = ResponseHead(status: status, headers: headers)
        let continuation = state.withLock { state -> CheckedContinuation<ResponseHead, any Error>? in
            state.headDelivered = true
            defer { state.headContinuation = nil }
            return state.headContinuation
        }
        if let continuation { handBack { continuation.resume(returning: head) } }
    }

    func finish(_ error: TransferError?) {
        if let limit = wholeBodyLimit {
            let (waiter, body, overLimit) = state.withLock { state in
                if state.finished == nil { state.finished = .some(error) }
                defer { state.wholeContinuation = nil; state.wholeBody = [] }
                return (state.wholeContinuation, state.wholeBody, state.overLimit)
            }
            guard let waiter else { return }
            let result: Result<(ResponseHead, [UInt8]), any Error>
            if overLimit {
                result = .failure(TransferError(kind: .tooLarge(limit: limit), phase: .duringBody, message: "response body larger than \(limit) bytes"))
            } else if let error {
                result = .failure(error)
            } else {
                result = .success((ResponseHead(status: status, headers: headers), body))
            }
            handBack { waiter.resume(with: result) }
            return
        }
        let (headWaiter, bodyWaiter) = state.withLock { state -> (CheckedContinuation<ResponseHead, any Error>?, CheckedContinuation<[UInt8]?, any Error>?) in
            if state.finished == nil { state.finished = .some(error) }
            let head = state.headContinuation
            let body = state.bodyContinuation
            state.headContinuation = nil
            state.bodyContinuation = nil
            return (head, body)
        }
        if let headWaiter {
            // Completed without a final head (should not happen with HTTP): report what we have.
            let result: Result<ResponseHead, any Error> = error.map { .failure($0) } ?? .success(ResponseHead(status: status, headers: headers))
            handBack { headWaiter.resume(with: result) }
        }
        if let bodyWaiter {
            let result: Result<[UInt8]?, any Error> = error.map { .failure($0) } ?? .success(nil)
            handBack { bodyWaiter.resume(with: result) }
        }
    }
}
