import MeshCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Exact-match response cache in SQLite (`data_dir/cache.sqlite`), bounded in entry size, total
/// bytes and entry count; expired and oldest entries go first.
public final class ResponseCache: @unchecked Sendable {
    public struct Limits: Sendable {
        public var maxEntryBytes: Int
        public var maxTotalBytes: Int
        public var maxEntries: Int
        public init(maxEntryBytes: Int = 1 << 20, maxTotalBytes: Int = 64 << 20, maxEntries: Int = 10_000) {
            self.maxEntryBytes = maxEntryBytes
            self.maxTotalBytes = maxTotalBytes
            self.maxEntries = maxEntries
        }
    }

    let database: SQLiteDatabase
    public let limits: Limits
    private let lock = Mutex(())

    public init(path: String, limits: Limits = Limits()) throws(SQLiteError) {
        database = try SQLiteDatabase(path: path)
        self.limits = limits
        try database.execute("""
            PRAGMA journal_mode = WAL;
            PRAGMA synchronous = NORMAL;
            CREATE TABLE IF NOT EXISTS cache (
                key BLOB PRIMARY KEY, model TEXT NOT NULL, body BLOB NOT NULL, size INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
                created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS cache_created ON cache(created_ms);
            """)
    }

    func locked<T: Sendable>(_ body: () -> T) -> T {
        lock.withLock { _ in body() }
    }

    public struct Hit: Sendable {
        public var body: [UInt8]
        public var promptTokens: Int
        public var completionTokens: Int
        public var ageMillis: Int64
    }

    public func lookup(_ key: [UInt8], nowMillis: Int64) -> Hit? {
        locked {
            guard let row = try? database.query("SELECT body, prompt_tokens, completion_tokens, created_ms FROM cache WHERE key = ? AND expires_ms > ?",
                                                [.blob(key), .integer(nowMillis)]).first,
                  case .blob(let body) = row[0] else { return nil }
            _ = try? database.query("UPDATE cache SET hits = hits + 1 WHERE key = ?", [.blob(key)])
            return Hit(body: body, promptTokens: Int(row[1].int ?? 0), completionTokens: Int(row[2].int ?? 0), ageMillis: nowMillis - (row[3].int ?? nowMillis))
        }
    }

    /// Stores an answer; returns false when it is larger than one entry may be.
    @discardableResult
    public func store(_ key: [UInt8], model: String, body: [UInt8], promptTokens: Int, completionTokens: Int, ttlMillis: Int64, nowMillis: Int64) -> Bool {
        guard body.count <= limits.maxEntryBytes, ttlMillis > 0 else { return false }
        return locked {
            _ = try? database.query("""
                INSERT INTO cache (key, model, body, size, prompt_tokens, completion_tokens, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(key) DO UPDATE SET body = excluded.body, size = excluded.size, created_ms = excluded.created_ms, expires_ms = excluded.expires_ms
                """, [.blob(key), .text(model), .blob(body), .integer(Int64(body.count)), .integer(Int64(promptTokens)), .integer(Int64(completionTokens)),
                      .integer(nowMillis), .integer(nowMillis + ttlMillis)])
            evict(nowMillis: nowMillis)
            return true
        }
    }

    /// Drops expired entries, then the oldest until within the count and byte bounds.
    func evict(nowMillis: Int64) {
        _ = try? database.query("DELETE FROM cache WHERE expires_ms <= ?", [.integer(nowMillis)])
        guard let stats = try? database.query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache").first else { return }
        var count = Int(stats[0].int ?? 0), bytes = Int(stats[1].int ?? 0)
        while count > limits.maxEntries || bytes > limits.maxTotalBytes {
            guard let oldest = try? database.query("SELECT key, size FROM cache ORDER BY created_ms ASC LIMIT 1").first else { return }
            _ = try? database.query("DELETE FROM cache WHERE key = ?", [oldest[0]])
            count -= 1
            bytes -= Int(oldest[1].int ?? 0)
        }
    }

    public var stats: (entries: Int, bytes: Int) {
        locked {
            let row = try? database.query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache").first
            return (Int(row?[0].int ?? 0), Int(row?[1].int ?? 0))
        }
    }

    public func close() { locked { database.close() } }
}

extension JSON {
    /// Canonical bytes for cache keys: object keys sorted at every level.
    public var canonicalBytes: [UInt8] {
        func sorted(_ value: JSON) -> JSON {
            switch value {
            case .object(let object):
                return .object(JSONObject(object.members.sorted { $0.key < $1.key }.map { JSONObject.Member(key: $0.key, value: sorted($0.value)) }))
            case .array(let items):
                return .array(items.map(sorted))
            default:
                return value
            }
        }
        return sorted(self).bytes
    }
}
