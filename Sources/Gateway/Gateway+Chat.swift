import CurlHTTP
import HTTPTypes
import Hummingbird
import Ledger
import Logging
import MeshCore
import NIOCore
import NIOPosix
import Providers
import Routing
import Sodium

/// Per-request choices from headers, the model suffix or the native request's `routing` object.
struct RequestOptions: Sendable {
    var strategy: RoutingStrategy
    var maxCost: Double?
    var pinned: String?
    var localOnly = false
    var metadata: String?
    var timeout: Duration?
    /// Nodes this request already passed (mesh forwarding fills it in).
    var visited: [String] = []
    var fromNode: String?
    /// `x-aiproxy-cache-ttl`: cache this answer for this long (0 turns caching off for the request).
    var cacheTTL: Duration?
    /// The client's key (its budget and limits).
    var clientKey: ClientKey?
}

/// A request's `x-aiproxy-*` headers, found in one pass over its fields: most requests carry none, and
/// looking each name up on its own scanned every field once per name. Repeated fields are joined with
/// ", ", as `HTTPFields`' subscript joins them.
struct AIProxyRequestHeaders {
    var strategy: String?
    var maxCost: String?
    var provider: String?
    var localOnly: String?
    var timeout: String?
    var metadata: String?
    var cacheTTL: String?
    var hop: String?

    init(_ fields: HTTPFields) {
        for field in fields {
            let name = field.name.canonicalName
            guard name.utf8.starts(with: "x-aiproxy-".utf8) else { continue }
            switch name {
            case HTTPField.Name.aiproxyStrategy.canonicalName: Self.join(&strategy, field.value)
            case HTTPField.Name.aiproxyMaxCost.canonicalName: Self.join(&maxCost, field.value)
            case HTTPField.Name.aiproxyPinnedProvider.canonicalName: Self.join(&provider, field.value)
            case HTTPField.Name.aiproxyLocalOnly.canonicalName: Self.join(&localOnly, field.value)
            case HTTPField.Name.aiproxyTimeout.canonicalName: Self.join(&timeout, field.value)
            case HTTPField.Name.aiproxyMetadata.canonicalName: Self.join(&metadata, field.value)
            case HTTPField.Name.aiproxyCacheTTL.canonicalName: Self.join(&cacheTTL, field.value)
            case HTTPField.Name.aiproxyHop.canonicalName: Self.join(&hop, field.value)
            default: continue
            }
        }
    }

    private static func join(_ slot: inout String?, _ value: String) {
        if let first = slot { slot = first + ", " + value } else { slot = value }
    }
}

enum ChatOutcome: Sendable {
    case complete(CompletedResponse)
    case stream(any ChatStream, first: StreamItem)
}

extension Gateway {
    // MARK: Options and planning

    func options(from request: Request, model: inout String, body: [UInt8], key: ClientKey? = nil) throws(APIError) -> RequestOptions {
        var options = RequestOptions(strategy: configuration.routing.loadBalancing.enabled ? (configuration.routing.loadBalancing.strategy ?? configuration.routing.strategy) : configuration.routing.strategy)
        let headers = AIProxyRequestHeaders(request.headers)
        // OpenRouter-style suffixes: model:floor (cheapest), model:nitro (fastest).
        // Found among the UTF-8 bytes: walking the name as Characters cost 2,000 instructions a request.
        if let colon = model.utf8.lastIndex(of: UInt8(ascii: ":")) {
            let suffix = model[model.utf8.index(after: colon)...]
            if suffix == "floor" || suffix == "nitro" {
                options.strategy = suffix == "floor" ? .costOptimized : .latencyOptimized
                model = String(model[..<colon])
            }
        }
        if let value = headers.strategy {
            guard let strategy = RoutingStrategy(spelling: value) else {
                throw APIError.badRequest("x-aiproxy-strategy '\(value)' is not one of \(RoutingStrategy.allCases.map(\.rawValue).joined(separator: ", "))", param: "x-aiproxy-strategy")
            }
            options.strategy = strategy
        }
        if let value = headers.maxCost {
            guard let cost = Double(value), cost >= 0, cost.isFinite else {
                throw APIError.badRequest("x-aiproxy-max-cost must be a number of US dollars, found '\(value)'", param: "x-aiproxy-max-cost")
            }
            options.maxCost = cost
        }
        if let value = headers.provider, !value.isEmpty { options.pinned = value }
        if let value = headers.localOnly {
            options.localOnly = ["1", "true", "yes", "on"].contains(value.lowercased())
        }
        if let value = headers.timeout {
            guard let duration = Units.parseDuration(value.allSatisfy(\.isNumber) ? "\(value)ms" : value), duration > .zero else {
                throw APIError.badRequest("x-aiproxy-timeout must be milliseconds or a duration like 30s, found '\(value)'", param: "x-aiproxy-timeout")
            }
            options.timeout = duration
        }
        if let value = headers.metadata {
            guard value.utf8.count <= 4096 else { throw APIError.badRequest("x-aiproxy-metadata is longer than 4096 bytes", param: "x-aiproxy-metadata") }
            guard let json = try? JSONParser.parse(value, limits: .init(maxDepth: 4)), case .object = json else {
                throw APIError.badRequest("x-aiproxy-metadata must be a JSON object", param: "x-aiproxy-metadata")
            }
            options.metadata = json.text
        }
        options.clientKey = key
        if let key, !key.models.isEmpty, !key.models.contains(model) {
            throw APIError.forbidden("API key '\(key.name)' may not use '\(model)'; it may use: \(key.models.joined(separator: ", "))", code: "model_not_allowed")
        }
        if let value = headers.cacheTTL {
            guard let ttl = Units.parseDuration(value.allSatisfy(\.isNumber) ? "\(value)s" : value), ttl >= .zero, ttl <= .seconds(30 * 86_400) else {
                throw APIError.badRequest("x-aiproxy-cache-ttl must be seconds or a duration like 10m (at most 30 days), found '\(value)'", param: "x-aiproxy-cache-ttl")
            }
            options.cacheTTL = ttl
        }
        if let hop = headers.hop {
            // A forwarded request: a mesh member vouches for it instead of a client key.
            guard let remote else {
                throw APIError(status: 403, type: "permission_denied", code: "not_in_mesh", message: "this node is not in a mesh; it accepts no forwarded requests")
            }
            switch remote.verifyForward(hop: hop, body: body) {
            case .success(let forwarded):
                options.fromNode = forwarded.node
                options.visited = forwarded.visited
            case .failure(let error):
                throw error
            }
        } else if configuration.security.authEnabled && request.headers[.authorization] == nil && request.headers[AuthMiddleware.apiKeyHeader] == nil {
            throw APIError.unauthorized("missing API key: send Authorization: Bearer KEY")
        }
        return options
    }

    /// Routes for the request, best first, or the error that explains why there are none.
    func plan(model: String, options: RequestOptions, capabilities: [String], inputTokens: Int, maxOutputTokens: Int, requestID: String) throws(APIError) -> (RoutePlan, [ExecutableRoute]) {
        let routes = routes(for: model, visited: options.visited)
        guard !routes.isEmpty else {
            let available = allModelNames()
            let list = available.isEmpty ? "this node serves no models" : "available models: \(available.joined(separator: ", "))"
            var error = APIError.notFound("the model '\(model)' does not exist on this mesh; \(list)")
            error.details["available_models"] = .array(available.map(JSON.string))
            throw error
        }
        if let pinned = options.pinned, !routes.contains(where: { $0.candidate.name == pinned || $0.candidate.id == pinned }) {
            throw APIError.badRequest("no provider named '\(pinned)' serves '\(model)'; providers that do: \(routes.map(\.candidate.name).joined(separator: ", "))", param: "x-aiproxy-provider", code: "provider_not_found")
        }
        var budgetStatus = budget.status(nowMillis: wallClockMillis())
        if budgetStatus.paidAllowed {
            // Reserve the most any paid route could cost before anything is sent.
            var worst = 0.0
            for route in routes where !route.candidate.price.isFree {
                worst = max(worst, route.candidate.maximumCost(inputTokens: inputTokens, outputTokens: maxOutputTokens))
            }
            if worst > 0 && !budget.reserve(requestID: requestID, maxCost: worst, nowMillis: wallClockMillis()) {
                budgetStatus.paidAllowed = false
                budgetStatus.reason = "the budget cannot hold this request's maximum cost ($\(worst)) next to what is spent and in flight"
            } else if worst > 0, let key = options.clientKey, let limit = key.dailyBudget, limit > 0 {
                // The key's budget is mesh-wide: what peers advertise it spent today, plus this node.
                let day = KeyBudgets.day(millis: wallClockMillis())
                let elsewhere = meshKeySpend?(key.name, day) ?? 0
                let reach = meshReachability?() ?? (unreachable: false, nodes: 1)
                if !keyBudgets.reserve(requestID: requestID, key: key.name, maxCost: worst, budget: limit, elsewhere: elsewhere, day: day,
                                       unreachable: reach.unreachable, nodes: reach.nodes) {
                    budget.release(requestID: requestID)
                    budgetStatus.paidAllowed = false
                    budgetStatus.reason = "API key '\(key.name)' has spent its daily budget of $\(limit) across the mesh"
                }
            }
        }
        let request = PlanRequest(
            model: model, strategy: options.strategy, maxCost: options.maxCost, pinnedRoute: options.pinned, localOnly: options.localOnly,
            paidAllowed: budgetStatus.paidAllowed, requiredCapabilities: capabilities, estimatedInputTokens: inputTokens, maxOutputTokens: maxOutputTokens,
            fallbackChain: configuration.routing.failover.fallbackChain,
            // Only round robin reads the rotation; the others skip its lock and lookup.
            rotation: options.strategy == .roundRobin ? board.nextRotation(for: model) : 0,
            unhealthyThreshold: configuration.routing.loadBalancing.healthAware ? configuration.routing.loadBalancing.unhealthyThreshold : nil)
        var random = FastRandom()
        var candidates = routes.map(\.candidate)
        board.observe(&candidates, now: ContinuousClock.now)
        let plan = RoutePlanner.plan(request, candidates: candidates, using: &random)
        guard !plan.routes.isEmpty else {
            budget.release(requestID: requestID)
            keyBudgets.release(requestID: requestID)
            let reasons = plan.excluded.map { "\($0.id): \($0.reason)" }.joined(separator: "; ")
            if !budgetStatus.paidAllowed, plan.excluded.contains(where: { $0.reason.contains("budget") }) {
                var error = APIError(status: 429, type: "insufficient_quota", code: "budget_exceeded",
                                     message: "\(budgetStatus.reason ?? "the budget is spent") and '\(model)' has no free route (\(reasons))")
                error.details["retry_after"] = .int(60)
                throw error
            }
            throw APIError(status: 400, type: "invalid_request_error", code: "no_eligible_route", message: "no route for '\(model)' meets the request's constraints: \(reasons)")
        }
        // The plan's candidates back to their routes. Route ids are unique and a model has a handful of
        // routes, so a scan beats building a dictionary per request.
        var ordered: [ExecutableRoute] = []
        ordered.reserveCapacity(plan.routes.count)
        for candidate in plan.routes {
            guard let index = routes.firstIndex(where: { $0.candidate.id == candidate.id }) else { continue }
            var route = routes[index]
            route.candidate = candidate
            ordered.append(route)
        }
        return (plan, ordered)
    }

    // MARK: Cache

    /// How long to cache this request's answer: the header, else the model's `cache_ttl`; never streams.
    func cacheTTL(for model: String, options: RequestOptions, stream: Bool) -> Duration? {
        guard !stream, options.fromNode == nil || options.cacheTTL != nil else { return nil }
        if let ttl = options.cacheTTL { return ttl }
        return catalog.cacheTTLs[model]
    }

    /// SHA-256 of the request as it determines the answer: model, messages and every parameter, with
    /// keys sorted; `stream`, `stream_options` and `user` left out.
    static func cacheKey(_ chat: ChatRequest, model: String) -> [UInt8] {
        var object = chat.body
        for key in ["stream", "stream_options", "user", "model"] { object[key] = nil }
        object["model"] = .string(model)
        return Sodium.sha256(JSON.object(object).canonicalBytes)
    }

    func cacheHitResponse(_ hit: ResponseCache.Hit, model: String, requestID: String, apiKey: String?, options: RequestOptions, start: ContinuousClock.Instant,
                          endpoint: String, baseHeaders: HTTPFields) -> Response {
        let latency = ContinuousClock.now - start
        let usage = Usage(promptTokens: hit.promptTokens, completionTokens: hit.completionTokens)
        let info: JSON = [
            "request_id": .string(requestID), "node": .string(nodeName), "provider": "cache", "route": [.string(nodeName), "cache"],
            "attempts": [], "cache": ["hit": true, "age_ms": .int(Int(hit.ageMillis))],
            "tokens": ["prompt": .int(usage.promptTokens), "completion": .int(usage.completionTokens), "total": .int(usage.totalTokens), "estimated": false],
            "cost": 0, "latency_ms": .double(latency.millisecondsRounded),
        ]
        var headers = baseHeaders
        headers[.aiproxyCache] = "hit"
        headers[.aiproxyProvider] = "cache"
        headers[.aiproxyRoute] = "\(nodeName),cache"
        headers[.aiproxyCost] = "0"
        let closing = hit.body.lastIndex(of: UInt8(ascii: "}")) ?? max(0, hit.body.count - 1)
        let body = Gateway.withAIProxy(hit.body, closingBrace: closing, info: info)
        metrics.counter("aimesh_requests_total", [("endpoint", endpoint), ("route", "cache"), ("status", "200")]).increment()
        if let ledger, configuration.budget.trackCosts {
            record(in: ledger, LedgerEntry(
                requestID: requestID, timestampMillis: wallClockMillis(), apiKey: options.fromNode.map { "node:\($0)" } ?? apiKey, model: model,
                route: [nodeName, "cache"], provider: "cache", node: nodeName, fromNode: options.fromNode, promptTokens: usage.promptTokens,
                completionTokens: usage.completionTokens, cost: 0, latencyMillis: latency.millisecondsRounded, status: 200, outcome: "cache_hit",
                attempts: 0, attemptsJSON: "[]", stream: false, metadata: options.metadata, endpoint: endpoint))
        }
        return JSONResponse.make(bytes: body, headers: headers)
    }

    func deadline(for options: RequestOptions, start: ContinuousClock.Instant) -> ContinuousClock.Instant {
        start + min(options.timeout ?? configuration.server.requestTimeout, configuration.server.requestTimeout)
    }

    func readBody(_ request: Request) async throws(APIError) -> [UInt8] {
        var request = request
        let limit = configuration.server.maxRequestSize
        if let length = request.headers.first(.contentLength).flatMap(Int.init), length > limit { throw APIError.tooLarge(limit: limit) }
        do {
            let buffer = try await request.collectBody(upTo: limit)
            return Array(buffer.readableBytesView)
        } catch {
            throw APIError.tooLarge(limit: limit)
        }
    }

    // MARK: Chat completions

    func chatCompletions(_ request: Request, context: GatewayContext) async -> Response {
        let start = ContinuousClock.now
        let requestID = Gateway.makeRequestID()
        do {
            let bytes = try await readBody(request)
            var chat = try ChatRequest(bytes: bytes)
            var model = chat.model
            let options = try self.options(from: request, model: &model, body: bytes, key: context.clientKey)
            if model != chat.model {
                // Strip the routing suffix from the body too.
                let edited = chat.topLevel.splicing(chat.raw, replacingValueOf: "model", with: .string(model)) ?? chat.raw
                chat = try ChatRequest(bytes: edited)
            }
            return await serveChat(chat, model: model, options: options, requestID: requestID, apiKey: context.apiKeyName, start: start, endpoint: "chat")
        } catch {
            metrics.counter("aimesh_requests_total", [("endpoint", "chat"), ("route", "none"), ("status", String(error.status))]).increment()
            return error.response(extraHeaders: [.aiproxyRequestID: requestID, .aiproxyNode: nodeName])
        }
    }

    /// Plans, runs with failover, and answers a chat request (JSON or SSE).
    func serveChat(_ chat: ChatRequest, model: String, options: RequestOptions, requestID: String, apiKey: String?, start: ContinuousClock.Instant, endpoint: String) async -> Response {
        let cacheTTL = self.cacheTTL(for: model, options: options, stream: chat.stream)
        var cacheKey: [UInt8]?
        if let cacheTTL, cacheTTL > .zero, let cache {
            let key = Gateway.cacheKey(chat, model: model)
            cacheKey = key
            if let hit = cache.lookup(key, nowMillis: wallClockMillis()) {
                metrics.counter("aimesh_cache_total", [("result", "hit")]).increment()
                return cacheHitResponse(hit, model: model, requestID: requestID, apiKey: apiKey, options: options, start: start, endpoint: endpoint, baseHeaders: baseHeaders(requestID))
            }
            metrics.counter("aimesh_cache_total", [("result", "miss")]).increment()
        }
        let routes: [ExecutableRoute]
        let plan: RoutePlan
        do {
            (plan, routes) = try self.plan(model: model, options: options, capabilities: [], inputTokens: chat.estimatedPromptTokens,
                                           maxOutputTokens: chat.maxTokens ?? 1024, requestID: requestID)
        } catch {
            recordFailure(requestID: requestID, model: model, apiKey: apiKey, error: error, attempts: [], options: options, stream: chat.stream, start: start, endpoint: endpoint)
            return error.response(extraHeaders: baseHeaders(requestID))
        }
        let outcome = await executor.run(routes: routes, deadline: deadline(for: options, start: start), operation: { route, timeouts in
            let call = ChatCall(request: chat, upstreamModel: route.candidate.upstreamModel, requestID: requestID, timeouts: timeouts,
                                extraHeaders: [], defaultMaxTokens: route.defaultMaxTokens)
            switch try await route.adapter.chat(call) {
            case .complete(let response):
                return ChatOutcome.complete(response)
            case .stream(let stream):
                do {
                    guard let first = try await stream.next() else {
                        throw ProviderFailure(kind: .streamCut, message: "the upstream sent an empty stream")
                    }
                    return ChatOutcome.stream(stream, first: first)
                } catch {
                    stream.cancel()
                    throw error
                }
            }
        }, isStreamingValue: chat.stream)

        switch outcome {
        case .failure(let error, let attempts, _):
            recordFailure(requestID: requestID, model: model, apiKey: apiKey, error: error, attempts: attempts, options: options, stream: chat.stream, start: start, endpoint: endpoint)
            var headers = baseHeaders(requestID)
            headers.append(HTTPField(name: .aiproxyAttempts, value: String(attempts.count)))
            return error.response(extraHeaders: headers)
        case .success(.complete(let response), let route, let attempts, let upstreamTime):
            let latency = ContinuousClock.now - start
            let peer = Gateway.peerAnswer(response.body, topLevel: response.topLevel, route: route)
            let cost = peer?.cost ?? route.candidate.price.cost(of: response.usage)
            let path = self.path(for: route, downstream: response.headers)
            var info = aiproxyInfo(requestID: requestID, route: route, path: path, attempts: attempts, strategy: plan.strategy, usage: response.usage, cost: cost, latency: latency)
            var stored = false
            if let cacheKey, let cacheTTL, let cache {
                // A peer's own x_aiproxy describes that request, not a later cache hit: not stored.
                stored = cache.store(cacheKey, model: model, body: peer.map { $0.withoutInfo(response.body) } ?? response.body, promptTokens: response.usage.promptTokens, completionTokens: response.usage.completionTokens,
                                     ttlMillis: Int64(cacheTTL.components.seconds * 1000), nowMillis: wallClockMillis())
                if stored { metrics.counter("aimesh_cache_total", [("result", "stored")]).increment() }
                info.cacheStored = stored
            }
            let body = Gateway.withAIProxy(response.body, closingBrace: response.closingBrace, info: info, peer: peer)
            var headers = responseHeaders(requestID: requestID, contentType: "application/json", route: route, path: path, attempts: attempts,
                                          strategy: plan.strategy, extra: 3)
            if cacheKey != nil { headers.append(HTTPField(name: .aiproxyCache, value: "miss")) }
            headers.append(HTTPField(name: .aiproxyCost, value: AIProxyInfo.costText(cost)))
            headers.append(HTTPField(name: .aiproxyLatency, value: latency.millisecondsRoundedText))
            record(requestID: requestID, model: model, apiKey: apiKey, route: route, path: path, usage: response.usage, cost: cost, latency: latency,
                   upstreamTime: upstreamTime, status: 200, outcome: "ok", attempts: attempts, options: options, stream: false, error: nil, endpoint: endpoint)
            return JSONResponse.make(bytes: body, completeHeaders: headers)
        case .success(.stream(let stream, let first), let route, let attempts, let upstreamTime):
            let path = self.path(for: route, downstream: stream.headers)
            var headers = responseHeaders(requestID: requestID, contentType: "text/event-stream", route: route, path: path, attempts: attempts,
                                          strategy: plan.strategy)
            headers.append(HTTPField(name: .cacheControl, value: "no-cache"))
            headers.append(HTTPField(name: .accelBuffering, value: "no"))
            let firstByteOverhead = (ContinuousClock.now - start) - upstreamTime
            metrics.timer("aimesh_gateway_overhead_seconds", [("endpoint", "\(endpoint)_stream")]).record(duration: max(firstByteOverhead, .zero))
            let body = ResponseBody { [self] writer in
                await self.pumpStream(stream, first: first, writer: &writer, route: route, path: path, attempts: attempts, plan: plan,
                                      requestID: requestID, model: model, apiKey: apiKey, options: options, start: start, upstreamTime: upstreamTime, endpoint: endpoint)
            }
            return Response(status: .ok, headers: headers, body: body)
        }
    }

    /// The most bytes of a stream gathered into one write to the client.
    static let streamWriteBytes = 64 * 1024

    enum Gathered: Sendable {
        /// Written what was ready; the stream goes on.
        case more
        /// The stream ended (its final chunk and `[DONE]`, or `[DONE]` alone, are in the buffer).
        case done
        /// The upstream failed after what is in the buffer.
        case failed(any Error)
    }

    /// Frames `first`, and every item that has already arrived behind it, into `buffer` as SSE events, so
    /// that events the upstream sent together reach the client in one write; it never waits for more.
    /// Stops at `limit` bytes (a fast upstream must pile up in its transfer, which pauses it, not here).
    /// `final` renders the last chunk's payload (with `x_aiproxy`); `[DONE]` follows it.
    static func gather(_ first: StreamItem, into buffer: inout ByteBuffer, limit: Int, poll: () throws -> StreamPoll,
                       final: ([UInt8]) -> [UInt8]) -> Gathered {
        var current = first
        while true {
            switch current {
            case .chunk(let data):
                buffer.writeSSEData(data)
            case .final(let data):
                buffer.writeSSEData(final(data))
                buffer.writeSSEData(Array("[DONE]".utf8))
                return .done
            }
            if buffer.readableBytes >= limit { return .more }
            do {
                switch try poll() {
                case .item(let next): current = next
                case .end:
                    buffer.writeSSEData(Array("[DONE]".utf8))
                    return .done
                case .notReady: return .more
                }
            } catch {
                return .failed(error)
            }
        }
    }

    /// Writes a stream to the client. Upstream failure after the first byte ends the stream with an
    /// explicit error event, never a silent, truncated success.
    func pumpStream(_ stream: any ChatStream, first: StreamItem, writer: inout any ResponseBodyWriter, route: ExecutableRoute, path: [String],
                    attempts: [AttemptRecord], plan: RoutePlan, requestID: String, model: String, apiKey: String?, options: RequestOptions,
                    start: ContinuousClock.Instant, upstreamTime: Duration, endpoint: String) async {
        var item: StreamItem? = first
        var outcome = "ok"
        var errorMessage: String?
        var status = 200
        var finalCost: Double?
        var buffer = ByteBuffer()
        buffer.reserveCapacity(1024)
        defer { board.ended(route.candidate.id) }
        var done = false
        /// Ends the stream with an explicit error event: never a silent, truncated success.
        func failed(_ error: any Error) {
            let failure = ProviderFailure.from(error)
            board.failed(route.candidate.id, now: ContinuousClock.now)
            outcome = "partial"
            status = 502
            errorMessage = failure.message
            let event: JSON = ["error": ["message": .string("the upstream failed mid-stream: \(failure.message)"), "type": "upstream_error",
                                         "code": "stream_interrupted", "param": nil, "request_id": .string(requestID)]]
            buffer.writeSSEData(event.bytes)
            done = true
        }
        while !done, let first = item {
            buffer.clear()
            let gathered = Gateway.gather(first, into: &buffer, limit: Gateway.streamWriteBytes, poll: stream.nextIfReady) { data in
                let usage = stream.usage
                let peer = Gateway.peerAnswer(data, route: route)
                let cost = peer?.cost ?? route.candidate.price.cost(of: usage)
                finalCost = cost
                let info = aiproxyInfo(requestID: requestID, route: route, path: path, attempts: attempts, strategy: plan.strategy, usage: usage,
                                       cost: cost, latency: ContinuousClock.now - start)
                return data.last == UInt8(ascii: "}") ? Gateway.withAIProxy(data, closingBrace: data.count - 1, info: info, peer: peer) : data
            }
            switch gathered {
            case .more: break
            case .done: done = true
            case .failed(let error): failed(error)
            }
            do {
                try await writer.write(buffer)
            } catch {
                // The client went away (if the upstream had failed first, that stays the outcome).
                stream.cancel()
                if outcome == "ok" {
                    outcome = "client_closed"
                    status = 499
                    errorMessage = "the client closed the connection mid-stream"
                }
                break
            }
            if done { break }
            do {
                item = try await stream.next()
                if item == nil {
                    buffer.clear()
                    buffer.writeSSEData(Array("[DONE]".utf8))
                    try? await writer.write(buffer)
                }
            } catch {
                buffer.clear()
                failed(error)
                try? await writer.write(buffer)
            }
        }
        // Accounted before the stream's end is written: a client that has read the whole answer finds
        // its row in the ledger (after a flush), and its spend in the budget.
        let usage = stream.usage
        let cost = finalCost ?? route.candidate.price.cost(of: usage)
        record(requestID: requestID, model: model, apiKey: apiKey, route: route, path: path, usage: usage, cost: cost, latency: ContinuousClock.now - start,
               upstreamTime: nil, status: status, outcome: outcome, attempts: attempts, options: options, stream: true, error: errorMessage, endpoint: endpoint)
        try? await writer.finish(nil)
    }

    // MARK: Embeddings

    func embeddings(_ request: Request, context: GatewayContext) async -> Response {
        let start = ContinuousClock.now
        let requestID = Gateway.makeRequestID()
        var modelName = ""
        var options = RequestOptions(strategy: configuration.routing.strategy)
        do {
            let bytes = try await readBody(request)
            let embeddingsRequest = try EmbeddingsRequest(bytes: bytes)
            modelName = embeddingsRequest.model
            options = try self.options(from: request, model: &modelName, body: bytes, key: context.clientKey)
            let (plan, routes) = try self.plan(model: modelName, options: options, capabilities: [Capability.embeddings],
                                               inputTokens: embeddingsRequest.estimatedTokens, maxOutputTokens: 0, requestID: requestID)
            let outcome = await executor.run(routes: routes, deadline: deadline(for: options, start: start)) { route, timeouts in
                try await route.adapter.embeddings(EmbeddingsCall(request: embeddingsRequest, upstreamModel: route.candidate.upstreamModel,
                                                                  requestID: requestID, timeouts: timeouts))
            }
            switch outcome {
            case .failure(let error, let attempts, _):
                recordFailure(requestID: requestID, model: modelName, apiKey: context.apiKeyName, error: error, attempts: attempts, options: options, stream: false, start: start, endpoint: "embeddings")
                return error.response(extraHeaders: baseHeaders(requestID))
            case .success(let response, let route, let attempts, let upstreamTime):
                let latency = ContinuousClock.now - start
                let peer = Gateway.peerAnswer(response.body, topLevel: response.topLevel, route: route)
                let cost = peer?.cost ?? route.candidate.price.cost(of: response.usage)
                let path = self.path(for: route, downstream: response.headers)
                let info = aiproxyInfo(requestID: requestID, route: route, path: path, attempts: attempts, strategy: plan.strategy, usage: response.usage, cost: cost, latency: latency)
                var headers = responseHeaders(requestID: requestID, contentType: "application/json", route: route, path: path, attempts: attempts,
                                              strategy: plan.strategy, extra: 1)
                headers.append(HTTPField(name: .aiproxyCost, value: AIProxyInfo.costText(cost)))
                record(requestID: requestID, model: modelName, apiKey: context.apiKeyName, route: route, path: path, usage: response.usage, cost: cost, latency: latency,
                       upstreamTime: upstreamTime, status: 200, outcome: "ok", attempts: attempts, options: options, stream: false, error: nil, endpoint: "embeddings")
                return JSONResponse.make(bytes: Gateway.withAIProxy(response.body, closingBrace: response.closingBrace, info: info, peer: peer), completeHeaders: headers)
            }
        } catch {
            recordFailure(requestID: requestID, model: modelName, apiKey: context.apiKeyName, error: error, attempts: [], options: options, stream: false, start: start, endpoint: "embeddings")
            return error.response(extraHeaders: baseHeaders(requestID))
        }
    }

    // MARK: What every response says about how it was served

    func path(for route: ExecutableRoute, downstream headers: [(name: String, value: String)]) -> [String] {
        var path: [String] = []
        if let downstream = headers.first(where: { $0.name.equalsIgnoringASCIICase("x-aiproxy-route") })?.value {
            let hops = downstream.split(separator: ",")
            path.reserveCapacity(1 + hops.count)
            path.append(nodeName)
            for hop in hops { path.append(hop.trimmingWhitespace()) }
            return path
        }
        path.reserveCapacity(1 + route.pathSuffix.count)
        path.append(nodeName)
        path.append(contentsOf: route.pathSuffix)
        return path
    }

    /// A peer's answer: its `x_aiproxy` (its path, attempts and the cost it really charged) and where that
    /// value's bytes are, so the answer passes on spliced, never parsed again or re-encoded. Answers from
    /// this node's own providers carry no `x_aiproxy` and are not looked at.
    struct PeerAnswer {
        /// Where the peer's `x_aiproxy` object is in its answer.
        var infoRange: Range<Int>
        /// What the peer says it really charged (`x_aiproxy.cost`).
        var cost: Double?

        static let infoMembers: Set<String> = ["cost"]

        /// The answer without the peer's `x_aiproxy`, as the cache keeps it (re-encoded; only on a store).
        func withoutInfo(_ bytes: [UInt8]) -> [UInt8] {
            guard case .object(var object)? = try? JSONParser.parse(bytes) else { return bytes }
            object["x_aiproxy"] = nil
            return JSON.object(object).bytes
        }
    }

    /// `topLevel`: the answer as the adapter already parsed it (else it is parsed here, once).
    static func peerAnswer(_ bytes: [UInt8], topLevel: JSONParser.TopLevel? = nil, route: ExecutableRoute) -> PeerAnswer? {
        guard case .peer = route.candidate.kind else { return nil }
        return peerAnswer(bytes, topLevel: topLevel)
    }

    /// Only `x_aiproxy.cost` is built: the rest of the peer's `x_aiproxy` (its route, attempts, tokens) is
    /// moved on as bytes, never made into a tree. Its value is read where it lies, in place (the parser
    /// builds kept members only at the top level, so the cost takes this second, skipping pass over the
    /// few hundred bytes of `x_aiproxy`); one that is not an object is no peer's answer.
    static func peerAnswer(_ bytes: [UInt8], topLevel: JSONParser.TopLevel? = nil) -> PeerAnswer? {
        guard let parsed = topLevel ?? (try? JSONParser.parseTopLevelObject(bytes, keeping: [])),
              let range = parsed.valueRanges["x_aiproxy"], range.lowerBound >= 0, range.upperBound <= bytes.count,
              let info = try? JSONParser.parseTopLevelObject(bytes[range], keeping: PeerAnswer.infoMembers, recordingRanges: false)
        else { return nil }
        return PeerAnswer(infoRange: range, cost: info.object["cost"]?.doubleValue)
    }

    /// Adds `x_aiproxy` to a JSON object given as bytes: spliced before the closing brace, or, for a
    /// peer's answer, in place of the peer's own `x_aiproxy`, which moves (byte for byte) into
    /// `x_aiproxy.downstream` (one `x_aiproxy`, whole path).
    static func withAIProxy(_ bytes: [UInt8], closingBrace: Int, info: AIProxyInfo, peer: PeerAnswer? = nil) -> [UInt8] {
        splicing(bytes, closingBrace: closingBrace, peer: peer) { out, downstream in info.encode(into: &out, downstream: downstream) }
    }

    /// The same for an `x_aiproxy` given as a tree (a cache hit's).
    static func withAIProxy(_ bytes: [UInt8], closingBrace: Int, info: JSON, peer: PeerAnswer? = nil) -> [UInt8] {
        splicing(bytes, closingBrace: closingBrace, peer: peer) { out, downstream in
            info.encode(into: &out)
            guard let downstream else { return }
            // `{…}` → `{…,"downstream":PEER}`
            if out.last == UInt8(ascii: "}") { out.removeLast() }
            if out.last != UInt8(ascii: "{") { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: #""downstream":"#.utf8)
            out.append(contentsOf: downstream)
            out.append(UInt8(ascii: "}"))
        }
    }

    /// `bytes` with `"x_aiproxy":INFO` as its last member, or with INFO in place of a peer's `x_aiproxy`
    /// value; `writeInfo` appends INFO, with the peer's value as its `downstream` when there is one.
    private static func splicing(_ bytes: [UInt8], closingBrace: Int, peer: PeerAnswer?,
                                 writeInfo: (inout [UInt8], ArraySlice<UInt8>?) -> Void) -> [UInt8] {
        if let peer {
            return JSON.replacing(peer.infoRange, in: bytes, extra: 512) { writeInfo(&$0, bytes[peer.infoRange]) }
        }
        return JSON.appendingMember(to: bytes, closingBrace: closingBrace, isEmpty: bytes.count <= 2, key: "x_aiproxy", extra: 512) { writeInfo(&$0, nil) }
    }

    func aiproxyInfo(requestID: String, route: ExecutableRoute, path: [String], attempts: [AttemptRecord], strategy: RoutingStrategy,
                     usage: Usage, cost: Double, latency: Duration) -> AIProxyInfo {
        AIProxyInfo(requestID: requestID, node: nodeName, provider: path.last ?? route.candidate.name, upstreamModel: route.candidate.upstreamModel,
                    route: path, strategy: strategy.rawValue, attempts: attempts, usage: usage, cost: cost, latency: latency)
    }

    /// The headers every answer carries: its request id and this node.
    func baseHeaders(_ requestID: String) -> HTTPFields {
        var headers = HTTPFields()
        headers.reserveCapacity(2)
        headers.append(HTTPField(name: .aiproxyRequestID, value: requestID))
        headers.append(HTTPField(name: .aiproxyNode, value: nodeName))
        return headers
    }

    /// A served answer's headers: its content type, the base headers and how it was served, with room
    /// for `extra` more. Appended, never set by name, so no field is searched for.
    func responseHeaders(requestID: String, contentType: String, route: ExecutableRoute, path: [String], attempts: [AttemptRecord],
                         strategy: RoutingStrategy, extra: Int = 2) -> HTTPFields {
        var headers = HTTPFields()
        headers.reserveCapacity(8 + extra)  // and content-length, which JSONResponse appends
        headers.append(HTTPField(name: .contentType, value: contentType))
        headers.append(HTTPField(name: .aiproxyRequestID, value: requestID))
        headers.append(HTTPField(name: .aiproxyNode, value: nodeName))
        headers.append(HTTPField(name: .aiproxyProvider, value: path.last ?? route.candidate.name))
        headers.append(HTTPField(name: .aiproxyRoute, value: path.joined(separator: ",")))
        headers.append(HTTPField(name: .aiproxyAttempts, value: String(attempts.count)))
        headers.append(HTTPField(name: .aiproxyStrategy, value: strategy.rawValue))
        return headers
    }

    // MARK: Ledger and metrics

    func record(requestID: String, model: String, apiKey: String?, route: ExecutableRoute, path: [String], usage: Usage, cost: Double, latency: Duration,
                upstreamTime: Duration?, status: Int, outcome: String, attempts: [AttemptRecord], options: RequestOptions, stream: Bool, error: String?, endpoint: String) {
        let routeLabel = route.candidate.id
        let served = metrics.served(endpoint: endpoint, route: routeLabel)
        if status == 200 {
            served.requests.increment()
        } else {
            metrics.counter("aimesh_requests_total", [("endpoint", endpoint), ("route", routeLabel), ("status", String(status))]).increment()
        }
        for attempt in attempts {
            if attempt.outcome == "ok" && attempt.route == routeLabel {
                served.attemptOK.increment()
            } else {
                metrics.counter("aimesh_route_attempts_total", [("route", attempt.route), ("outcome", attempt.outcome)]).increment()
            }
        }
        served.duration.record(duration: latency)
        if let upstreamTime {
            served.overhead.record(duration: max(latency - upstreamTime, .zero))
        }
        if usage.promptTokens != 0 { served.promptTokens.increment(by: usage.promptTokens) }
        if usage.completionTokens != 0 { served.completionTokens.increment(by: usage.completionTokens) }
        served.cost.increment(by: cost)
        let now = wallClockMillis()
        budget.settle(requestID: requestID, cost: cost, nowMillis: now)
        keyBudgets.settle(requestID: requestID, key: options.clientKey?.dailyBudget != nil ? options.clientKey?.name : apiKey, cost: cost, day: KeyBudgets.day(millis: now))
        rateLimiter.charge(key: apiKey, tokens: usage.totalTokens)
        if let key = options.clientKey, key.tokensPerMinute != nil {
            keyRequests.addTokens(key: key.name, tokens: usage.totalTokens, minute: KeyRequestCounts.minute(millis: now))
        }
        guard let ledger, configuration.budget.trackCosts else { return }
        record(in: ledger, LedgerEntry(
            requestID: requestID, timestampMillis: now, apiKey: options.fromNode.map { "node:\($0)" } ?? apiKey, model: model, route: path, provider: path.last, node: nodeName,
            fromNode: options.fromNode, promptTokens: usage.promptTokens, completionTokens: usage.completionTokens, tokensEstimated: usage.estimated,
            cost: cost, latencyMillis: latency.millisecondsRounded, status: status, outcome: outcome, attempts: attempts.count,
            attemptsJSON: AIProxyInfo.attemptsText(attempts), stream: stream, error: error, metadata: options.metadata, endpoint: endpoint))
    }

    func recordFailure(requestID: String, model: String, apiKey: String?, error: APIError, attempts: [AttemptRecord], options: RequestOptions,
                       stream: Bool, start: ContinuousClock.Instant, endpoint: String) {
        budget.release(requestID: requestID)
        keyBudgets.release(requestID: requestID)
        metrics.counter("aimesh_requests_total", [("endpoint", endpoint), ("route", "none"), ("status", String(error.status))]).increment()
        for attempt in attempts {
            metrics.counter("aimesh_route_attempts_total", [("route", attempt.route), ("outcome", attempt.outcome)]).increment()
        }
        guard let ledger, configuration.budget.trackCosts, !model.isEmpty else { return }
        record(in: ledger, LedgerEntry(
            requestID: requestID, timestampMillis: wallClockMillis(), apiKey: options.fromNode.map { "node:\($0)" } ?? apiKey, model: model, route: [nodeName], provider: nil, node: nodeName,
            fromNode: options.fromNode, latencyMillis: (ContinuousClock.now - start).millisecondsRounded, status: error.status, outcome: "error",
            attempts: attempts.count, attemptsJSON: AIProxyInfo.attemptsText(attempts), stream: stream, error: error.message,
            metadata: options.metadata, endpoint: endpoint))
    }
}

extension ByteBuffer {
    /// `data: …\n\n` (single-line JSON payloads need no splitting).
    mutating func writeSSEData(_ data: [UInt8]) {
        if data.contains(0x0A) {
            var framed: [UInt8] = []
            SSEEvent.encode(data: data, into: &framed)
            writeBytes(framed)
            return
        }
        writeStaticString("data: ")
        writeBytes(data)
        writeStaticString("\n\n")
    }
}

extension Gateway {
    /// Hands an entry to the ledger. A wake-up of its writer waits until the event loop has finished the
    /// current job, which writes this response: the client does not wait for a futex wake.
    @discardableResult
    func record(in ledger: Ledger, _ entry: LedgerEntry) -> UInt64 {
        ledger.record(entry) { wake in
            if let loop = MultiThreadedEventLoopGroup.currentEventLoop { loop.execute(wake) } else { wake() }
        }
    }
}
