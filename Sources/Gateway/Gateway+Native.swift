import HTTPTypes
import Hummingbird
import Ledger
import MeshCore
import NIOCore
import Providers
import Routing

extension Gateway {
    /// `POST /aiproxy/predict`: the AIProxy native request ({model, input, routing}) and response
    /// ({request_id, model, output, metadata{provider, node_id, latency_ms, tokens, cost, routing}}).
    func predict(_ request: Request, context: GatewayContext) async -> Response {
        let start = ContinuousClock.now
        let requestID = Gateway.makeRequestID()
        do throws(APIError) {
            let bytes = try await readBody(request)
            let json: JSON
            do { json = try JSONParser.parse(bytes) } catch { throw APIError.badRequest("the request body is not valid JSON: \(error)", code: "invalid_json") }
            guard case .object(let body) = json else { throw APIError.badRequest("the request body must be a JSON object") }
            guard case .string(var model)? = body["model"], !model.isEmpty else {
                throw APIError.badRequest("missing required parameter 'model'", param: "model", code: "missing_required_parameter")
            }
            var messages: [JSON]
            switch body["input"] {
            case .string(let text)?: messages = [["role": "user", "content": .string(text)]]
            case .array(let items)? where !items.isEmpty:
                messages = items.allSatisfy({ $0.stringValue != nil }) ? items.map { ["role": "user", "content": $0] } : items
            case .object(let object)? where object["messages"] != nil:
                messages = object["messages"]?.arrayValue ?? []
            case .object(let object)? where object["prompt"] != nil || object["text"] != nil:
                messages = [["role": "user", "content": object["prompt"] ?? object["text"] ?? ""]]
            default:
                throw APIError.badRequest("'input' must be a string, a list of messages, or an object with 'messages' or 'prompt'", param: "input", code: "invalid_type")
            }
            if let system = body["system"]?.stringValue { messages.insert(["role": "system", "content": .string(system)], at: 0) }
            var chatBody: JSONObject = ["model": .string(model), "messages": .array(messages)]
            if case .object(let parameters)? = body["parameters"] {
                for member in parameters where ["temperature", "top_p", "max_tokens", "stop", "seed"].contains(member.key) { chatBody[member.key] = member.value }
            }
            var options = try self.options(from: request, model: &model, body: bytes, key: context.clientKey)
            chatBody["model"] = .string(model)
            if case .object(let routing)? = body["routing"] {
                if let strategy = routing["strategy"]?.stringValue {
                    guard let value = RoutingStrategy(spelling: strategy) else { throw APIError.badRequest("unknown routing.strategy '\(strategy)'", param: "routing.strategy") }
                    options.strategy = value
                }
                if let maxCost = routing["max_cost"], !maxCost.isNull {
                    guard let value = maxCost.doubleValue, value >= 0 else { throw APIError.badRequest("routing.max_cost must be a number of dollars", param: "routing.max_cost") }
                    options.maxCost = value
                }
                if let timeout = routing["timeout"], !timeout.isNull {
                    guard let ms = timeout.doubleValue, ms > 0 else { throw APIError.badRequest("routing.timeout must be milliseconds", param: "routing.timeout") }
                    options.timeout = .milliseconds(Int64(ms))
                }
                if let provider = routing["provider"]?.stringValue { options.pinned = provider }
                if let local = routing["local_only"]?.boolValue { options.localOnly = local }
            }
            let chat = try ChatRequest(bytes: JSON.object(chatBody).bytes)
            let (plan, routes) = try self.plan(model: model, options: options, capabilities: [], inputTokens: chat.estimatedPromptTokens, maxOutputTokens: chat.maxTokens ?? 1024,
                                               requestID: requestID)
            let outcome = await executor.run(routes: routes, deadline: deadline(for: options, start: start)) { route, timeouts in
                let call = ChatCall(request: chat, upstreamModel: route.candidate.upstreamModel, requestID: requestID, timeouts: timeouts, defaultMaxTokens: route.defaultMaxTokens)
                guard case .complete(let response) = try await route.adapter.chat(call) else {
                    throw ProviderFailure(kind: .malformedResponse, message: "unexpected stream")
                }
                return response
            }
            switch outcome {
            case .failure(let error, let attempts, _):
                recordFailure(requestID: requestID, model: model, apiKey: context.apiKeyName, error: error, attempts: attempts, options: options, stream: false, start: start, endpoint: "predict")
                return error.response(extraHeaders: baseHeaders(requestID))
            case .success(let response, let route, let attempts, let upstreamTime):
                let latency = ContinuousClock.now - start
                let parsed = (try? JSONParser.parse(response.body)) ?? .null
                // A peer reports what it really charged (its route may not be the cheapest it advertised).
                var peerCost: Double?
                if case .peer = route.candidate.kind { peerCost = parsed["x_aiproxy"]?["cost"]?.doubleValue }
                let cost = peerCost ?? route.candidate.price.cost(of: response.usage)
                let path = self.path(for: route, downstream: response.headers)
                let output = ChatRequest.text(of: parsed["choices"]?[0]?["message"]?["content"])
                let failovers = attempts.filter { $0.outcome != "ok" && $0.outcome != "circuit_open" }.count
                let reason: String
                if failovers > 0 {
                    reason = "failed over after \(attempts.filter { $0.outcome != "ok" }.map { "\($0.name): \($0.outcome)" }.joined(separator: ", "))"
                } else {
                    reason = Gateway.reason(for: plan.strategy, route: route)
                }
                let metadata: JSON = [
                    "provider": .string(path.last ?? route.candidate.name), "node_id": .string(nodeName), "route": .array(path.map(JSON.string)),
                    "latency_ms": .double(latency.millisecondsRounded),
                    "tokens": ["input": .int(response.usage.promptTokens), "output": .int(response.usage.completionTokens), "total": .int(response.usage.totalTokens)],
                    "cost": ["amount": .money(cost), "currency": "USD"],
                    "routing": ["strategy_used": .string(plan.strategy.rawValue), "providers_tried": .array(attempts.map { .string($0.name) }),
                                "failovers": .int(failovers), "reason": .string(reason), "attempts": .array(attempts.map(\.json))],
                ]
                let answer: JSON = ["request_id": .string(requestID), "model": .string(model), "output": .string(output), "metadata": metadata]
                record(requestID: requestID, model: model, apiKey: context.apiKeyName, route: route, path: path, usage: response.usage, cost: cost, latency: latency,
                       upstreamTime: upstreamTime, status: 200, outcome: "ok", attempts: attempts, options: options, stream: false, error: nil, endpoint: "predict")
                var headers = responseHeaders(requestID: requestID, contentType: "application/json", route: route, path: path, attempts: attempts,
                                              strategy: plan.strategy, extra: 1)
                headers.append(HTTPField(name: .aiproxyCost, value: JSON.money(cost).text))
                return JSONResponse.make(bytes: answer.bytes, completeHeaders: headers)
            }
        } catch {
            return error.response(extraHeaders: baseHeaders(requestID))
        }
    }

    static func reason(for strategy: RoutingStrategy, route: ExecutableRoute) -> String {
        switch strategy {
        case .costOptimized: route.candidate.price.isFree ? "cheapest route (free)" : "cheapest route ($\(route.candidate.price.inputPer1M)/$\(route.candidate.price.outputPer1M) per 1M tokens)"
        case .latencyOptimized: "fastest route by observed latency"
        case .availability: "highest-priority available route (priority \(route.candidate.priority))"
        case .roundRobin: "next route in rotation"
        case .leastLoaded: "less loaded of two sampled routes"
        case .weighted: "weighted random choice (weight \(route.candidate.weight))"
        }
    }

    // MARK: Information endpoints

    func modelEntries() -> [String: [JSON]] {
        var models: [String: [JSON]] = [:]
        let now = ContinuousClock.now
        for name in catalog.modelNames {
            for entry in catalog.entries[name] ?? [] {
                let snapshot = board.snapshot(of: entry.route.candidate.id, now: now)
                let available: Bool
                switch snapshot?.breaker {
                case .open?: available = false
                default: available = true
                }
                var route: JSONObject = [
                    "name": .string(entry.provider.name), "node": .string(nodeName), "kind": .string(entry.provider.isLocal ? "local" : entry.provider.vendor),
                    "available": .bool(available), "cost_per_1k_tokens": .double(entry.model.price.blended / 1000),
                    "input_cost_per_1m": .double(entry.model.price.inputPer1M), "output_cost_per_1m": .double(entry.model.price.outputPer1M),
                    "upstream_model": .string(entry.model.upstreamModel), "capabilities": .array(ModelCatalog.capabilities(of: entry.model).map(JSON.string)),
                ]
                route["avg_latency_ms"] = snapshot?.latency.map { .double($0.millisecondsRounded) } ?? .null
                if let window = entry.model.contextWindow { route["context_window"] = .int(window) }
                models[name, default: []].append(.object(route))
            }
        }
        if let remote {
            for model in remote.remoteModels() {
                var route: JSONObject = [
                    "name": .string(model.node), "node": .string(model.node), "kind": .string(model.providerKind), "available": .bool(model.available),
                    "cost_per_1k_tokens": .double(model.price.blended / 1000), "input_cost_per_1m": .double(model.price.inputPer1M),
                    "output_cost_per_1m": .double(model.price.outputPer1M),
                ]
                route["avg_latency_ms"] = model.latency.map { .double($0.millisecondsRounded) } ?? .null
                models[model.model, default: []].append(.object(route))
            }
        }
        return models
    }

    func modelsResponse() -> Response {
        let created = Int(startedAtMillis / 1000)
        let data: [JSON] = modelEntries().sorted { $0.key < $1.key }.map { name, providers in
            ["id": .string(name), "object": "model", "created": .int(created), "owned_by": "aimesh", "providers": .array(providers)]
        }
        return JSONResponse.make(["object": "list", "data": .array(data)])
    }

    func modelResponse(_ name: String) -> Response {
        guard let providers = modelEntries()[name] else {
            return APIError.notFound("the model '\(name)' does not exist on this mesh").response()
        }
        return JSONResponse.make(["id": .string(name), "object": "model", "created": .int(Int(startedAtMillis / 1000)), "owned_by": "aimesh", "providers": .array(providers)])
    }

    func providerStatus(_ provider: NodeConfigProvider) -> String {
        guard provider.enabled else { return "disabled" }
        let now = ContinuousClock.now
        let snapshot = board.snapshot(of: "provider/\(provider.name)", now: now)
        switch snapshot?.breaker {
        case .open?: return "unhealthy"
        case .halfOpen?: return "degraded"
        default:
            if let rate = snapshot?.errorRate, rate > configuration.routing.loadBalancing.unhealthyThreshold { return "degraded" }
            return "healthy"
        }
    }

    func meshStatusJSON() -> JSON {
        var providers: JSONObject = [:]
        for provider in catalog.providers {
            var entry: JSONObject = ["status": .string(providerStatus(provider)), "type": .string(provider.type),
                                     "models": .array(provider.models.map { .string($0.name) })]
            if let reason = provider.disabledReason { entry["reason"] = .string(reason) }
            providers[provider.name] = .object(entry)
        }
        var status: JSONObject = [
            "node": ["id": .string(nodeName), "name": .string(configuration.node.name ?? nodeName), "type": .string(configuration.node.type.rawValue),
                     "region": .string(configuration.node.region), "uptime_seconds": .double((uptimeSeconds() * 10).rounded() / 10)],
            "peers": [],
            "providers": .object(providers),
        ]
        if let extra = meshStatus?().objectValue {
            for member in extra { status[member.key] = member.value }
        }
        return .object(status)
    }

    func routesJSON() -> JSON {
        let now = ContinuousClock.now
        let routes: [JSON] = board.snapshot(now: now).map { snapshot in
            var object: JSONObject = ["route": .string(snapshot.id), "breaker": .string(snapshot.breaker.name), "error_rate": .double(snapshot.errorRate),
                                      "in_flight": .int(snapshot.inFlight), "successes": .int(snapshot.successes), "failures": .int(snapshot.failures)]
            object["latency_ms"] = snapshot.latency.map { .double($0.millisecondsRounded) } ?? .null
            return .object(object)
        }
        return ["node": .string(nodeName), "routes": .array(routes)]
    }

    func ledgerStatusJSON() -> JSON {
        guard let ledger else { return ["enabled": false] }
        let budgetStatus = budget.status(nowMillis: wallClockMillis())
        return ["enabled": true, "path": .string(ledger.path), "committed_sequence": .int(Int(ledger.committedSequence)),
                "pending_rows": .int(ledger.pendingCount), "failed_writes": .int(ledger.failedWrites),
                "budget": ["day_spend": .double(budgetStatus.daySpend), "month_spend": .double(budgetStatus.monthSpend),
                           "percent_used": .double(budgetStatus.percentUsed), "paid_allowed": .bool(budgetStatus.paidAllowed)]]
    }

    func healthJSON() -> JSON {
        let enabled = catalog.providers.filter(\.enabled)
        return ["status": enabled.isEmpty ? "degraded" : "ok", "node": .string(nodeName), "uptime_seconds": .double((uptimeSeconds() * 10).rounded() / 10),
                "models": .int(allModelNames().count)]
    }
}

import NodeConfig
typealias NodeConfigProvider = ProviderConfig

extension Gateway {
    /// `GET /aiproxy/usage?since=…&group_by=key|model|provider|node`: spend and tokens from this node's ledger.
    /// `since`: epoch milliseconds, a date (`2026-11-23`, UTC), or a span back from now (`24h`, `7d`);
    /// the start of the UTC day by default.
    func usageResponse(_ request: Request) -> Response {
        guard let ledger else {
            return APIError(status: 404, type: "not_found", code: "ledger_disabled", message: "this node keeps no ledger (budget.track_costs is off)").response()
        }
        let query = request.uri.queryParameters
        let now = wallClockMillis()
        var since = BudgetPeriod.dayStart(millis: now)
        if let text = query["since"].map(String.init), !text.isEmpty {
            guard let parsed = Gateway.parseSince(text, now: now) else {
                return APIError.badRequest("since must be epoch milliseconds, a date like 2026-11-23, or a span like 24h or 7d", param: "since").response()
            }
            since = parsed
        }
        let groupText = query["group_by"].map(String.init) ?? "key"
        guard let grouping = LedgerReader.Grouping(rawValue: groupText) else {
            return APIError.badRequest("group_by must be one of key, model, provider, node", param: "group_by").response()
        }
        do {
            let reader = try LedgerReader(path: ledger.path)
            let rows = try reader.usage(sinceMillis: since, groupBy: grouping)
            let json: [JSON] = rows.map {
                ["group": .string($0.group), "requests": .int($0.requests), "prompt_tokens": .int($0.promptTokens),
                 "completion_tokens": .int($0.completionTokens), "cost": .money($0.cost), "errors": .int($0.errors)]
            }
            let total: JSON = ["requests": .int(rows.reduce(0) { $0 + $1.requests }), "prompt_tokens": .int(rows.reduce(0) { $0 + $1.promptTokens }),
                               "completion_tokens": .int(rows.reduce(0) { $0 + $1.completionTokens }), "cost": .money(rows.reduce(0) { $0 + $1.cost }),
                               "errors": .int(rows.reduce(0) { $0 + $1.errors })]
            return JSONResponse.make(["node": .string(nodeName), "since_ms": .int(Int(since)), "group_by": .string(grouping.rawValue),
                                      "rows": .array(json), "total": total])
        } catch {
            return APIError(status: 500, type: "server_error", code: "ledger_error", message: "cannot read the ledger: \(error)").response()
        }
    }

    static func parseSince(_ text: String, now: Int64) -> Int64? {
        if let millis = Int64(text) { return millis }
        if let unit = text.last, let amount = Int64(text.dropLast()), amount >= 0 {
            switch unit {
            case "m": return now - amount * 60_000
            case "h": return now - amount * 3_600_000
            case "d": return now - amount * 86_400_000
            default: break
            }
        }
        let parts = text.prefix(10).split(separator: "-").compactMap { Int($0) }
        guard text.count >= 10, parts.count == 3, (1970...9999).contains(parts[0]), (1...12).contains(parts[1]), (1...31).contains(parts[2]) else { return nil }
        // Days since 1970-01-01 (proleptic Gregorian, UTC).
        let (y, m, d) = (parts[0], parts[1], parts[2])
        let a = (14 - m) / 12, yy = y + 4800 - a, mm = m + 12 * a - 3
        let julian = d + (153 * mm + 2) / 5 + 365 * yy + yy / 4 - yy / 100 + yy / 400 - 32045
        return Int64(julian - 2_440_588) * 86_400_000
    }
}
