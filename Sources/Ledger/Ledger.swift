import Logging
import MeshCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One request as the ledger keeps it.
public struct LedgerEntry: Sendable, Equatable {
    public var requestID: String
    /// Milliseconds since 1970.
    public var timestampMillis: Int64
    /// The client key's name (never the key), or nil.
    public var apiKey: String?
    public var model: String
    /// The path the request took, e.g. ["node-a", "node-c", "openai"].
    public var route: [String]
    public var provider: String?
    /// The node that served it.
    public var node: String
    /// The node that forwarded it here (nil when a client called this node directly).
    public var fromNode: String?
    public var promptTokens: Int
    public var completionTokens: Int
    public var tokensEstimated: Bool
    public var cost: Double
    public var latencyMillis: Double
    public var status: Int
    /// ok, error, partial (stream cut after first byte), cache_hit.
    public var outcome: String
    public var attempts: Int
    /// Every try: [{route, outcome, latency_ms}] as JSON.
    public var attemptsJSON: String
    public var stream: Bool
    public var error: String?
    /// The client's `x-aiproxy-metadata`, as JSON text.
    public var metadata: String?
    public var endpoint: String

    public init(requestID: String, timestampMillis: Int64, apiKey: String? = nil, model: String, route: [String] = [], provider: String? = nil,
                node: String, fromNode: String? = nil, promptTokens: Int = 0, completionTokens: Int = 0, tokensEstimated: Bool = false,
                cost: Double = 0, latencyMillis: Double = 0, status: Int = 200, outcome: String = "ok", attempts: Int = 1,
                attemptsJSON: String = "[]", stream: Bool = false, error: String? = nil, metadata: String? = nil, endpoint: String = "chat") {
        self.requestID = requestID
        self.timestampMillis = timestampMillis
        self.apiKey = apiKey
        self.model = model
        self.route = route
        self.provider = provider
        self.node = node
        self.fromNode = fromNode
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.tokensEstimated = tokensEstimated
        self.cost = cost
        self.latencyMillis = latencyMillis
        self.status = status
        self.outcome = outcome
        self.attempts = attempts
        self.attemptsJSON = attemptsJSON
        self.stream = stream
        self.error = error
        self.metadata = metadata
        self.endpoint = endpoint
    }
}

/// The SQLite ledger (WAL): one row per request. `record` only enqueues; a writer thread commits
/// batches, so no request waits on the disk. A row counts as recorded once `committedSequence`
/// has passed its sequence number; committed rows survive `kill -9` (WAL, synchronous=NORMAL).
public final class Ledger: Sendable {
    public let path: String
    private let state: Mutex<WriterState>
    private let condition = ConditionBox()
    private let logger: Logger
    private let thread: Mutex<pthread_t?> = Mutex(nil)
    /// Longest time an entry waits before its batch commits.
    public let flushInterval: Duration
    public let maxBatch: Int

    struct WriterState {
        var pending: [(sequence: UInt64, entry: LedgerEntry)] = []
        var nextSequence: UInt64 = 1
        var committed: UInt64 = 0
        var stopping = false
        var stopped = false
        var failures = 0
        var waiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
        /// Like `waiters`, but they do not hurry the writer.
        var watchers: [(UInt64, CheckedContinuation<Void, Never>)] = []
        /// The writer sleeps until the next entry (set by the writer, cleared by the entry that wakes it).
        var writerIdle = false
    }

    public static let schemaVersion = 1

    public init(path: String, logger: Logger = Logger(label: "aimesh.ledger"), flushInterval: Duration = .milliseconds(20), maxBatch: Int = 512) throws(SQLiteError) {
        self.path = path
        self.logger = logger
        self.flushInterval = flushInterval
        self.maxBatch = maxBatch
        let database = try SQLiteDatabase(path: path)
        try Ledger.migrate(database)
        let maxSequence = try database.query("SELECT COALESCE(MAX(seq), 0) FROM requests").first?.first?.int ?? 0
        var initial = WriterState()
        initial.nextSequence = UInt64(maxSequence) + 1
        initial.committed = UInt64(maxSequence)
        self.state = Mutex(initial)
        startWriter(database)
    }

    static func migrate(_ database: SQLiteDatabase) throws(SQLiteError) {
        try database.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
        let version = try database.query("PRAGMA user_version").first?.first?.int ?? 0
        if version < 1 {
            try database.execute("""
                CREATE TABLE IF NOT EXISTS requests (
                    seq INTEGER PRIMARY KEY,
                    request_id TEXT NOT NULL,
                    ts_ms INTEGER NOT NULL,
                    api_key TEXT,
                    model TEXT NOT NULL,
                    route TEXT NOT NULL,
                    provider TEXT,
                    node TEXT NOT NULL,
                    from_node TEXT,
                    prompt_tokens INTEGER NOT NULL,
                    completion_tokens INTEGER NOT NULL,
                    tokens_estimated INTEGER NOT NULL,
                    cost REAL NOT NULL,
                    latency_ms REAL NOT NULL,
                    status INTEGER NOT NULL,
                    outcome TEXT NOT NULL,
                    attempts INTEGER NOT NULL,
                    attempts_json TEXT NOT NULL,
                    stream INTEGER NOT NULL,
                    error TEXT,
                    metadata TEXT,
                    endpoint TEXT NOT NULL
                );
                CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts_ms);
                CREATE INDEX IF NOT EXISTS requests_key_ts ON requests(api_key, ts_ms);
                CREATE INDEX IF NOT EXISTS requests_request_id ON requests(request_id);
                PRAGMA user_version = 1;
                """)
        }
    }

    /// Queues an entry and returns its sequence number at once. When the writer has to be woken, `wake` is
    /// given the wake-up to run: at once by default; a request handler passes one that runs it after its
    /// response is written, since waking an idle thread costs tens of microseconds on this path.
    @discardableResult
    public func record(_ entry: LedgerEntry, wake: (@escaping @Sendable () -> Void) -> Void = { $0() }) -> UInt64 {
        let (sequence, needsWake) = state.withLock { state -> (UInt64, Bool) in
            let sequence = state.nextSequence
            state.nextSequence += 1
            state.pending.append((sequence, entry))
            // Wake the writer when it sleeps with nothing to write, and when a batch is full. While it gathers
            // a batch (the flush interval), further entries do not cut that short.
            if state.pending.count >= maxBatch { return (sequence, true) }
            if state.writerIdle {
                state.writerIdle = false
                return (sequence, true)
            }
            return (sequence, false)
        }
        if needsWake { wake { [condition] in condition.signal() } }
        return sequence
    }

    /// The highest sequence number known to be committed to disk.
    public var committedSequence: UInt64 { state.withLock { $0.committed } }

    /// Entries waiting to be written.
    public var pendingCount: Int { state.withLock { $0.pending.count } }

    /// Batches that failed to commit since the ledger opened (their rows were kept and tried again).
    public var failedWrites: Int { state.withLock { $0.failures } }

    /// Waits until everything recorded so far is committed.
    public func flush() async {
        let target = state.withLock { $0.nextSequence - 1 }
        await waitUntilCommitted(target)
    }

    /// Waits until `sequence` is committed. It hurries the writer (commits without waiting for the flush
    /// interval) unless `hurry` is false, which only watches the writer do its work by itself.
    public func waitUntilCommitted(_ sequence: UInt64, hurry: Bool = true) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if state.committed >= sequence || state.stopped { return true }
                if hurry { state.waiters.append((sequence, continuation)) } else { state.watchers.append((sequence, continuation)) }
                return false
            }
            if ready { continuation.resume() } else if hurry { condition.signal() }
        }
    }

    /// Commits what is pending and stops the writer.
    public func close() {
        state.withLock { $0.stopping = true }
        condition.signal()
        let handle = thread.withLock { value -> pthread_t? in
            defer { value = nil }
            return value
        }
        if let handle { pthread_join(handle, nil) }
    }

    // MARK: Writer thread

    private func startWriter(_ database: SQLiteDatabase) {
        final class Box {
            let ledger: Ledger
            let database: SQLiteDatabase
            init(_ l: Ledger, _ d: SQLiteDatabase) { ledger = l; database = d }
        }
        let box = Unmanaged.passRetained(Box(self, database)).toOpaque()
        var handle = pthread_t()
        pthread_create(&handle, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            Ledger.becomeBackgroundThread()
            box.ledger.writerLoop(box.database)
            return nil
        }, box)
        thread.withLock { $0 = handle }
    }

    /// The writer is background work: its batches (SQLite inserts for every row of the last flush
    /// interval) must not hold a CPU that a request's threads are waiting for. On Linux the writer thread
    /// gets nice 10 (`setpriority` with who = 0 sets the calling thread's nice value there, not the
    /// process's): under contention the scheduler runs the request path first, and the writer still gets
    /// its share (a tenth of a busy thread's weight is far more than the few percent of a core it needs
    /// at full load; a batch that waits only grows, which costs less per row). It is also named
    /// `aimesh-ledger`, so `top -H` and profiles show it.
    static func becomeBackgroundThread() {
        #if os(Linux)
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 10)
        let fd = open("/proc/thread-self/comm", O_WRONLY)
        if fd >= 0 {
            _ = "aimesh-ledger".withCString { Glibc.write(fd, $0, strlen($0)) }
            Glibc.close(fd)
        }
        #endif
    }

    /// Rows one INSERT statement carries at most. A statement's own work (opening the table's and the three
    /// indexes' cursors, closing them, resetting) is paid once for all its rows: a row in a statement of 16
    /// costs about a fifth less than a row on its own (callgrind).
    static let rowsPerInsert = 16

    /// `INSERT INTO requests (...) VALUES (...), (...)` for `rows` rows.
    static func insertSQL(rows: Int) -> String {
        let tuple = "(" + Array(repeating: "?", count: columnCount).joined(separator: ", ") + ")"
        return """
            INSERT INTO requests (seq, request_id, ts_ms, api_key, model, route, provider, node, from_node, prompt_tokens,
            completion_tokens, tokens_estimated, cost, latency_ms, status, outcome, attempts, attempts_json, stream, error, metadata, endpoint)
            VALUES \(Array(repeating: tuple, count: rows).joined(separator: ", "))
            """
    }

    /// Columns of a ledger row (`bind` writes them in the order of `insertSQL`).
    static let columnCount = 22

    private func writerLoop(_ database: SQLiteDatabase) {
        let statements: WriterStatements
        do {
            statements = try WriterStatements(database)
        } catch {
            logger.critical("ledger cannot prepare its statements", metadata: ["error": "\(error)"])
            return
        }
        let intervalMicros = max(1000, Int(flushInterval.components.seconds * 1_000_000 + flushInterval.components.attoseconds / 1_000_000_000_000))
        var row = RowBinder()
        // The batch being written and the queue trade buffers, so neither is allocated anew per batch.
        var batch: [(sequence: UInt64, entry: LedgerEntry)] = []
        while true {
            let stopping = state.withLock { $0.stopping }
            let (hasWaiters, idle) = state.withLock { state -> (Bool, Bool) in
                state.writerIdle = state.pending.isEmpty
                return (!state.waiters.isEmpty, state.pending.isEmpty)
            }
            // Idle: sleep until the next entry arrives. Otherwise give the batch up to the flush interval to fill.
            if !stopping && !hasWaiters {
                if idle {
                    condition.wait(microseconds: nil)
                    continue  // the first entry arrived: now gather its batch
                }
                condition.wait(microseconds: intervalMicros)
            }
            state.withLock { state in swap(&state.pending, &batch) }
            if !batch.isEmpty { write(batch, with: statements, row: &row) }
            batch.removeAll(keepingCapacity: true)
            let (done, ready) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                let committed = state.committed
                var ready: [CheckedContinuation<Void, Never>] = []
                let isReady = { (sequence: UInt64, continuation: CheckedContinuation<Void, Never>) -> Bool in
                    guard sequence <= committed || (state.stopping && state.pending.isEmpty) else { return false }
                    ready.append(continuation)
                    return true
                }
                state.waiters.removeAll(where: isReady)
                state.watchers.removeAll(where: isReady)
                let done = state.stopping && state.pending.isEmpty
                if done { state.stopped = true }
                return (done, ready)
            }
            for continuation in ready { continuation.resume() }
            if done { break }
        }
        database.close()
    }

    private func write(_ batch: [(sequence: UInt64, entry: LedgerEntry)], with statements: WriterStatements, row: inout RowBinder) {
        do {
            try statements.begin.run([])
            var start = batch.startIndex
            while start < batch.endIndex {
                let end = min(start + Ledger.rowsPerInsert, batch.endIndex)
                row.reset()
                for index in start..<end { Ledger.bind(&row, sequence: batch[index].sequence, entry: batch[index].entry) }
                try statements.insert(rows: end - start).run(row)
                start = end
            }
            try statements.commit.run([])
            let last = batch.last!.sequence
            state.withLock { $0.committed = max($0.committed, last) }
        } catch {
            try? statements.database.execute("ROLLBACK")
            let failures = state.withLock { state -> Int in
                state.failures += 1
                // Keep the rows for the next try (bounded: drop the oldest beyond 100k).
                state.pending.insert(contentsOf: batch, at: 0)
                if state.pending.count > 100_000 { state.pending.removeFirst(state.pending.count - 100_000) }
                return state.failures
            }
            if failures == 1 || failures % 100 == 0 {
                logger.error("ledger write failed; will retry", metadata: ["error": "\(error)", "ledger.failures": "\(failures)"])
            }
            usleep(100_000)
        }
    }

    /// Appends an entry as the insert's 22 columns, in their order, after the rows `row` already has.
    static func bind(_ row: inout RowBinder, sequence: UInt64, entry: borrowing LedgerEntry) {
        row.integer(Int64(sequence))
        row.text(entry.requestID)
        row.integer(entry.timestampMillis)
        row.text(entry.apiKey)
        row.text(entry.model)
        row.text { JSON.encodeStrings(entry.route, into: &$0) }  // the route as a JSON array of strings
        row.text(entry.provider)
        row.text(entry.node)
        row.text(entry.fromNode)
        row.integer(Int64(entry.promptTokens))
        row.integer(Int64(entry.completionTokens))
        row.integer(entry.tokensEstimated ? 1 : 0)
        row.real(entry.cost)
        row.real(entry.latencyMillis)
        row.integer(Int64(entry.status))
        row.text(entry.outcome)
        row.integer(Int64(entry.attempts))
        row.text(entry.attemptsJSON)
        row.integer(entry.stream ? 1 : 0)
        row.text(entry.error)
        row.text(entry.metadata)
        row.text(entry.endpoint)
    }
}

/// The ledger writer's prepared statements: a batch's BEGIN and COMMIT, prepared once (`execute` would parse
/// and compile both for every batch: 8,400 instructions, callgrind; a lightly loaded node commits a batch per
/// request), and INSERTs for 1 ... `Ledger.rowsPerInsert` rows, each prepared when a batch first needs it.
/// Used by the writer thread only.
private final class WriterStatements {
    let database: SQLiteDatabase
    let begin: SQLiteDatabase.Statement
    let commit: SQLiteDatabase.Statement
    private var inserts: [SQLiteDatabase.Statement?]

    init(_ database: SQLiteDatabase) throws(SQLiteError) {
        self.database = database
        begin = try database.prepare("BEGIN IMMEDIATE")
        commit = try database.prepare("COMMIT")
        inserts = Array(repeating: nil, count: Ledger.rowsPerInsert + 1)
        inserts[1] = try database.prepare(Ledger.insertSQL(rows: 1))
    }

    func insert(rows: Int) throws(SQLiteError) -> SQLiteDatabase.Statement {
        if let statement = inserts[rows] { return statement }
        let statement = try database.prepare(Ledger.insertSQL(rows: rows))
        inserts[rows] = statement
        return statement
    }
}

/// A pthread condition variable with an optional timeout.
final class ConditionBox: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var signalled = false

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    func signal() {
        pthread_mutex_lock(&mutex)
        signalled = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    func wait(microseconds: Int?) {
        pthread_mutex_lock(&mutex)
        if !signalled, microseconds == nil {
            while !signalled { pthread_cond_wait(&condition, &mutex) }
        } else if !signalled, let microseconds {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            var deadline = timespec()
            let nanos = Int(now.tv_nsec) + (microseconds % 1_000_000) * 1000
            deadline.tv_sec = now.tv_sec + microseconds / 1_000_000 + nanos / 1_000_000_000
            deadline.tv_nsec = nanos % 1_000_000_000
            pthread_cond_timedwait(&condition, &mutex, &deadline)
        }
        signalled = false
        pthread_mutex_unlock(&mutex)
    }
}
