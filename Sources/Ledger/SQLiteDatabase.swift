import CSQLite

/// A failed SQLite call, with SQLite's own message.
public struct SQLiteError: Error, Sendable, CustomStringConvertible {
    public var code: Int32
    public var message: String
    public var description: String { "SQLite error \(code): \(message)" }
}

/// A value to bind or read.
public enum SQLiteValue: Sendable, Equatable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])

    public var int: Int64? {
        switch self {
        case .integer(let value): value
        case .real(let value): Int64(value)
        default: nil
        }
    }

    public var double: Double? {
        switch self {
        case .integer(let value): Double(value)
        case .real(let value): value
        default: nil
        }
    }

    public var string: String? {
        if case .text(let value) = self { return value }
        return nil
    }
}

/// One SQLite connection. Not thread-safe: each owner (the ledger's writer thread, a reader) has its own.
public final class SQLiteDatabase: @unchecked Sendable {
    private var handle: OpaquePointer?
    public let path: String

    public init(path: String, readOnly: Bool = false) throws(SQLiteError) {
        self.path = path
        let flags = readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
        let status = sqlite3_open_v2(path, &handle, flags | SQLITE_OPEN_NOMUTEX, nil)
        guard status == SQLITE_OK else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(handle)
            handle = nil
            throw SQLiteError(code: status, message: "\(message) (\(path))")
        }
        sqlite3_busy_timeout(handle, 5000)
    }

    deinit {
        close()
    }

    public func close() {
        if let handle {
            sqlite3_close_v2(handle)
            self.handle = nil
        }
    }

    private func error(_ code: Int32) -> SQLiteError {
        SQLiteError(code: code, message: handle.map { String(cString: sqlite3_errmsg($0)) } ?? "closed")
    }

    /// Runs one or more statements without results.
    public func execute(_ sql: String) throws(SQLiteError) {
        var message: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &message)
        if status != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? "error"
            sqlite3_free(message)
            throw SQLiteError(code: status, message: text)
        }
    }

    public func prepare(_ sql: String) throws(SQLiteError) -> Statement {
        var statement: OpaquePointer?
        let status = sqlite3_prepare_v2(handle, sql, -1, &statement, nil)
        guard status == SQLITE_OK, let statement else { throw error(status) }
        return Statement(statement: statement, database: self)
    }

    /// Rows of a query, each as an array of values.
    public func query(_ sql: String, _ parameters: [SQLiteValue] = []) throws(SQLiteError) -> [[SQLiteValue]] {
        let statement = try prepare(sql)
        try statement.bind(parameters)
        var rows: [[SQLiteValue]] = []
        while try statement.step() { rows.append(statement.row()) }
        return rows
    }

    public var changes: Int { Int(sqlite3_changes(handle)) }

    public final class Statement {
        let statement: OpaquePointer
        unowned let database: SQLiteDatabase

        init(statement: OpaquePointer, database: SQLiteDatabase) {
            self.statement = statement
            self.database = database
        }

        deinit { sqlite3_finalize(statement) }

        public func bind(_ values: [SQLiteValue]) throws(SQLiteError) {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
            for (offset, value) in values.enumerated() { try bind(value, at: Int32(offset + 1)) }
        }

        /// One value (texts and blobs copied by SQLite).
        func bind(_ value: SQLiteValue, at index: Int32) throws(SQLiteError) {
            let status: Int32
            switch value {
            case .null: status = sqlite3_bind_null(statement, index)
            case .integer(let int): status = sqlite3_bind_int64(statement, index, int)
            case .real(let double): status = sqlite3_bind_double(statement, index, double)
            case .text(let text):
                status = text.withCString { aimesh_sqlite3_bind_text_transient(statement, index, $0, Int32(strlen($0))) }
            case .blob(let bytes):
                status = bytes.withUnsafeBytes { aimesh_sqlite3_bind_blob_transient(statement, index, $0.baseAddress, Int32(bytes.count)) }
            }
            guard status == SQLITE_OK else { throw database.error(status) }
        }

        /// Binds a row assembled in `row` (texts pointing into its one buffer, not copied by SQLite), runs
        /// to completion, and resets the statement and clears the bindings before the buffer can change —
        /// so the next run finds them so and need not clear them first (a 16-row statement has 352).
        func run(_ row: RowBinder) throws(SQLiteError) {
            try row.scratch.withUnsafeBufferPointer { (bytes: UnsafeBufferPointer<UInt8>) throws(SQLiteError) in
                // SQLite holds the buffer's addresses until the bindings are cleared: before the pointer's scope
                // ends, whether the row went in or failed.
                defer {
                    sqlite3_reset(statement)
                    sqlite3_clear_bindings(statement)
                }
                // An empty buffer (no text in the row, or only empty ones) has no address; SQLite reads nothing of
                // a zero-length text, so any non-null pointer serves.
                let base = UnsafeRawPointer(bytes.baseAddress ?? UnsafePointer(bitPattern: 1)!)
                for (offset, column) in row.columns.enumerated() {
                    let index = Int32(offset + 1)
                    let status: Int32
                    switch column {
                    case .null: status = sqlite3_bind_null(statement, index)
                    case .integer(let value): status = sqlite3_bind_int64(statement, index, value)
                    case .real(let value): status = sqlite3_bind_double(statement, index, value)
                    case .text(let start, let count):
                        status = aimesh_sqlite3_bind_text_static(statement, index, (base + start).assumingMemoryBound(to: CChar.self), Int32(count))
                    }
                    guard status == SQLITE_OK else { throw database.error(status) }
                }
                while try step() {}
            }
        }

        /// Advances; true when a row is available.
        public func step() throws(SQLiteError) -> Bool {
            let status = sqlite3_step(statement)
            switch status {
            case SQLITE_ROW: return true
            case SQLITE_DONE: return false
            default: throw database.error(status)
            }
        }

        /// Binds, runs to completion, resets — failed or not, so a failed statement holds nothing open.
        public func run(_ values: [SQLiteValue]) throws(SQLiteError) {
            try bind(values)
            defer { sqlite3_reset(statement) }
            while try step() {}
        }

        public func row() -> [SQLiteValue] {
            let count = sqlite3_column_count(statement)
            return (0..<count).map { column(Int32($0)) }
        }

        func column(_ index: Int32) -> SQLiteValue {
            switch sqlite3_column_type(statement, index) {
            case SQLITE_INTEGER: return .integer(sqlite3_column_int64(statement, index))
            case SQLITE_FLOAT: return .real(sqlite3_column_double(statement, index))
            case SQLITE_TEXT: return .text(String(cString: sqlite3_column_text(statement, index)))
            case SQLITE_BLOB:
                let count = Int(sqlite3_column_bytes(statement, index))
                guard count > 0, let pointer = sqlite3_column_blob(statement, index) else { return .blob([]) }
                return .blob([UInt8](UnsafeRawBufferPointer(start: pointer, count: count)))
            default: return .null
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One row of an insert, assembled without an allocation per value: every text's bytes go into one
/// buffer, and both the buffer and the column list keep their capacity from row to row. With
/// `SQLITE_TRANSIENT` SQLite copied each text into a new allocation, and a `[SQLiteValue]` per row with a
/// `String` for each value came first: about twenty allocations a row on the ledger's thread.
struct RowBinder {
    /// A column's value; plain data (no reference to retain or release), so the list is copied and
    /// cleared as bytes.
    enum Column {
        case null
        case integer(Int64)
        case real(Double)
        /// Bytes `start ..< start + count` of `scratch`.
        case text(start: Int, count: Int)
    }

    fileprivate(set) var scratch: [UInt8] = []
    fileprivate(set) var columns: [Column] = []

    mutating func reset() {
        scratch.removeAll(keepingCapacity: true)
        columns.removeAll(keepingCapacity: true)
    }

    mutating func null() { columns.append(.null) }
    mutating func integer(_ value: Int64) { columns.append(.integer(value)) }
    mutating func real(_ value: Double) { columns.append(.real(value)) }

    mutating func text(_ value: String) {
        let start = scratch.count
        scratch.append(contentsOf: value.utf8)
        columns.append(.text(start: start, count: scratch.count - start))
    }

    mutating func text(_ value: String?) {
        if let value { text(value) } else { null() }
    }

    /// A text value written by `write` straight into the buffer.
    mutating func text(writing write: (inout [UInt8]) -> Void) {
        let start = scratch.count
        write(&scratch)
        columns.append(.text(start: start, count: scratch.count - start))
    }
}
