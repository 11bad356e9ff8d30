import CurlHTTP
import MeshCore

/// Google's Gemini API (`models/{model}:generateContent` and `:streamGenerateContent?alt=sse`,
/// `:batchEmbedContents`), translated to and from OpenAI's shapes. The key travels in the
/// `x-goog-api-key` header, never in the URL.
public struct GeminiAdapter: ProviderAdapter {
    public let name: String
    let baseURL: String
    let apiKey: String?
    let headers: [(name: String, value: String)]
    let upstream: Upstream

    public init(name: String, baseURL: String, apiKey: String?, headers: [(name: String, value: String)] = [], client: CurlClient) {
        self.name = name
        var base = baseURL
        if !base.hasSuffix("/v1beta") && !base.hasSuffix("/v1") { base += "/v1beta" }
        self.baseURL = base
        self.apiKey = apiKey
        self.headers = headers
        self.upstream = Upstream(client: client, secret: apiKey, providerName: name)
    }

    func requestHeaders(_ extra: [(name: String, value: String)]) -> [(name: String, value: String)] {
        var all = headers + extra
        if let apiKey { all.append(("x-goog-api-key", apiKey)) }
        return all
    }

    static func modelPath(_ model: String) -> String { model.hasPrefix("models/") ? model : "models/\(model)" }

    public func chat(_ call: ChatCall) async throws -> ChatResult {
        let body = GeminiAdapter.translateRequest(call.request)
        let path = GeminiAdapter.modelPath(call.upstreamModel)
        let url = call.request.stream ? "\(baseURL)/\(path):streamGenerateContent?alt=sse" : "\(baseURL)/\(path):generateContent"
        let outbound = OutboundRequest.post(url, json: JSON.object(body).bytes, headers: requestHeaders(call.extraHeaders), timeouts: call.timeouts)
        if !call.request.stream {
            return .complete(try GeminiAdapter.translateResponse(await upstream.fetch(outbound), model: call.upstreamModel, providerName: name))
        }
        let response = try await upstream.start(outbound)
        let builder = ChunkBuilder(id: makeCompletionID(), model: call.upstreamModel)
        return .stream(TranslatingStream(response: response, translator: GeminiStreamTranslator(), builder: builder,
                                         clientWantsUsage: call.request.clientWantsStreamUsage, estimatedPromptTokens: call.request.estimatedPromptTokens))
    }

    public func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse {
        let request = call.request
        guard !request.inputIsTokens else {
            throw ProviderFailure(kind: .rejected(400), message: "Gemini embeddings take text, not token arrays",
                                  clientError: APIError.badRequest("token-array input is not supported by the Gemini route", param: "input").json)
        }
        let path = GeminiAdapter.modelPath(call.upstreamModel)
        let requests: [JSON] = request.inputs.map { ["model": .string(path), "content": ["parts": [["text": .string($0)]]]] }
        let outbound = OutboundRequest.post("\(baseURL)/\(path):batchEmbedContents", json: JSON.object(["requests": .array(requests)]).bytes,
                                            headers: requestHeaders(call.extraHeaders), timeouts: call.timeouts)
        let bytes = try await upstream.fetch(outbound)
        guard let json = try? JSONParser.parse(bytes), let embeddings = json["embeddings"]?.arrayValue else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(name) sent embeddings in an unknown shape")
        }
        let data: [JSON] = embeddings.enumerated().map { ["object": "embedding", "index": .int($0.offset), "embedding": $0.element["values"] ?? []] }
        let usage = Usage(promptTokens: request.estimatedTokens, estimated: true)
        let object: JSONObject = ["object": "list", "data": .array(data), "model": .string(request.model),
                                  "usage": ["prompt_tokens": .int(usage.promptTokens), "total_tokens": .int(usage.promptTokens)]]
        return CompletedResponse(object: object, usage: usage)
    }

    // MARK: Request

    static func translateRequest(_ request: ChatRequest) -> JSONObject {
        var system: [String] = []
        var contents: [JSON] = []
        var toolNames: [String: String] = [:]
        for message in request.messages {
            let role = message["role"]?.stringValue ?? "user"
            switch role {
            case "system", "developer":
                system.append(ChatRequest.text(of: message["content"]))
            case "assistant":
                var parts: [JSON] = []
                let text = ChatRequest.text(of: message["content"])
                if !text.isEmpty { parts.append(["text": .string(text)]) }
                for call in message["tool_calls"]?.arrayValue ?? [] {
                    let name = call["function"]?["name"]?.stringValue ?? ""
                    if let id = call["id"]?.stringValue { toolNames[id] = name }
                    let args = (try? JSONParser.parse(call["function"]?["arguments"]?.stringValue ?? "{}")) ?? [:]
                    parts.append(["functionCall": ["name": .string(name), "args": args]])
                }
                if parts.isEmpty { parts.append(["text": ""]) }
                contents.append(["role": "model", "parts": .array(parts)])
            case "tool", "function":
                let id = message["tool_call_id"]?.stringValue ?? ""
                let name = toolNames[id] ?? message["name"]?.stringValue ?? id
                let text = ChatRequest.text(of: message["content"])
                let response = (try? JSONParser.parse(text)).flatMap { $0.objectValue.map(JSON.object) } ?? ["result": .string(text)]
                contents.append(["role": "user", "parts": [["functionResponse": ["name": .string(name), "response": response]]]])
            default:
                contents.append(["role": "user", "parts": .array(userParts(message["content"]))])
            }
        }
        var body: JSONObject = ["contents": .array(contents)]
        if !system.isEmpty { body["systemInstruction"] = ["parts": [["text": .string(system.joined(separator: "\n\n"))]]] }
        var generation: JSONObject = [:]
        let source = request.body
        if let value = source["temperature"], !value.isNull { generation["temperature"] = value }
        if let value = source["top_p"], !value.isNull { generation["topP"] = value }
        if let maxTokens = request.maxTokens { generation["maxOutputTokens"] = .int(maxTokens) }
        switch source["stop"] {
        case .string(let stop)?: generation["stopSequences"] = [.string(stop)]
        case .array(let stops)?: generation["stopSequences"] = .array(stops)
        default: break
        }
        if let n = source["n"]?.intValue, n > 1 { generation["candidateCount"] = .int(n) }
        if !generation.isEmpty { body["generationConfig"] = .object(generation) }
        if let tools = source["tools"]?.arrayValue, !tools.isEmpty {
            let declarations: [JSON] = tools.compactMap { tool in
                guard let function = tool["function"] else { return nil }
                var out: JSONObject = ["name": function["name"] ?? ""]
                if let description = function["description"] { out["description"] = description }
                if let parameters = function["parameters"] { out["parameters"] = parameters }
                return .object(out)
            }
            body["tools"] = [["functionDeclarations": .array(declarations)]]
        }
        return body
    }

    static func userParts(_ content: JSON?) -> [JSON] {
        guard case .array(let parts)? = content else { return [["text": .string(ChatRequest.text(of: content))]] }
        return parts.compactMap { part in
            switch part["type"]?.stringValue {
            case "text"?, "input_text"?: return ["text": part["text"] ?? ""]
            case "image_url"?:
                let url = part["image_url"]?["url"]?.stringValue ?? ""
                if url.hasPrefix("data:"), let comma = url.firstIndex(of: ",") {
                    let header = url[url.index(url.startIndex, offsetBy: 5)..<comma]
                    let mime = header.split(separator: ";").first.map(String.init) ?? "image/png"
                    return ["inlineData": ["mimeType": .string(mime), "data": .string(String(url[url.index(after: comma)...]))]]
                }
                return ["fileData": ["fileUri": .string(url)]]
            default: return nil
            }
        }
    }

    // MARK: Response

    static func finishReason(_ reason: String?) -> String? {
        switch reason {
        case nil, "FINISH_REASON_UNSPECIFIED"?: nil
        case "MAX_TOKENS"?: "length"
        case "SAFETY"?, "RECITATION"?, "BLOCKLIST"?, "PROHIBITED_CONTENT"?, "SPII"?: "content_filter"
        default: "stop"
        }
    }

    static func translateResponse(_ bytes: [UInt8], model: String, providerName: String) throws(ProviderFailure) -> CompletedResponse {
        guard let json = try? JSONParser.parse(bytes), case .object = json else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent a response that is not JSON")
        }
        guard let candidates = json["candidates"]?.arrayValue, !candidates.isEmpty else {
            if let reason = json["promptFeedback"]?["blockReason"]?.stringValue {
                throw ProviderFailure(kind: .rejected(400), message: "Gemini blocked the prompt (\(reason))",
                                      clientError: APIError.badRequest("the prompt was blocked by the upstream's safety filter (\(reason))").json)
            }
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent no candidates")
        }
        let builder = ChunkBuilder(id: json["responseId"]?.stringValue ?? makeCompletionID(), model: json["modelVersion"]?.stringValue ?? model)
        var choices: [JSON] = []
        for (index, candidate) in candidates.enumerated() {
            var text = ""
            var toolCalls: [JSON] = []
            for part in candidate["content"]?["parts"]?.arrayValue ?? [] {
                if let piece = part["text"]?.stringValue, part["thought"]?.boolValue != true { text += piece }
                if let call = part["functionCall"] {
                    toolCalls.append(["id": .string(makeCompletionID(prefix: "call")), "type": "function",
                                      "function": ["name": call["name"] ?? "", "arguments": .string((call["args"] ?? [:]).text)]])
                }
            }
            var message: JSONObject = ["role": "assistant", "content": .string(text)]
            if !toolCalls.isEmpty { message["tool_calls"] = .array(toolCalls) }
            let finish = toolCalls.isEmpty ? (finishReason(candidate["finishReason"]?.stringValue) ?? "stop") : "tool_calls"
            choices.append(["index": .int(index), "message": .object(message), "finish_reason": .string(finish)])
        }
        let metadata = json["usageMetadata"]
        let usage = Usage(promptTokens: metadata?["promptTokenCount"]?.intValue ?? 0,
                          completionTokens: (metadata?["candidatesTokenCount"]?.intValue ?? 0) + (metadata?["thoughtsTokenCount"]?.intValue ?? 0),
                          estimated: metadata == nil)
        var object = builder.completion(message: [:], finishReason: "stop", usage: usage)
        object["choices"] = .array(choices)
        return CompletedResponse(object: object, usage: usage)
    }
}

/// Gemini's SSE stream (each event a partial GenerateContentResponse) → OpenAI deltas.
struct GeminiStreamTranslator: StreamTranslator {
    var sentRole = false
    var toolIndex = 0

    mutating func translate(_ event: SSEEvent) throws(ProviderFailure) -> [StreamPiece] {
        guard let json = try? JSONParser.parse(event.data) else {
            throw ProviderFailure(kind: .malformedResponse, message: "Gemini sent a stream event that is not JSON")
        }
        if let error = json["error"], !error.isNull {
            throw ProviderFailure(kind: .upstreamStatus(error["code"]?.intValue ?? 502), message: error["message"]?.stringValue ?? "Gemini reported an error in the stream")
        }
        var pieces: [StreamPiece] = []
        if !sentRole {
            sentRole = true
            pieces.append(.delta(["role": "assistant", "content": ""]))
        }
        let candidate = json["candidates"]?[0]
        var sawTool = false
        for part in candidate?["content"]?["parts"]?.arrayValue ?? [] {
            if let text = part["text"]?.stringValue, !text.isEmpty, part["thought"]?.boolValue != true {
                pieces.append(.delta(["content": .string(text)]))
            }
            if let call = part["functionCall"] {
                sawTool = true
                let delta: JSON = ["index": .int(toolIndex), "id": .string(makeCompletionID(prefix: "call")), "type": "function",
                                   "function": ["name": call["name"] ?? "", "arguments": .string((call["args"] ?? [:]).text)]]
                toolIndex += 1
                pieces.append(.delta(["tool_calls": [delta]]))
            }
        }
        if let metadata = json["usageMetadata"] {
            let completion = (metadata["candidatesTokenCount"]?.intValue ?? 0) + (metadata["thoughtsTokenCount"]?.intValue ?? 0)
            pieces.append(.usage(prompt: metadata["promptTokenCount"]?.intValue, completion: completion))
        }
        if let reason = GeminiAdapter.finishReason(candidate?["finishReason"]?.stringValue) {
            pieces.append(.finish(sawTool || toolIndex > 0 ? "tool_calls" : reason))
        }
        return pieces
    }
}
