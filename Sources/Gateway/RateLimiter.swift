import MeshCore
import NodeConfig
import Routing
import Synchronization

/// Per API key and per client IP token buckets (requests per hour, the AIProxy standard's unit, and
/// optionally tokens per minute), local to this node. Over the limit: 429 with `retry-after`.
public final class RateLimiter: Sendable {
    struct Limits: Sendable {
        var requestsPerHour: Int?
        var tokensPerMinute: Int?
        var requestsPerMinute: Int?
    }

    let enabled: Bool
    let byIP: Bool
    let byKey: Bool
    let defaultLimits: Limits
    let keyLimits: [String: Limits]
    private let buckets = Mutex<[String: TokenBucket]>([:])
    private let origin = ContinuousClock.now
    static let maxBuckets = 100_000

    init(security: SecuritySection) {
        enabled = security.rateLimitingEnabled
        byIP = security.rateLimitByIP
        byKey = security.rateLimitByAPIKey
        defaultLimits = Limits(requestsPerHour: security.defaultRequestsPerHour, tokensPerMinute: nil, requestsPerMinute: nil)
        var limits: [String: Limits] = [:]
        for key in security.apiKeys { limits[key.name] = Limits(requestsPerHour: key.requestsPerHour ?? security.defaultRequestsPerHour, tokensPerMinute: nil, requestsPerMinute: nil) }
        keyLimits = limits
    }

    var now: Duration { ContinuousClock.now - origin }

    /// Admits one request, or the 429 that explains which limit and when to retry.
    func admit(key: String?, ip: @autoclosure () -> String?, override: ClientKey? = nil) -> APIError? {
        var subjects: [(id: String, what: String, limits: Limits)] = []
        // Limits a mesh-wide key carries apply even when node-level limiting is off.
        if let override, override.requestsPerMinute != nil || override.tokensPerMinute != nil {
            subjects.append(("mesh-key:\(override.name)", "API key '\(override.name)'",
                             Limits(requestsPerHour: nil, tokensPerMinute: override.tokensPerMinute, requestsPerMinute: override.requestsPerMinute)))
        }
        if enabled, byKey, let key { subjects.append(("key:\(key)", "API key '\(key)'", keyLimits[key] ?? defaultLimits)) }
        if enabled, byIP, let ip = ip() { subjects.append(("ip:\(ip)", "client \(ip)", defaultLimits)) }
        guard !subjects.isEmpty else { return nil }
        return admitSubjects(subjects)
    }

    private func admitSubjects(_ subjects: [(id: String, what: String, limits: Limits)]) -> APIError? {
        let now = self.now
        return buckets.withLock { buckets -> APIError? in
            if buckets.count > RateLimiter.maxBuckets { buckets.removeAll(keepingCapacity: true) }
            // Check every limit before spending from any, so a refusal costs nothing.
            for subject in subjects {
                if let perHour = subject.limits.requestsPerHour {
                    var bucket = buckets[subject.id + "/rph"] ?? TokenBucket(count: perHour, per: .seconds(3600), now: now)
                    let wait = bucket.wait(now: now)
                    buckets[subject.id + "/rph"] = bucket
                    if wait > .zero { return RateLimiter.tooMany("\(subject.what) is over its limit of \(perHour) requests per hour", wait: wait) }
                }
                if let perMinute = subject.limits.requestsPerMinute {
                    var bucket = buckets[subject.id + "/rpm"] ?? TokenBucket(count: perMinute, per: .seconds(60), now: now)
                    let wait = bucket.wait(now: now)
                    buckets[subject.id + "/rpm"] = bucket
                    if wait > .zero { return RateLimiter.tooMany("\(subject.what) is over its limit of \(perMinute) requests per minute", wait: wait) }
                }
                if let perMinute = subject.limits.tokensPerMinute {
                    var bucket = buckets[subject.id + "/tpm"] ?? TokenBucket(count: perMinute, per: .seconds(60), now: now)
                    let wait = bucket.wait(now: now)
                    buckets[subject.id + "/tpm"] = bucket
                    if wait > .zero { return RateLimiter.tooMany("\(subject.what) is over its limit of \(perMinute) tokens per minute", wait: wait) }
                }
            }
            for subject in subjects {
                if subject.limits.requestsPerHour != nil { _ = buckets[subject.id + "/rph"]?.take(1, now: now) }
                if subject.limits.requestsPerMinute != nil { _ = buckets[subject.id + "/rpm"]?.take(1, now: now) }
            }
            return nil
        }
    }

    /// Charges a finished request's tokens to its key's tokens-per-minute bucket.
    func charge(key: String?, tokens: Int) {
        guard let key, tokens > 0 else { return }
        let now = self.now
        buckets.withLock { buckets in
            for id in ["key:\(key)/tpm", "mesh-key:\(key)/tpm"] where buckets[id] != nil { buckets[id]?.charge(Double(tokens), now: now) }
        }
    }

    static func tooMany(_ message: String, wait: Duration) -> APIError {
        var error = APIError(status: 429, type: "rate_limit_exceeded", code: "rate_limited", message: message)
        let seconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
        error.details["retry_after"] = .double(max(1, seconds.rounded(.up)))
        return error
    }
}
