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
        defaultLimits = Limits(requestsPerHour: security.defaultRequestsPerHour, tokensPerMinute: nil)
        var limits: [String: Limits] = [:]
        for key in security.apiKeys { limits[key.name] = Limits(requestsPerHour: key.requestsPerHour ?? security.defaultRequestsPerHour, tokensPerMinute: nil) }
        keyLimits = limits
    }

    var now: Duration { ContinuousClock.now - origin }

    /// Admits one request, or the 429 that explains which limit and when to retry.
    func admit(key: String?, ip: String?) -> APIError? {
        guard enabled else { return nil }
        var subjects: [(id: String, what: String, limits: Limits)] = []
        if byKey, let key { subjects.append(("key:\(key)", "API key '\(key)'", keyLimits[key] ?? defaultLimits)) }
        if byIP, let ip { subjects.append(("ip:\(ip)", "client \(ip)", defaultLimits)) }
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
                if let perMinute = subject.limits.tokensPerMinute {
                    var bucket = buckets[subject.id + "/tpm"] ?? TokenBucket(count: perMinute, per: .seconds(60), now: now)
                    let wait = bucket.wait(now: now)
                    buckets[subject.id + "/tpm"] = bucket
                    if wait > .zero { return RateLimiter.tooMany("\(subject.what) is over its limit of \(perMinute) tokens per minute", wait: wait) }
                }
            }
            for subject in subjects where subject.limits.requestsPerHour != nil {
                _ = buckets[subject.id + "/rph"]?.take(1, now: now)
            }
            return nil
        }
    }

    /// Charges a finished request's tokens to its key's tokens-per-minute bucket.
    func charge(key: String?, tokens: Int) {
        guard enabled, byKey, let key, tokens > 0, (keyLimits[key] ?? defaultLimits).tokensPerMinute != nil else { return }
        let now = self.now
        buckets.withLock { $0["key:\(key)/tpm"]?.charge(Double(tokens), now: now) }
    }

    static func tooMany(_ message: String, wait: Duration) -> APIError {
        var error = APIError(status: 429, type: "rate_limit_exceeded", code: "rate_limited", message: message)
        let seconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
        error.details["retry_after"] = .double(max(1, seconds.rounded(.up)))
        return error
    }
}
