import Ledger
import MeshCore
import MeshState
import Membership
import Synchronization
import Wire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The real node's record store: signed records, checked against the trust store.
public struct TableStore: RecordStore {
    public var table = RecordTable()
    public var trust: TrustStore
    /// Wall clock for expiry checks, set by the service before each call.
    public var wallNowMillis: Int64 = 0
    /// Refusals since the service last drained them.
    public var rejections: [Rejection] = []

    public init(trust: TrustStore) { self.trust = trust }

    public mutating func merge(_ bytes: [UInt8], now: Duration) -> NodeID? {
        switch table.merge(bytes, trust: trust, nowMillis: wallNowMillis) {
        case .accepted(let record): return record.origin
        case .stale: return nil
        case .rejected(let reason):
            rejections.append(reason)
            return nil
        }
    }

    public func digest() -> [DigestEntry] { table.digest() }
    public func newer(than digest: [DigestEntry]) -> [[UInt8]] { table.newer(than: digest) }
}

/// What survives a restart: incarnation and record version (so neither goes backwards), and the
/// peers this node knew (so it rejoins alone). `data_dir/mesh.sqlite`.
public final class MeshPersistence: @unchecked Sendable {
    let database: SQLiteDatabase
    /// Every use holds this lock; once it reads true (`close()`), calls are no-ops (late callbacks at shutdown).
    let closed = Mutex(false)

    public init(path: String) throws(SQLiteError) {
        database = try SQLiteDatabase(path: path)
        try database.execute("""
            PRAGMA journal_mode = WAL;
            CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS peers (address TEXT PRIMARY KEY, node TEXT NOT NULL, last_seen_ms INTEGER NOT NULL);
            """)
    }

    public func value(_ key: String) -> UInt64? {
        closed.withLock { closed in closed ? nil : unlockedValue(key) }
    }

    func unlockedValue(_ key: String) -> UInt64? {
        guard let rows = try? database.query("SELECT value FROM kv WHERE key = ?", [.text(key)]), let value = rows.first?.first?.int else { return nil }
        return UInt64(bitPattern: value)
    }

    public func set(_ key: String, _ value: UInt64) {
        closed.withLock { closed in if !closed { unlockedSet(key, value) } }
    }

    func unlockedSet(_ key: String, _ value: UInt64) {
        _ = try? database.query("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                [.text(key), .integer(Int64(bitPattern: value))])
    }

    /// A value strictly greater than both the stored one and `floor`, stored before it is returned.
    public func nextMonotonic(_ key: String, floor: UInt64) -> UInt64 {
        closed.withLock { closed in
            let next = max(((closed ? nil : unlockedValue(key)) ?? 0) + 1, floor)
            if !closed { unlockedSet(key, next) }
            return next
        }
    }

    public func rememberPeers(_ peers: [(address: PeerAddress, node: NodeID)], nowMillis: Int64) {
        closed.withLock { closed in if !closed { unlockedRememberPeers(peers, nowMillis: nowMillis) } }
    }

    func unlockedRememberPeers(_ peers: [(address: PeerAddress, node: NodeID)], nowMillis: Int64) {
        for peer in peers {
            _ = try? database.query("""
                INSERT INTO peers (address, node, last_seen_ms) VALUES (?, ?, ?)
                ON CONFLICT(address) DO UPDATE SET node = excluded.node, last_seen_ms = excluded.last_seen_ms
                """, [.text(peer.address.description), .text(peer.node.hex), .integer(nowMillis)])
        }
        // Forget peers not seen for a week.
        _ = try? database.query("DELETE FROM peers WHERE last_seen_ms < ?", [.integer(nowMillis - 7 * 86_400_000)])
    }

    public func knownPeers(limit: Int = 32) -> [PeerAddress] {
        closed.withLock { closed in
            guard !closed, let rows = try? database.query("SELECT address FROM peers ORDER BY last_seen_ms DESC LIMIT ?", [.integer(Int64(limit))]) else { return [] }
            return rows.compactMap { $0.first?.string.flatMap(PeerAddress.init(parsing:)) }
        }
    }

    public func close() {
        closed.withLock { closed in
            guard !closed else { return }
            closed = true
            database.close()
        }
    }
}
