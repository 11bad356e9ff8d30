import CurlHTTP
import MeshCore
import NodeConfig
import Providers
import Routing

/// One try of one route, as `x_aiproxy.attempts` and the ledger show it.
public struct AttemptRecord: Sendable {
    public var route: String
    public var name: String
    public var outcome: String
    public var latency: Duration
    public var message: String?

    public var json: JSON {
        var object: JSONObject = ["route": .string(name), "outcome": .string(outcome), "latency_ms": .double(latency.millisecondsRounded)]
        if let message { object["error"] = .string(message) }
        return .object(object)
    }
}

extension Duration {
    /// Milliseconds with three decimals.
    public var millisecondsRounded: Double { (millisecondsDouble * 1000).rounded() / 1000 }

    /// `String(millisecondsRounded)` ("2.961", "3.0"), without the general double-to-text search.
    public var millisecondsRoundedText: String {
        let value = millisecondsRounded
        return JSON.thousandthsText(value) ?? String(value)
    }
}

/// Runs a plan: tries routes in order before the first byte reaches the client, with per-attempt
/// limits, an overall deadline, exponential backoff when a route is tried again, and the board's
/// circuit breakers (DESIGN.md §5).
struct RequestExecutor: Sendable {
    let board: RouteBoard
    let failover: RoutingSection.Failover

    enum Outcome<Value: Sendable>: Sendable {
        case success(Value, route: ExecutableRoute, attempts: [AttemptRecord], upstreamTime: Duration)
        case failure(APIError, attempts: [AttemptRecord], upstreamTime: Duration)
    }

    /// Tries `routes` until one gives a value. `operation` must return only once the first byte of the
    /// answer is in hand (for streams: the first event), so a failure before that can still move on.
    func run<Value: Sendable>(
        routes: [ExecutableRoute],
        deadline: ContinuousClock.Instant,
        operation: @Sendable (ExecutableRoute, Timeouts) async throws -> Value,
        isStreamingValue: Bool = false
    ) async -> Outcome<Value> {
        var attempts: [AttemptRecord] = []
        var failures: [ProviderFailure] = []
        var upstreamTime = Duration.zero
        let maxAttempts = failover.enabled ? failover.maxRetries + 1 : 1
        var random = FastRandom()
        var tried = 0
        var pass = 0
        var index = 0
        var retryable: Set<String> = []  // routes worth another pass
        var triedThisPass = 0

        while tried < maxAttempts && !routes.isEmpty {
            if index == routes.count {
                index = 0
                pass += 1
                if retryable.isEmpty || triedThisPass == 0 { break }
                triedThisPass = 0
            }
            let route = routes[index]
            index += 1
            if pass > 0 {
                guard retryable.contains(route.candidate.id) else { continue }
                let delay = Backoff.delay(attempt: pass - 1, base: failover.retryDelay, maximum: failover.maxRetryDelay, using: &random)
                if ContinuousClock.now + delay >= deadline { break }
                if delay > .zero {
                    do { try await Task.sleep(for: delay) } catch { break }
                }
            }
            let now = ContinuousClock.now
            if now >= deadline { break }
            guard board.begin(route.candidate.id, now: now) else {
                attempts.append(AttemptRecord(route: route.candidate.id, name: route.candidate.name, outcome: "circuit_open", latency: .zero))
                continue
            }
            tried += 1
            triedThisPass += 1
            let remaining = deadline - now
            var timeouts = Timeouts(connect: min(route.connectTimeout, remaining), firstByte: min(route.firstByteTimeout, remaining),
                                    idle: min(route.idleTimeout, remaining), total: isStreamingValue ? nil : remaining)
            if let attemptTimeout = failover.attemptTimeout {
                // Caps each attempt's wait for its answer: the whole answer for JSON, the first byte for a
                // stream (a stream may then run as long as it keeps sending).
                if isStreamingValue {
                    timeouts.firstByte = min(attemptTimeout, remaining, timeouts.firstByte ?? attemptTimeout)
                } else {
                    timeouts.total = min(attemptTimeout, remaining)
                }
            }
            let started = ContinuousClock.now
            do {
                let value = try await operation(route, timeouts)
                let elapsed = ContinuousClock.now - started
                upstreamTime += elapsed
                board.succeeded(route.candidate.id, latency: elapsed, now: ContinuousClock.now)
                attempts.append(AttemptRecord(route: route.candidate.id, name: route.candidate.name, outcome: "ok", latency: elapsed))
                if !isStreamingValue { board.ended(route.candidate.id) }
                return .success(value, route: route, attempts: attempts, upstreamTime: upstreamTime)
            } catch {
                let elapsed = ContinuousClock.now - started
                upstreamTime += elapsed
                board.ended(route.candidate.id)
                let failure = ProviderFailure.from(error)
                attempts.append(AttemptRecord(route: route.candidate.id, name: route.candidate.name, outcome: failure.label, latency: elapsed, message: failure.message))
                failures.append(failure)
                switch failure.kind {
                case .cancelled:
                    return .failure(APIError(status: 499, type: "cancelled", message: "the client went away"), attempts: attempts, upstreamTime: upstreamTime)
                case .rejected(let status):
                    // The request itself is at fault: another route would refuse it too. Not the route's fault either.
                    let json = failure.clientError ?? APIError.badRequest(failure.message).json
                    var apiError = APIError(status: status, type: json["error"]?["type"]?.stringValue ?? "invalid_request_error",
                                            code: json["error"]?["code"]?.stringValue, message: json["error"]?["message"]?.stringValue ?? failure.message)
                    apiError.details["attempts"] = .array(attempts.map(\.json))
                    return .failure(apiError, attempts: attempts, upstreamTime: upstreamTime)
                case .unsupported:
                    break
                default:
                    board.failed(route.candidate.id, now: ContinuousClock.now)
                    retryable.insert(route.candidate.id)
                }
            }
        }
        return .failure(exhausted(attempts: attempts, failures: failures, deadline: deadline), attempts: attempts, upstreamTime: upstreamTime)
    }

    /// The error when no route answered: 504 when time ran out or every failure was a timeout, 429
    /// when every route was rate limited, 503 when no route could even be tried, 502 otherwise.
    func exhausted(attempts: [AttemptRecord], failures: [ProviderFailure], deadline: ContinuousClock.Instant) -> APIError {
        let summary = attempts.map { attempt in
            "\(attempt.name): \(attempt.outcome)" + (attempt.message.map { " (\($0))" } ?? "")
        }.joined(separator: "; ")
        var error: APIError
        if failures.isEmpty {
            if attempts.isEmpty {
                error = APIError(status: 504, type: "timeout", code: "deadline_exceeded", message: "the request's deadline passed before any route could be tried")
            } else {
                error = APIError(status: 503, type: "service_unavailable", code: "circuit_open",
                                 message: "every route for this model is failing and paused (circuit open): \(summary)")
            }
        } else if failures.allSatisfy({ $0.kind == .timeout }) || ContinuousClock.now >= deadline {
            error = APIError(status: 504, type: "timeout", code: "upstream_timeout", message: "no route answered in time: \(summary)")
        } else if failures.allSatisfy({ $0.kind == .rateLimited }) {
            error = APIError(status: 429, type: "rate_limit_error", code: "upstream_rate_limited", message: "every route is rate limited: \(summary)")
            if let wait = failures.compactMap(\.retryAfter).min() { error.details["retry_after"] = .double(wait) }
        } else {
            error = APIError(status: 502, type: "upstream_error", code: "all_routes_failed", message: "every route failed: \(summary)")
        }
        error.details["attempts"] = .array(attempts.map(\.json))
        return error
    }
}
