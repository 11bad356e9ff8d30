import CCurl
import MeshCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

private let curlGlobalInit: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

/// Drives one curl multi handle with `curl_multi_socket_action`. Whoever holds the engine lock may call into
/// curl: a task that submits a request starts it at once on its own thread (on an event loop, the
/// request is on the wire before the task suspends, with no thread hop), and the engine's thread waits in
/// `epoll` on curl's sockets to pick up the responses. The thread is woken (eventfd) only when it must
/// wake earlier than it planned: shutdown, or a new timer or deadline before its current one.
final class CurlEngine: @unchecked Sendable {
    enum Command {
        case add(Transfer)
        case cancel(Transfer)
        case unpause(Transfer)
    }

    let configuration: CurlClient.Configuration
    /// Streams paused because their reader fell behind.
    let pauses = Atomic<Int>(0)
    private let multi: UnsafeMutableRawPointer
    private let commands = Mutex<(queue: [Command], shutdown: Bool)>(([], false))
    private let epoll: Int32
    private let wakeFD: Int32
    private let noProxy: String
    private var thread: pthread_t?
    // Guarded by `lock` (and every call into `multi` is made holding it). The lock is what keeps their
    // accesses apart, so the runtime's exclusivity checks on them are left out (see `Transfer`).
    private let lock = EngineLock()
    @exclusivity(unchecked) private var active: [UnsafeMutableRawPointer: Transfer] = [:]
    /// Easy handles of finished transfers, reset and kept for the next ones (at most `spareLimit`): a handle
    /// keeps its buffers, so a transfer does not allocate and free them again.
    @exclusivity(unchecked) private var spareHandles: [UnsafeMutableRawPointer] = []
    private static let spareLimit = 64
    /// Each URL transfers went to, parsed once by curl (`CURLU`): a transfer hands curl its URL parsed, so
    /// curl copies the parts instead of parsing the URL and printing it back (12,000 instructions a request,
    /// callgrind). A node sends to a few URLs (its providers' endpoints, its peers); past `parsedLimit`
    /// distinct URLs the rest are parsed by curl each time, as before. Kept until the engine shuts down,
    /// so a handle never points at a freed one.
    @exclusivity(unchecked) private var parsedURLs: [String: OpaquePointer] = [:]
    private static let parsedLimit = 256
    @exclusivity(unchecked) private var watched: Set<Int32> = []
    @exclusivity(unchecked) private var timerDeadline: ContinuousClock.Instant?
    /// When the engine thread will next wake by itself.
    @exclusivity(unchecked) private var sleepingUntil: ContinuousClock.Instant = .now
    /// The earliest deadline that appeared since the engine thread last looked at them all (a new
    /// transfer's first-byte deadline, a fresh head's idle deadline): what a submitter compares with
    /// `sleepingUntil` instead of walking every transfer.
    @exclusivity(unchecked) private var newDeadline: ContinuousClock.Instant?
    /// No transfer's first-byte or idle deadline comes before this (the earliest the last walk over them found,
    /// or one noted since): until then `nextWake` does not walk every transfer. Activity only moves a
    /// deadline later; every deadline that can come earlier (a new transfer's, a head's, an unpaused stream's)
    /// is noted (`noteDeadline`).
    @exclusivity(unchecked) private var checkDeadlinesAt: ContinuousClock.Instant?
    /// When the engine's current pass over curl began: what the write and header callbacks record as a
    /// transfer's last activity, one clock read a pass rather than one per header line and chunk.
    @exclusivity(unchecked) private(set) var passStart: ContinuousClock.Instant = .now
    @exclusivity(unchecked) private var closed = false
    /// Set by the engine's thread as it starts: 1 when it runs as an ordinary thread, 2 as batch work
    /// (`CurlClient.Configuration.batchScheduling`); 0 before.
    let threadScheduling = Atomic<UInt8>(0)

    init(configuration: CurlClient.Configuration) {
        precondition(curlGlobalInit, "curl_global_init failed")
        self.configuration = configuration
        self.multi = curl_multi_init()!
        self.epoll = aimesh_epoll_create()
        self.wakeFD = aimesh_eventfd()
        precondition(epoll >= 0 && wakeFD >= 0, "could not create the curl engine's epoll or eventfd")
        _ = aimesh_epoll_watch(epoll, wakeFD, CURL_POLL_IN, 0)
        _ = aimesh_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, configuration.maxCachedConnections)
        // Loopback never goes through a proxy; everything else honours http(s)_proxy and no_proxy.
        let env = getenv("no_proxy").map { String(cString: $0) } ?? getenv("NO_PROXY").map { String(cString: $0) } ?? ""
        self.noProxy = ([env] + ["localhost", "127.0.0.1", "::1"]).filter { !$0.isEmpty }.joined(separator: ",")
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = aimesh_curl_multi_setopt_socket_callback(multi) { _, socket, what, client, _ in
            Unmanaged<CurlEngine>.fromOpaque(client!).takeUnretainedValue().watch(socket, what: what)
            return 0
        }
        _ = aimesh_curl_multi_setopt_pointer(multi, CURLMOPT_SOCKETDATA, me)
        _ = aimesh_curl_multi_setopt_timer_callback(multi) { _, milliseconds, client in
            let engine = Unmanaged<CurlEngine>.fromOpaque(client!).takeUnretainedValue()
            // From the start of the engine's pass (curl calls this only inside one): a 0 ms timer is due in
            // that same pass, and a later one may fire a little early, which curl takes in its stride.
            engine.timerDeadline = milliseconds < 0 ? nil : engine.passStart + .milliseconds(milliseconds)
            return 0
        }
        _ = aimesh_curl_multi_setopt_pointer(multi, CURLMOPT_TIMERDATA, me)
        startThread()
    }

    private func startThread() {
        final class Box { let engine: CurlEngine; init(_ e: CurlEngine) { engine = e } }
        let box = Unmanaged.passRetained(Box(self)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            aimesh_name_current_thread("aimesh-curl")
            let batch = box.engine.configuration.batchScheduling && scheduleCurrentThreadAsBatch()
            box.engine.threadScheduling.store(batch ? 2 : 1, ordering: .releasing)
            box.engine.run()
            return nil
        }, box)
        precondition(result == 0, "could not start the curl thread")
        self.thread = thread
    }

    /// Queues the command and, unless another thread is inside the engine (it will see the command before
    /// it lets go), carries it out at once on the calling thread.
    func submit(_ command: Command) {
        let accepted = commands.withLock { state -> Bool in
            if state.shutdown { return false }
            state.queue.append(command)
            return true
        }
        guard accepted else {
            if case .add(let transfer) = command {
                transfer.finish(TransferError(kind: .shutdown, phase: .beforeResponse, message: "the HTTP client is shut down"))
            }
            return
        }
        while lock.tryLock() {
            if closed {
                failQueued()
            } else {
                service(ready: 0, fds: nil, flags: nil)
                let next = earlier(timerDeadline, takeNewDeadline()) ?? sleepingUntil
                if next < sleepingUntil {
                    sleepingUntil = next
                    aimesh_eventfd_signal(wakeFD)
                }
            }
            lock.unlock()
            if commands.withLock({ $0.queue.isEmpty }) { return }
        }
    }

    func shutdown() {
        let already = commands.withLock { state -> Bool in
            defer { state.shutdown = true }
            return state.shutdown
        }
        guard !already else { return }
        aimesh_eventfd_signal(wakeFD)
        if let thread { pthread_join(thread, nil) }
        lock.lock()
        failQueued()
        for easy in spareHandles { curl_easy_cleanup(easy) }
        spareHandles.removeAll()
        curl_multi_cleanup(multi)
        for handle in parsedURLs.values { curl_url_cleanup(handle) }
        parsedURLs.removeAll()
        close(epoll)
        close(wakeFD)
        lock.unlock()
    }

    // MARK: Inside the engine (holding the lock)

    private func run() {
        var fds = [Int32](repeating: 0, count: 64)
        var flags = [Int32](repeating: 0, count: 64)
        var ready: Int32 = 0
        while true {
            lock.lock()
            if commands.withLock({ $0.shutdown }) {
                for transfer in Array(active.values) {
                    complete(transfer, error: TransferError(kind: .shutdown, phase: transfer.headSeen ? .duringBody : .beforeResponse, message: "the HTTP client is shut down"))
                }
                closed = true
                lock.unlock()
                return
            }
            fds.withUnsafeMutableBufferPointer { fds in
                flags.withUnsafeMutableBufferPointer { flags in service(ready: Int(ready), fds: fds.baseAddress, flags: flags.baseAddress) }
            }
            let next = nextWake()
            sleepingUntil = next
            lock.unlock()
            ready = 0
            if !commands.withLock({ $0.queue.isEmpty && !$0.shutdown }) { continue }
            let now = ContinuousClock.now
            let timeout = next <= now ? 0 : Int32(clamping: (next - now).milliseconds + 1)
            ready = aimesh_epoll_wait(epoll, &fds, &flags, 64, timeout)
        }
    }

    /// Carries out queued commands, the sockets epoll reported, and curl's due timer; hands finished
    /// transfers back to their callers.
    private func service(ready: Int, fds: UnsafeMutablePointer<Int32>?, flags: UnsafeMutablePointer<Int32>?) {
        passStart = .now
        let batch = commands.withLock { state -> [Command] in
            defer { state.queue.removeAll(keepingCapacity: true) }
            return state.queue
        }
        for command in batch { handle(command) }
        var running: Int32 = 0
        if let fds, let flags {
            for index in 0..<ready {
                if fds[index] == wakeFD {
                    aimesh_eventfd_drain(wakeFD)
                } else {
                    curl_multi_socket_action(multi, fds[index], flags[index], &running)
                }
            }
        }
        // curl asks for a 0 ms timer when it has work to do right away (a handle just added, an unpause).
        var rounds = 0
        while let deadline = timerDeadline, deadline <= passStart, rounds < 16 {
            timerDeadline = nil
            curl_multi_socket_action(multi, aimesh_curl_socket_timeout(), 0, &running)
            rounds += 1
        }
        readCompletions()
    }

    /// Records a deadline that appeared inside the engine (holding the lock).
    func noteDeadline(_ deadline: ContinuousClock.Instant) {
        newDeadline = earlier(newDeadline, deadline)
    }

    /// Takes the earliest deadline noted since the last look and keeps it in `checkDeadlinesAt`, so the next
    /// walk comes no later than it, whichever thread looked (holding the lock).
    private func takeNewDeadline() -> ContinuousClock.Instant? {
        guard let noted = newDeadline else { return nil }
        newDeadline = nil
        checkDeadlinesAt = earlier(checkDeadlinesAt, noted)
        return noted
    }

    /// Called by curl (inside `socket_action`) to say which sockets to wait on.
    private func watch(_ socket: curl_socket_t, what: Int32) {
        if what == CURL_POLL_REMOVE {
            if watched.remove(socket) != nil { _ = aimesh_epoll_watch(epoll, socket, what, 1) }
        } else {
            _ = aimesh_epoll_watch(epoll, socket, what, watched.contains(socket) ? 1 : 0)
            watched.insert(socket)
        }
    }

    private func failQueued() {
        let batch = commands.withLock { state -> [Command] in
            defer { state.queue.removeAll() }
            return state.queue
        }
        for case .add(let transfer) in batch {
            transfer.finish(TransferError(kind: .shutdown, phase: .beforeResponse, message: "the HTTP client is shut down"))
        }
    }

    private func handle(_ command: Command) {
        switch command {
        case .add(let transfer):
            if transfer.state.withLock({ $0.cancelRequested }) {
                transfer.finish(transfer.cancellationError(phase: .beforeResponse))
                return
            }
            do {
                try configure(transfer)
            } catch let error as TransferError {
                cleanup(transfer)
                transfer.finish(error)
                return
            } catch {
                return
            }
            let key = transfer.easy!
            active[key] = transfer
            curl_multi_add_handle(multi, transfer.easy)
        case .cancel(let transfer):
            guard let easy = transfer.easy, active[easy] != nil else { return }
            complete(transfer, error: transfer.cancellationError(phase: transfer.headSeen ? .duringBody : .beforeResponse))
        case .unpause(let transfer):
            guard let easy = transfer.easy, active[easy] != nil else { return }
            // The pause was the reader's doing: the idle clock starts again now.
            transfer.lastActivity = passStart
            if let idle = transfer.request.timeouts.idle { noteDeadline(passStart + idle) }
            curl_easy_pause(easy, aimesh_curlpause_cont())
        }
    }

    /// Options every transfer shares, set once on a new handle: a handle kept for reuse keeps them.
    private func prime(_ easy: UnsafeMutableRawPointer) {
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1)
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_TCP_NODELAY, 1)
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_TCP_KEEPALIVE, 1)
        _ = aimesh_curl_easy_setopt_string(easy, CURLOPT_NOPROXY, noProxy)
        _ = aimesh_curl_easy_setopt_data_callback(easy, CURLOPT_WRITEFUNCTION, curlWriteCallback)
        _ = aimesh_curl_easy_setopt_data_callback(easy, CURLOPT_HEADERFUNCTION, curlHeaderCallback)
    }

    /// Sets every option that differs between transfers, each one every time (a value, or its default), so
    /// a reused handle carries nothing over from its last transfer. Resetting a handle and setting all its
    /// options again cost about 5,000 instructions a request (callgrind).
    private func configure(_ transfer: Transfer) throws {
        let reused = spareHandles.popLast()
        guard let easy = reused ?? curl_easy_init() else {
            throw TransferError(kind: .other(code: -1), phase: .beforeResponse, message: "curl_easy_init failed")
        }
        if reused == nil { prime(easy) }
        transfer.easy = easy
        let request = transfer.request
        let userdata = Unmanaged.passUnretained(transfer).toOpaque()
        // The URL as text (what curl reports and logs) and parsed (what it connects to): the same URL.
        _ = aimesh_curl_easy_setopt_string(easy, CURLOPT_URL, request.url)
        _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_CURLU, parsed(request.url).map { UnsafeMutableRawPointer($0) })
        // Over TLS, wait for a connection that can multiplex (HTTP/2) rather than open another. Cleartext
        // HTTP/1.1 never multiplexes, and waiting there queued a burst of streams behind each other.
        let tls = request.url.hasPrefix("https://")
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_PIPEWAIT, tls ? 1 : 0)
        // "User-Agent: aimesh" goes to TLS endpoints (the cloud providers, whose logs and firewalls look at
        // it), not over cleartext (model servers and peers on the machine or the LAN): curl formats a
        // request head a byte at a time, about 4,000 instructions for that line (callgrind).
        _ = aimesh_curl_easy_setopt_string(easy, CURLOPT_USERAGENT, tls ? configuration.userAgent : nil)
        _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_ERRORBUFFER, transfer.errorBuffer)
        _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_PRIVATE, userdata)
        _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, userdata)
        _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_HEADERDATA, userdata)
        // 0: curl's defaults (300 s to connect, no limit on the whole transfer).
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, request.timeouts.connect.map { max(1, Int($0.milliseconds)) } ?? 0)
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_TIMEOUT_MS, request.timeouts.total.map { max(1, Int($0.milliseconds)) } ?? 0)
        let now = passStart
        transfer.lastActivity = now
        if let firstByte = request.timeouts.firstByte {
            transfer.firstByteDeadline = now + firstByte
            noteDeadline(now + firstByte)
        }

        // The method, in an order that leaves none of the last transfer's: NOBODY first (turning it off
        // turns HEAD back into GET), then POSTFIELDS (which itself means POST), then the method itself.
        let method = request.method.uppercased()
        _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_NOBODY, method == "HEAD" && request.body == nil ? 1 : 0)
        if let body = request.body {
            let pointer = UnsafeMutableRawPointer.allocate(byteCount: max(body.count, 1), alignment: 1)
            body.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: body.count) }
            transfer.bodyPointer = pointer
            _ = aimesh_curl_easy_setopt_off_t(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_POSTFIELDS, pointer)
            _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_POST, 1)
            _ = aimesh_curl_easy_setopt_string(easy, CURLOPT_CUSTOMREQUEST, method == "POST" ? nil : method)
        } else {
            _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_POSTFIELDS, nil)
            _ = aimesh_curl_easy_setopt_off_t(easy, CURLOPT_POSTFIELDSIZE_LARGE, -1)
            if method != "HEAD" { _ = aimesh_curl_easy_setopt_long(easy, CURLOPT_HTTPGET, 1) }
            _ = aimesh_curl_easy_setopt_string(easy, CURLOPT_CUSTOMREQUEST, method == "GET" || method == "HEAD" ? nil : method)
        }
        var list: UnsafeMutablePointer<curl_slist>? = nil
        for header in request.headers {
            // Checked as bytes: walking a long value (a hop header, a key) as Characters cost microseconds.
            guard !header.name.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 58 }),  // CR, LF, ':'
                  !header.value.utf8.contains(where: { $0 == 13 || $0 == 10 })
            else {
                curl_slist_free_all(list)
                throw TransferError(kind: .invalidRequest, phase: .beforeResponse, message: "header \(header.name) contains a line break")
            }
            list = CurlEngine.appendHeader(list, name: header.name, value: header.value)
        }
        // No "Expect: 100-continue" round trip for larger bodies.
        list = curl_slist_append(list, "Expect:")
        transfer.headerList = list
        _ = aimesh_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, list)
    }

    /// `url` parsed as curl parses a URL given as text, from `parsedURLs` or parsed now; nil past the limit or
    /// when curl rejects it (the transfer then fails as curl fails it, from the text).
    private func parsed(_ url: String) -> OpaquePointer? {
        if let handle = parsedURLs[url] { return handle }
        guard parsedURLs.count < Self.parsedLimit, let handle = curl_url() else { return nil }
        guard curl_url_set(handle, CURLUPART_URL, url, UInt32(CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME)) == CURLUE_OK else {
            curl_url_cleanup(handle)
            return nil
        }
        parsedURLs[url] = handle
        return handle
    }

    /// Appends `NAME: VALUE` to a header list, joined in a stack buffer (curl copies the line), not in a
    /// `String` made for each header of each request.
    static func appendHeader(_ list: UnsafeMutablePointer<curl_slist>?, name: String, value: String) -> UnsafeMutablePointer<curl_slist>? {
        var name = name, value = value
        return name.withUTF8 { name in
            value.withUTF8 { value in
                let count = name.count + 2 + value.count + 1
                return withUnsafeTemporaryAllocation(of: CChar.self, capacity: count) { line in
                    let bytes = UnsafeMutableRawBufferPointer(line)
                    bytes.copyMemory(from: UnsafeRawBufferPointer(name))
                    bytes[name.count] = UInt8(ascii: ":")
                    bytes[name.count + 1] = UInt8(ascii: " ")
                    UnsafeMutableRawBufferPointer(rebasing: bytes[(name.count + 2)...]).copyMemory(from: UnsafeRawBufferPointer(value))
                    line[count - 1] = 0
                    return curl_slist_append(list, line.baseAddress)
                }
            }
        }
    }

    private func readCompletions() {
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                  let transfer = active[easy]
            else { continue }
            let code = message.pointee.data.result
            if code == CURLE_OK {
                if transfer.headSeen {
                    complete(transfer, error: nil)
                } else {
                    complete(transfer, error: TransferError(kind: .connectionReset, phase: .beforeResponse, message: "the server closed the connection without a response"))
                }
            } else {
                complete(transfer, error: transferError(for: code, transfer: transfer))
            }
        }
    }

    /// Fails transfers past their first-byte or idle deadline; returns when the engine must next look:
    /// curl's timer, the nearest deadline, or a second from now at the latest. Walks the transfers only once
    /// the earliest deadline known (`checkDeadlinesAt`) has come, so a wake-up costs the same with a thousand
    /// streams open as with one; only the engine thread calls it, submitters use `newDeadline`.
    private func nextWake() -> ContinuousClock.Instant {
        let now = ContinuousClock.now
        _ = takeNewDeadline()
        var wake = now + .seconds(1)
        if let timerDeadline { wake = min(wake, timerDeadline) }
        if let check = checkDeadlinesAt, check > now { return min(wake, check) }
        checkDeadlinesAt = nil
        guard !active.isEmpty else { return wake }
        var late: [(Transfer, TransferError)] = []
        var earliest: ContinuousClock.Instant?
        for transfer in active.values {
            if !transfer.headSeen, let deadline = transfer.firstByteDeadline {
                if now >= deadline {
                    late.append((transfer, TransferError(kind: .firstByteTimeout, phase: .beforeResponse, message: "no response within \(Self.format(transfer.request.timeouts.firstByte!))")))
                    continue
                }
                earliest = earlier(earliest, deadline)
            }
            if transfer.headSeen, let idle = transfer.request.timeouts.idle {
                let paused = transfer.state.withLock { $0.paused }
                if paused { continue }
                let deadline = transfer.lastActivity + idle
                if now >= deadline {
                    late.append((transfer, TransferError(kind: .idleTimeout, phase: .duringBody, message: "the response stalled for \(Self.format(idle))")))
                    continue
                }
                earliest = earlier(earliest, deadline)
            }
        }
        for (transfer, error) in late { complete(transfer, error: error) }
        // With no deadline left, nothing needs a walk until one is noted.
        checkDeadlinesAt = earliest ?? now + .seconds(3600)
        if let earliest { wake = min(wake, earliest) }
        return wake
    }

    private func complete(_ transfer: Transfer, error: TransferError?) {
        cleanup(transfer)
        transfer.finish(error)
    }

    private func cleanup(_ transfer: Transfer) {
        if let easy = transfer.easy {
            if active.removeValue(forKey: easy) != nil {
                curl_multi_remove_handle(multi, easy)
            }
            if spareHandles.count < Self.spareLimit, !closed {
                // Kept with its options: the next transfer sets every one that differs (`configure`). The
                // pointers into this transfer (its buffers, its body, its header list) are cleared, so none
                // outlives it.
                _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_ERRORBUFFER, nil)
                _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_POSTFIELDS, nil)
                _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_PRIVATE, nil)
                _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, nil)
                _ = aimesh_curl_easy_setopt_pointer(easy, CURLOPT_HEADERDATA, nil)
                _ = aimesh_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, nil)
                spareHandles.append(easy)
            } else {
                curl_easy_cleanup(easy)
            }
            transfer.easy = nil
        }
        if let list = transfer.headerList {
            curl_slist_free_all(list)
            transfer.headerList = nil
        }
    }

    private func transferError(for code: CURLcode, transfer: Transfer) -> TransferError {
        let phase: TransferError.Phase = transfer.headSeen ? .duringBody : .beforeResponse
        let detail = String(cString: transfer.errorBuffer)
        let reason = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
        let kind: TransferError.Kind
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY: kind = .couldNotResolve
        case CURLE_COULDNT_CONNECT: kind = .couldNotConnect
        case CURLE_OPERATION_TIMEDOUT:
            if !transfer.headSeen, transfer.request.timeouts.connect != nil, reason.lowercased().contains("connect") {
                kind = .connectTimeout
            } else {
                kind = .totalTimeout
            }
        case CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE: kind = .connectionReset
        default: kind = .other(code: Int(code.rawValue))
        }
        return TransferError(kind: kind, phase: phase, message: Self.redact(reason))
    }

    static func format(_ duration: Duration) -> String {
        let ms = duration.milliseconds
        return ms % 1000 == 0 ? "\(ms / 1000)s" : "\(ms)ms"
    }

    /// Removes user:password@ from URLs and query strings (which may carry `key=`) from messages.
    static func redact(_ text: String) -> String {
        var out = ""
        var index = text.startIndex
        while index < text.endIndex {
            if let range = text[index...].range(of: "://") {
                out += text[index..<range.upperBound]
                var cursor = range.upperBound
                let authorityEnd = text[cursor...].firstIndex { $0 == "/" || $0 == " " || $0 == "?" } ?? text.endIndex
                if let at = text[cursor..<authorityEnd].lastIndex(of: "@") { cursor = text.index(after: at) }
                let pathEnd = text[cursor...].firstIndex { $0 == " " || $0 == "?" } ?? text.endIndex
                out += text[cursor..<pathEnd]
                index = pathEnd
                if index < text.endIndex, text[index] == "?" {
                    index = text[index...].firstIndex(of: " ") ?? text.endIndex
                }
            } else {
                out += text[index...]
                break
            }
        }
        return out
    }
}

/// A plain mutex with `tryLock` (the engine is entered by whichever thread gets there first).
final class EngineLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    func lock() { pthread_mutex_lock(mutex) }
    func tryLock() -> Bool { pthread_mutex_trylock(mutex) == 0 }
    func unlock() { pthread_mutex_unlock(mutex) }
}

extension Duration {
    fileprivate var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

extension StringProtocol {
    fileprivate func range(of needle: String) -> Range<Index>? {
        guard let first = needle.first else { return nil }
        var index = startIndex
        while index < endIndex {
            if self[index] == first, self[index...].hasPrefix(needle) {
                return index..<self.index(index, offsetBy: needle.count)
            }
            index = self.index(after: index)
        }
        return nil
    }
}

private func curlWriteCallback(_ pointer: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ userdata: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let userdata else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata).takeUnretainedValue()
    transfer.lastActivity = transfer.engine.passStart
    if length == 0 { return 0 }
    let bytes = [UInt8](UnsafeRawBufferPointer(start: pointer, count: length))
    return transfer.deliver(bytes) ? length : aimesh_curl_writefunc_pause()
}

private func curlHeaderCallback(_ pointer: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ userdata: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let userdata, let pointer else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata).takeUnretainedValue()
    transfer.lastActivity = transfer.engine.passStart
    // Read as bytes: a String per line (and a split of the status line) cost a dozen allocations a response.
    let line = UnsafeRawBufferPointer(start: pointer, count: length).bindMemory(to: UInt8.self)
    func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0D || byte == 0x0A }
    if line.starts(with: "HTTP/".utf8) {
        // A new response (after 100 Continue or a redirect): start over. "HTTP/1.1 200 OK" → 200.
        var index = 5
        while index < line.count, line[index] != 0x20 { index += 1 }
        while index < line.count, line[index] == 0x20 { index += 1 }
        var status = 0
        var digits = 0
        while index < line.count, digits < 3, line[index] >= 0x30, line[index] <= 0x39 {
            status = status * 10 + Int(line[index] - 0x30)
            index += 1
            digits += 1
        }
        transfer.status = digits == 3 ? status : 0
        transfer.headers.removeAll(keepingCapacity: true)
        transfer.headers.reserveCapacity(12)
    } else if line.allSatisfy(isSpace) {
        if transfer.status >= 200 && !transfer.headSeen {
            transfer.headSeen = true
            if let idle = transfer.request.timeouts.idle { transfer.engine.noteDeadline(transfer.engine.passStart + idle) }
            transfer.deliverHead()
        }
    } else if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
        var start = colon + 1
        var end = line.count
        while start < end, line[start] == 0x20 || line[start] == 0x09 { start += 1 }
        while end > start, isSpace(line[end - 1]) { end -= 1 }
        let name = String(decoding: UnsafeBufferPointer(rebasing: line[..<colon]), as: UTF8.self)
        let value = String(decoding: UnsafeBufferPointer(rebasing: line[start..<end]), as: UTF8.self)
        transfer.headers.append((name, value))
    }
    return length
}

/// The earlier of two instants, either possibly absent: the engine compares deadlines this way a few times for
/// every request it takes, with no array and no generic `min`.
@inline(__always)
private func earlier(_ a: ContinuousClock.Instant?, _ b: ContinuousClock.Instant?) -> ContinuousClock.Instant? {
    guard let a else { return b }
    guard let b else { return a }
    return b < a ? b : a
}
