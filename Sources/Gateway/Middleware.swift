import HTTPTypes
import Hummingbird
import MeshCore

/// Turns Hummingbird's own errors (unknown path, wrong method, body too large) into OpenAI's error JSON.
struct ErrorShapeMiddleware: RouterMiddleware {
    typealias Context = GatewayContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIErrorResponse {
            return error.error.response()
        } catch let error as HTTPError {
            let status = Int(error.status.code)
            switch status {
            case 404:
                return APIError(status: 404, type: "invalid_request_error", code: "unknown_url",
                                message: "unknown path \(request.method.rawValue) \(request.uri.path)").response()
            case 405:
                return APIError(status: 405, type: "invalid_request_error", code: "method_not_allowed",
                                message: "\(request.method.rawValue) is not allowed on \(request.uri.path)").response()
            case 413:
                return APIError.tooLarge(limit: context.maxUploadSize).response()
            default:
                return APIError(status: status, type: status >= 500 ? "server_error" : "invalid_request_error", message: error.body ?? "\(error.status.reasonPhrase)").response()
            }
        }
    }
}

/// Checks `Authorization: Bearer KEY` against the configured keys when auth is on.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let gateway: Gateway

    /// No key needed: liveness, metrics, and the map page (its data requests carry the key).
    static let publicPaths: Set<String> = ["/health", "/metrics", "/ui", "/aiproxy/keys", "/aiproxy/mesh/revocations"]
    static let apiKeyHeader = HTTPField.Name("x-api-key")!
    /// The endpoints whose handlers verify a hop header against the body.
    static let forwardablePaths = ["/v1/chat/completions", "/chat/completions", "/v1/embeddings", "/aiproxy/predict"]

    /// Whether the request's path is one of `forwardablePaths`, read from the request line without
    /// building a `String` (`request.uri.path` makes one, two allocations a request).
    static func isForwardable(_ request: Request) -> Bool {
        let target = request.head.path ?? ""
        let path = target.firstIndex(of: "?").map { target[..<$0] } ?? target[...]
        return forwardablePaths.contains { path == $0 }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard gateway.configuration.security.authEnabled, !AuthMiddleware.publicPaths.contains(request.uri.path) else {
            return try await next(request, context)
        }
        // Forwarded by a mesh member: the handler checks the signed hop header against the body
        // (client keys are checked at the entry node only).
        if gateway.remote != nil, request.headers.first(.aiproxyHop) != nil, request.headers.first(.authorization) == nil,
           AuthMiddleware.isForwardable(request) {
            return try await next(request, context)
        }
        let token: String
        if let header = request.headers[.authorization] {
            token = header.hasPrefix("Bearer ") ? String(header.dropFirst(7)) : header
        } else if let key = request.headers[AuthMiddleware.apiKeyHeader] {
            token = key
        } else {
            throw APIErrorResponse(error: .unauthorized("missing API key: send Authorization: Bearer KEY"))
        }
        let key: ClientKey
        switch gateway.authenticate(bearer: token) {
        case .success(let found): key = found
        case .failure(let error): throw APIErrorResponse(error: error)
        }
        var context = context
        context.apiKeyName = key.name
        context.clientKey = key
        return try await next(request, context)
    }
}

/// Request limits per API key and client IP on the model endpoints (forwarded requests were limited
/// at their entry node).
struct RateLimitMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let limiter: RateLimiter
    let gateway: Gateway

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .post, AuthMiddleware.isForwardable(request), request.headers.first(.aiproxyHop) == nil else {
            return try await next(request, context)
        }
        if let refusal = limiter.admit(key: context.apiKeyName, ip: context.remoteAddress, override: context.clientKey) {
            throw APIErrorResponse(error: refusal)
        }
        // A mesh-wide key's per-minute limit counts the requests every node made with it this minute.
        if let key = context.clientKey, let limit = key.requestsPerMinute, let elsewhere = gateway.meshKeyRequests {
            let now = wallClockMillis()
            let minute = KeyRequestCounts.minute(millis: now)
            if !gateway.keyRequests.admit(key: key.name, limit: limit, elsewhere: elsewhere(key.name, minute), minute: minute) {
                let wait = Duration.milliseconds(60_000 - now % 60_000)
                throw APIErrorResponse(error: RateLimiter.tooMany("API key '\(key.name)' is over its limit of \(limit) requests per minute across the mesh", wait: wait))
            }
        }
        if let key = context.clientKey, let limit = key.tokensPerMinute, let elsewhere = gateway.meshKeyRequests {
            let now = wallClockMillis()
            let minute = KeyRequestCounts.minute(millis: now)
            let used = elsewhere("tokens:" + key.name, minute) + gateway.keyRequests.local(key: "tokens:" + key.name, minute: minute)
            if used >= limit {
                throw APIErrorResponse(error: RateLimiter.tooMany("API key '\(key.name)' used its \(limit) tokens for this minute across the mesh",
                                                                   wait: .milliseconds(60_000 - now % 60_000)))
            }
        }
        return try await next(request, context)
    }
}

/// CORS for browsers calling the API directly.
struct CORSMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let allowedOrigins: [String]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let origin = request.headers[.origin]
        let allowed: String? = origin.flatMap { origin in
            allowedOrigins.contains("*") ? "*" : (allowedOrigins.contains(origin) ? origin : nil)
        }
        if request.method == .options {
            var headers: HTTPFields = [:]
            if let allowed {
                headers[.accessControlAllowOrigin] = allowed
                headers[.accessControlAllowMethods] = "GET, POST, OPTIONS"
                headers[.accessControlAllowHeaders] = "Authorization, Content-Type, X-AIProxy-Strategy, X-AIProxy-Max-Cost, X-AIProxy-Provider, X-AIProxy-Local-Only, X-AIProxy-Metadata"
                headers[.accessControlMaxAge] = "600"
            }
            return Response(status: .noContent, headers: headers)
        }
        var response = try await next(request, context)
        if let allowed {
            response.headers[.accessControlAllowOrigin] = allowed
            response.headers[.accessControlExposeHeaders] = "X-AIProxy-Request-ID, X-AIProxy-Node, X-AIProxy-Provider, X-AIProxy-Route, X-AIProxy-Cost"
        }
        return response
    }
}
