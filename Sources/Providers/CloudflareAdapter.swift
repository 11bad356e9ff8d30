import CurlHTTP
import MeshCore

/// Cloudflare Workers AI: the native `accounts/{id}/ai/run/{model}` API (with its `{result, success,
/// errors}` envelope and `{"response": …}` stream events), or its OpenAI-compatible endpoint. A base URL
/// on `gateway.ai.cloudflare.com` goes through AI Gateway.
public struct CloudflareAdapter: ProviderAdapter {
    public let name: String
    let runURL: String
    let openAIBase: String
    let useOpenAIEndpoint: Bool
    let apiToken: String?
    let headers: [(name: String, value: String)]
    let upstream: Upstream
    let openAI: OpenAIAdapter

    public init(name: String, baseURL: String, accountID: String?, apiToken: String?, api: String = "native", headers: [(name: String, value: String)] = [], client: CurlClient) {
        self.name = name
        let run: String
        let openAIBase: String
        if baseURL.contains("gateway.ai.cloudflare.com") {
            // https://gateway.ai.cloudflare.com/v1/{account}/{gateway}/workers-ai
            run = baseURL
            openAIBase = "\(baseURL)/v1"
        } else if baseURL.contains("/accounts/") {
            let trimmed = baseURL.hasSuffix("/ai") ? String(baseURL.dropLast(3)) : baseURL
            run = "\(trimmed)/ai/run"
            openAIBase = "\(trimmed)/ai/v1"
        } else {
            let account = accountID ?? ""
            run = "\(baseURL)/accounts/\(account)/ai/run"
            openAIBase = "\(baseURL)/accounts/\(account)/ai/v1"
        }
        self.runURL = run
        self.openAIBase = openAIBase
        self.useOpenAIEndpoint = api == "openai"
        self.apiToken = apiToken
        self.headers = headers
        self.upstream = Upstream(client: client, secret: apiToken, providerName: name)
        self.openAI = OpenAIAdapter(name: name, baseURL: openAIBase, apiKey: apiToken, headers: headers, client: client)
    }

    func requestHeaders(_ extra: [(name: String, value: String)]) -> [(name: String, value: String)] {
        var all = headers + extra
        if let apiToken { all.append(("Authorization", "Bearer \(apiToken)")) }
        return all
    }

    public func chat(_ call: ChatCall) async throws -> ChatResult {
        if useOpenAIEndpoint { return try await openAI.chat(call) }
        let body = CloudflareAdapter.translateRequest(call.request)
        let outbound = OutboundRequest.post("\(runURL)/\(call.upstreamModel)", json: JSON.object(body).bytes, headers: requestHeaders(call.extraHeaders), timeouts: call.timeouts)
        if !call.request.stream {
            return .complete(try CloudflareAdapter.translateResponse(await upstream.fetch(outbound), request: call.request, model: call.upstreamModel, providerName: name))
        }
        let response = try await upstream.start(outbound)
        let builder = ChunkBuilder(id: makeCompletionID(), model: call.upstreamModel)
        return .stream(TranslatingStream(response: response, translator: CloudflareStreamTranslator(), builder: builder,
                                         clientWantsUsage: call.request.clientWantsStreamUsage, estimatedPromptTokens: call.request.estimatedPromptTokens))
    }

    public func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse {
        if useOpenAIEndpoint { return try await openAI.embeddings(call) }
        let request = call.request
        guard !request.inputIsTokens else {
            throw ProviderFailure(kind: .rejected(400), message: "Workers AI embeddings take text",
                                  clientError: APIError.badRequest("token-array input is not supported by the Workers AI route", param: "input").json)
        }
        let body: JSON = ["text": .array(request.inputs.map(JSON.string))]
        let outbound = OutboundRequest.post("\(runURL)/\(call.upstreamModel)", json: body.bytes, headers: requestHeaders(call.extraHeaders), timeouts: call.timeouts)
        let bytes = try await upstream.fetch(outbound)
        let result = try CloudflareAdapter.unwrap(bytes, providerName: name)
        guard let vectors = result["data"]?.arrayValue else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(name) sent embeddings without data")
        }
        let data: [JSON] = vectors.enumerated().map { ["object": "embedding", "index": .int($0.offset), "embedding": $0.element] }
        let usage = Usage(promptTokens: request.estimatedTokens, estimated: true)
        let object: JSONObject = ["object": "list", "data": .array(data), "model": .string(request.model),
                                  "usage": ["prompt_tokens": .int(usage.promptTokens), "total_tokens": .int(usage.promptTokens)]]
        return CompletedResponse(object: object, usage: usage)
    }

    static func translateRequest(_ request: ChatRequest) -> JSONObject {
        var messages: [JSON] = []
        for message in request.messages {
            var role = message["role"]?.stringValue ?? "user"
            if role == "developer" { role = "system" }
            var out: JSONObject = ["role": .string(role), "content": .string(ChatRequest.text(of: message["content"]))]
            if let id = message["tool_call_id"] { out["tool_call_id"] = id }
            if let calls = message["tool_calls"] { out["tool_calls"] = calls }
            messages.append(.object(out))
        }
        var body: JSONObject = ["messages": .array(messages)]
        let source = request.body
        if request.stream { body["stream"] = true }
        if let maxTokens = request.maxTokens { body["max_tokens"] = .int(maxTokens) }
        for key in ["temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty"] {
            if let value = source[key], !value.isNull { body[key] = value }
        }
        if let tools = source["tools"], !tools.isNull { body["tools"] = tools }
        return body
    }

    /// The `result` of a `{result, success, errors}` envelope.
    static func unwrap(_ bytes: [UInt8], providerName: String) throws(ProviderFailure) -> JSON {
        guard let json = try? JSONParser.parse(bytes), case .object = json else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent a response that is not JSON")
        }
        if json["success"]?.boolValue == false {
            let message = json["errors"]?[0]?["message"]?.stringValue ?? "Workers AI reported failure"
            throw ProviderFailure(kind: .upstreamStatus(502), message: "\(providerName): \(message)")
        }
        guard let result = json["result"], !result.isNull else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent no result")
        }
        return result
    }

    static func translateResponse(_ bytes: [UInt8], request: ChatRequest, model: String, providerName: String) throws(ProviderFailure) -> CompletedResponse {
        let result = try unwrap(bytes, providerName: providerName)
        let text: String
        switch result["response"] {
        case .string(let value)?: text = value
        case .some(let other) where !other.isNull: text = other.text
        default: text = ""
        }
        var message: JSONObject = ["role": "assistant", "content": .string(text)]
        var finish = "stop"
        if let calls = result["tool_calls"]?.arrayValue, !calls.isEmpty {
            message["tool_calls"] = .array(calls.map { call in
                ["id": call["id"] ?? .string(makeCompletionID(prefix: "call")), "type": "function",
                 "function": ["name": call["name"] ?? "", "arguments": .string((call["arguments"] ?? [:]).text)]]
            })
            finish = "tool_calls"
        }
        let usage = Usage(openAI: result["usage"])
            ?? Usage(promptTokens: request.estimatedPromptTokens, completionTokens: Usage.estimateTokens(characters: text.utf8.count), estimated: true)
        let builder = ChunkBuilder(id: makeCompletionID(), model: model)
        return CompletedResponse(object: builder.completion(message: message, finishReason: finish, usage: usage), usage: usage)
    }
}

/// Workers AI stream events (`{"response": "…", "usage": …}` then `[DONE]`) → OpenAI deltas.
struct CloudflareStreamTranslator: StreamTranslator {
    var sentRole = false

    mutating func translate(_ event: SSEEvent) throws(ProviderFailure) -> [StreamPiece] {
        if event.isDone { return [.finish("stop"), .end] }
        guard let json = try? JSONParser.parse(event.data) else {
            throw ProviderFailure(kind: .malformedResponse, message: "Workers AI sent a stream event that is not JSON")
        }
        if let errors = json["errors"]?.arrayValue, !errors.isEmpty {
            throw ProviderFailure(kind: .upstreamStatus(502), message: errors[0]["message"]?.stringValue ?? "Workers AI reported an error in the stream")
        }
        var pieces: [StreamPiece] = []
        if !sentRole {
            sentRole = true
            pieces.append(.delta(["role": "assistant", "content": ""]))
        }
        if let text = json["response"]?.stringValue, !text.isEmpty { pieces.append(.delta(["content": .string(text)])) }
        if let usage = Usage(openAI: json["usage"]) { pieces.append(.usage(prompt: usage.promptTokens, completion: usage.completionTokens)) }
        return pieces
    }
}
