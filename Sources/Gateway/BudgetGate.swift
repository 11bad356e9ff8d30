import Logging
import MeshCore
import NodeConfig
import Synchronization

/// Calendar periods in UTC, computed without Foundation (civil-from-days, Howard Hinnant's algorithm).
public enum BudgetPeriod {
    public static func dayStart(millis: Int64) -> Int64 { millis - millis.modulo(86_400_000) }

    public static func monthStart(millis: Int64) -> Int64 {
        let days = (millis - millis.modulo(86_400_000)) / 86_400_000
        let (year, month, _) = civil(fromDays: days)
        return daysFromCivil(year: year, month: month, day: 1) * 86_400_000
    }

    /// "2026-11-23" for a day, "2026-11" for a month.
    public static func dayKey(millis: Int64) -> String {
        let (y, m, d) = civil(fromDays: dayStart(millis: millis) / 86_400_000)
        return "\(y)-\(pad(m))-\(pad(d))"
    }

    public static func monthKey(millis: Int64) -> String {
        let (y, m, _) = civil(fromDays: dayStart(millis: millis) / 86_400_000)
        return "\(y)-\(pad(m))"
    }

    static func pad(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }

    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }

    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}

extension Int64 {
    fileprivate func modulo(_ m: Int64) -> Int64 { ((self % m) + m) % m }
}

/// The node's spend against `budget.daily_limit` / `monthly_limit`, its alerts, and whether paid routes
/// may run. Spend is kept in memory (seeded from the ledger at start) so no request reads the disk.
public final class BudgetGate: Sendable {
    struct State {
        var dayStart: Int64 = 0
        var monthStart: Int64 = 0
        var daySpend: Double = 0
        var monthSpend: Double = 0
        /// Alert thresholds already announced this period.
        var announced: Set<String> = []
        /// Maximum costs held for requests in flight (request id → dollars), settled when they end.
        var reservations: [String: Double] = [:]
        var reserved: Double = 0
    }

    public let settings: BudgetSection
    private let state = Mutex(State())
    private let logger: Logger

    public init(settings: BudgetSection, logger: Logger, nowMillis: Int64, daySpend: Double = 0, monthSpend: Double = 0) {
        self.settings = settings
        self.logger = logger
        state.withLock {
            $0.dayStart = BudgetPeriod.dayStart(millis: nowMillis)
            $0.monthStart = BudgetPeriod.monthStart(millis: nowMillis)
            $0.daySpend = daySpend
            $0.monthSpend = monthSpend
        }
    }

    public struct Status: Sendable {
        public var daySpend: Double
        public var monthSpend: Double
        /// Highest of day/month spend as a percentage of its limit (0 without limits).
        public var percentUsed: Double
        public var paidAllowed: Bool
        public var reason: String?
    }

    private func roll(_ state: inout State, nowMillis: Int64) {
        let day = BudgetPeriod.dayStart(millis: nowMillis)
        if day != state.dayStart {
            state.dayStart = day
            state.daySpend = 0
            state.announced = state.announced.filter { $0.hasPrefix("month") }
        }
        let month = BudgetPeriod.monthStart(millis: nowMillis)
        if month != state.monthStart {
            state.monthStart = month
            state.monthSpend = 0
            state.announced.removeAll()
        }
    }

    public func status(nowMillis: Int64) -> Status {
        state.withLock { state in
            roll(&state, nowMillis: nowMillis)
            return evaluate(state)
        }
    }

    func evaluate(_ state: State) -> Status {
        guard settings.enabled else { return Status(daySpend: state.daySpend, monthSpend: state.monthSpend, percentUsed: 0, paidAllowed: true) }
        var percent = 0.0
        if let limit = settings.dailyLimit, limit > 0 { percent = max(percent, state.daySpend / limit * 100) }
        if let limit = settings.monthlyLimit, limit > 0 { percent = max(percent, state.monthSpend / limit * 100) }
        if (settings.dailyLimit == 0) || (settings.monthlyLimit == 0) { percent = max(percent, 100) }
        if percent >= 100 {
            return Status(daySpend: state.daySpend, monthSpend: state.monthSpend, percentUsed: percent, paidAllowed: false,
                          reason: "the node's budget is spent (\(Int(percent))% of its limit)")
        }
        for alert in settings.alerts where alert.action == .disablePaidProviders && percent >= alert.thresholdPercent {
            return Status(daySpend: state.daySpend, monthSpend: state.monthSpend, percentUsed: percent, paidAllowed: false,
                          reason: "budget alert at \(Int(alert.thresholdPercent))% disabled paid providers")
        }
        return Status(daySpend: state.daySpend, monthSpend: state.monthSpend, percentUsed: percent, paidAllowed: true)
    }

    /// Holds a request's maximum cost against the limits before it is sent, so concurrent requests
    /// cannot together overspend. False when it would not fit (then only free routes may run).
    public func reserve(requestID: String, maxCost: Double, nowMillis: Int64) -> Bool {
        guard settings.enabled, settings.dailyLimit != nil || settings.monthlyLimit != nil, maxCost > 0 else { return true }
        return state.withLock { state in
            roll(&state, nowMillis: nowMillis)
            if let limit = settings.dailyLimit, state.daySpend + state.reserved + maxCost > limit { return false }
            if let limit = settings.monthlyLimit, state.monthSpend + state.reserved + maxCost > limit { return false }
            state.reservations[requestID, default: 0] += maxCost
            state.reserved += maxCost
            return true
        }
    }

    /// Drops a request's reservation (it failed, or it is being settled).
    public func release(requestID: String) {
        state.withLock { state in
            // Most requests reserve nothing (free routes, no limits): no id to hash then.
            guard !state.reservations.isEmpty else { return }
            if let held = state.reservations.removeValue(forKey: requestID) { state.reserved = max(0, state.reserved - held) }
        }
    }

    /// Money held for requests in flight.
    public var reserved: Double { state.withLock { $0.reserved } }

    /// Settles a request: its reservation goes, its real cost counts.
    public func settle(requestID: String, cost: Double, nowMillis: Int64) {
        release(requestID: requestID)
        add(cost: cost, nowMillis: nowMillis)
    }

    /// Adds a settled cost and announces alerts crossed.
    public func add(cost: Double, nowMillis: Int64) {
        guard cost > 0 else { return }
        let crossed: [(String, Double, Status)] = state.withLock { state in
            roll(&state, nowMillis: nowMillis)
            state.daySpend += cost
            state.monthSpend += cost
            let status = evaluate(state)
            var crossed: [(String, Double, Status)] = []
            for alert in settings.alerts where status.percentUsed >= alert.thresholdPercent {
                let key = "period-\(alert.thresholdPercent)"
                if state.announced.insert(key).inserted { crossed.append((alert.action.rawValue, alert.thresholdPercent, status)) }
            }
            if status.percentUsed >= 100, state.announced.insert("period-hard").inserted { crossed.append(("hard_stop", 100, status)) }
            return crossed
        }
        for (action, threshold, status) in crossed {
            logger.warning("budget threshold crossed", metadata: [
                "budget.threshold_percent": "\(threshold)", "budget.action": "\(action)",
                "budget.day_spend": "\(status.daySpend)", "budget.month_spend": "\(status.monthSpend)",
            ])
        }
    }
}

/// Per API key daily budgets (mesh-wide keys carry one). This node's spend per key and UTC day is
/// kept here and advertised in its capability record; the mesh total adds what peers advertise.
/// A request holds its maximum cost until it settles, like the node budget.
public final class KeyBudgets: Sendable {
    struct State {
        var spend: [String: [UInt32: Double]] = [:]
        var reservations: [String: (key: String, amount: Double)] = [:]
        var reserved: [String: Double] = [:]
        /// While some peers are unreachable (a partition, perhaps): per key, this node's own spend and
        /// the remaining budget when it began, and the number of nodes sharing that remainder.
        var partitionShare: [String: (spentAtStart: Double, allowance: Double)] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    public static func day(millis: Int64) -> UInt32 { UInt32(max(0, millis / 86_400_000)) }

    public func localSpend(key: String, day: UInt32) -> Double { state.withLock { $0.spend[key]?[day] ?? 0 } }

    /// This node's counters for the given days (for its record).
    public func counters(days: Set<UInt32>) -> [(key: String, day: UInt32, amount: Double)] {
        state.withLock { state in
            state.spend.flatMap { key, byDay in byDay.filter { days.contains($0.key) && $0.value > 0 }.map { (key, $0.key, $0.value) } }
                .sorted { ($0.key, $0.day) < ($1.key, $1.day) }
        }
    }

    /// Holds `maxCost` for the key if `elsewhere` (peers' spend today) + ours + in flight + it fits `budget`.
    ///
    /// While `unreachable` peers exist the mesh may be split, and each side only knows its own spend. Then
    /// a node keeps to an equal share of what remained when the split began (`nodes` = every node it
    /// knows, itself included), so all sides together cannot pass the budget by more than the requests
    /// in flight when it began (PROTOCOL.md §10).
    func reserve(requestID: String, key: String, maxCost: Double, budget: Double, elsewhere: Double, day: UInt32,
                 unreachable: Bool = false, nodes: Int = 1) -> Bool {
        state.withLock { state in
            let mine = state.spend[key]?[day] ?? 0
            let held = state.reserved[key] ?? 0
            let total = elsewhere + mine + held + maxCost
            guard total <= budget else { return false }
            if unreachable && nodes > 1 {
                if state.partitionShare[key] == nil {
                    let remaining = max(0, budget - elsewhere - mine - held)
                    state.partitionShare[key] = (mine + held, remaining / Double(nodes))
                }
                let share = state.partitionShare[key]!
                guard mine + held + maxCost - share.spentAtStart <= share.allowance else { return false }
            } else {
                state.partitionShare[key] = nil
            }
            state.reservations[requestID] = (key, maxCost)
            state.reserved[key, default: 0] += maxCost
            return true
        }
    }

    func release(requestID: String) {
        state.withLock { state in
            guard !state.reservations.isEmpty else { return }
            if let held = state.reservations.removeValue(forKey: requestID) { state.reserved[held.key] = max(0, (state.reserved[held.key] ?? 0) - held.amount) }
        }
    }

    /// Starts from what the ledger says a key spent today (after a restart).
    public func seed(key: String, day: UInt32, amount: Double) {
        guard amount > 0 else { return }
        state.withLock { $0.spend[key, default: [:]][day] = max($0.spend[key]?[day] ?? 0, amount) }
    }

    func settle(requestID: String, key: String?, cost: Double, day: UInt32) {
        release(requestID: requestID)
        guard let key, cost > 0 else { return }
        state.withLock { $0.spend[key, default: [:]][day, default: 0] += cost }
    }
}


/// Requests per mesh-wide key per minute on this node, advertised in its record (as counters named
/// `requests:NAME` for minute `period`) so that a key's per-minute limit holds across the mesh.
public final class KeyRequestCounts: Sendable {
    private let counts = Mutex<[String: [UInt32: Int]]>([:])

    public init() {}

    public static func minute(millis: Int64) -> UInt32 { UInt32(max(0, millis / 60_000)) }

    public func local(key: String, minute: UInt32) -> Int { counts.withLock { $0[key]?[minute] ?? 0 } }

    /// Counts one request if the mesh total (peers' counts + ours) is under `limit`.
    func admit(key: String, limit: Int, elsewhere: Int, minute: UInt32) -> Bool {
        counts.withLock { counts in
            let mine = counts[key]?[minute] ?? 0
            guard elsewhere + mine < limit else { return false }
            counts[key, default: [:]][minute] = mine + 1
            // Keep only the current and previous minute.
            if var byMinute = counts[key], byMinute.count > 2 {
                byMinute = byMinute.filter { $0.key + 1 >= minute }
                counts[key] = byMinute
            }
            return true
        }
    }

    /// Adds a finished request's tokens to the key's count for this minute (under `tokens:NAME`).
    func addTokens(key: String, tokens: Int, minute: UInt32) {
        guard tokens > 0 else { return }
        counts.withLock { $0["tokens:" + key, default: [:]][minute, default: 0] += tokens }
    }

    public func counters(minutes: Set<UInt32>) -> [(key: String, minute: UInt32, count: Int)] {
        counts.withLock { counts in
            counts.flatMap { key, byMinute in byMinute.filter { minutes.contains($0.key) }.map { (key, $0.key, $0.value) } }.sorted { ($0.key, $0.minute) < ($1.key, $1.minute) }
        }
    }
}
