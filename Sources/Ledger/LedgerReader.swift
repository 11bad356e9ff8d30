import MeshCore

/// Read-only queries over a ledger file, on a connection of its own (WAL lets it read while the
/// writer commits).
public final class LedgerReader: @unchecked Sendable {
    private let database: SQLiteDatabase

    public init(path: String) throws(SQLiteError) {
        self.database = try SQLiteDatabase(path: path)
        try database.execute("PRAGMA query_only=ON")
    }

    /// Total cost of rows at or after `sinceMillis`.
    public func spend(sinceMillis: Int64, apiKey: String? = nil) throws(SQLiteError) -> Double {
        if let apiKey {
            return try database.query("SELECT COALESCE(SUM(cost), 0) FROM requests WHERE ts_ms >= ? AND api_key = ?", [.integer(sinceMillis), .text(apiKey)]).first?.first?.double ?? 0
        }
        return try database.query("SELECT COALESCE(SUM(cost), 0) FROM requests WHERE ts_ms >= ?", [.integer(sinceMillis)]).first?.first?.double ?? 0
    }

    public func count() throws(SQLiteError) -> Int {
        Int(try database.query("SELECT COUNT(*) FROM requests").first?.first?.int ?? 0)
    }

    /// How many of the rows with sequence numbers 1...`sequence` are present (all of them, if every row
    /// the ledger acknowledged up to there survived).
    public func count(upToSequence sequence: Int) throws(SQLiteError) -> Int {
        Int(try database.query("SELECT COUNT(*) FROM requests WHERE seq BETWEEN 1 AND ?", [.integer(Int64(sequence))]).first?.first?.int ?? 0)
    }

    /// The most recent rows, newest first.
    public func recent(limit: Int = 100) throws(SQLiteError) -> [LedgerEntry] {
        try entries(where: "1=1", [], limit: limit)
    }

    public func entry(requestID: String) throws(SQLiteError) -> LedgerEntry? {
        try entries(where: "request_id = ?", [.text(requestID)], limit: 1).first
    }

    func entries(where clause: String, _ parameters: [SQLiteValue], limit: Int) throws(SQLiteError) -> [LedgerEntry] {
        let rows = try database.query("""
            SELECT request_id, ts_ms, api_key, model, route, provider, node, from_node, prompt_tokens, completion_tokens,
            tokens_estimated, cost, latency_ms, status, outcome, attempts, attempts_json, stream, error, metadata, endpoint
            FROM requests WHERE \(clause) ORDER BY seq DESC LIMIT ?
            """, parameters + [.integer(Int64(limit))])
        return rows.map { row in
            let route = (try? JSONParser.parse(row[4].string ?? "[]"))?.arrayValue?.compactMap(\.stringValue) ?? []
            return LedgerEntry(
                requestID: row[0].string ?? "", timestampMillis: row[1].int ?? 0, apiKey: row[2].string, model: row[3].string ?? "",
                route: route, provider: row[5].string, node: row[6].string ?? "", fromNode: row[7].string,
                promptTokens: Int(row[8].int ?? 0), completionTokens: Int(row[9].int ?? 0), tokensEstimated: row[10].int == 1,
                cost: row[11].double ?? 0, latencyMillis: row[12].double ?? 0, status: Int(row[13].int ?? 0), outcome: row[14].string ?? "",
                attempts: Int(row[15].int ?? 0), attemptsJSON: row[16].string ?? "[]", stream: row[17].int == 1, error: row[18].string,
                metadata: row[19].string, endpoint: row[20].string ?? "chat")
        }
    }

    /// Spend and counts grouped by a column, for usage reports.
    public struct UsageRow: Sendable {
        public var group: String
        public var requests: Int
        public var promptTokens: Int
        public var completionTokens: Int
        public var cost: Double
        public var errors: Int
    }

    public enum Grouping: String, Sendable, CaseIterable {
        case key, model, provider, node
        var column: String {
            switch self {
            case .key: "COALESCE(api_key, '(none)')"
            case .model: "model"
            case .provider: "COALESCE(provider, '(none)')"
            case .node: "node"
            }
        }
    }

    public func usage(sinceMillis: Int64, groupBy: Grouping) throws(SQLiteError) -> [UsageRow] {
        let rows = try database.query("""
            SELECT \(groupBy.column) AS g, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost),
            SUM(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END)
            FROM requests WHERE ts_ms >= ? GROUP BY g ORDER BY SUM(cost) DESC, g
            """, [.integer(sinceMillis)])
        return rows.map {
            UsageRow(group: $0[0].string ?? "", requests: Int($0[1].int ?? 0), promptTokens: Int($0[2].int ?? 0),
                     completionTokens: Int($0[3].int ?? 0), cost: $0[4].double ?? 0, errors: Int($0[5].int ?? 0))
        }
    }

    public func integrityCheck() throws(SQLiteError) -> String {
        try database.query("PRAGMA integrity_check").first?.first?.string ?? "?"
    }
}
