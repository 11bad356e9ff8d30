import CurlHTTP
import MeshCore

/// Anthropic's Messages API (`POST /v1/messages`), streaming included, translated to and from OpenAI's
/// chat shape: system messages, images, tools and tool results, stop reasons, usage.
public struct AnthropicAdapter: ProviderAdapter {
    public let name: String
    let baseURL: String
    let apiKey: String?
    let version: String
    let headers: [(name: String, value: String)]
    let upstream: Upstream

    public init(name: String, baseURL: String, apiKey: String?, version: String = "2023-06-01", headers: [(name: String, value: String)] = [], client: CurlClient) {
        self.name = name
        self.baseURL = baseURL.hasSuffix("/v1") ? String(baseURL.dropLast(3)) : baseURL
        self.apiKey = apiKey
        self.version = version
        self.headers = headers
        self.upstream = Upstream(client: client, secret: apiKey, providerName: name)
    }

    public func chat(_ call: ChatCall) async throws -> ChatResult {
        let body = try AnthropicAdapter.translateRequest(call.request, model: call.upstreamModel, defaultMaxTokens: call.defaultMaxTokens)
        var requestHeaders = headers + call.extraHeaders + [("anthropic-version", version)]
        if let apiKey { requestHeaders.append(("x-api-key", apiKey)) }
        let outbound = OutboundRequest.post("\(baseURL)/v1/messages", json: JSON.object(body).bytes, headers: requestHeaders, timeouts: call.timeouts)
        if !call.request.stream {
            return .complete(try AnthropicAdapter.translateResponse(await upstream.fetch(outbound), providerName: name))
        }
        let response = try await upstream.start(outbound)
        let builder = ChunkBuilder(id: makeCompletionID(), model: call.upstreamModel)
        return .stream(TranslatingStream(response: response, translator: AnthropicStreamTranslator(), builder: builder,
                                         clientWantsUsage: call.request.clientWantsStreamUsage, estimatedPromptTokens: call.request.estimatedPromptTokens))
    }

    public func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse {
        throw ProviderFailure(kind: .unsupported, message: "\(name) (Anthropic) offers no embeddings")
    }

    // MARK: Request

    static func translateRequest(_ request: ChatRequest, model: String, defaultMaxTokens: Int) throws(ProviderFailure) -> JSONObject {
        var system: [String] = []
        var messages: [JSON] = []
        var pendingToolResults: [JSON] = []

        func flushToolResults() {
            if !pendingToolResults.isEmpty {
                messages.append(["role": "user", "content": .array(pendingToolResults)])
                pendingToolResults = []
            }
        }

        for message in request.messages {
            let role = message["role"]?.stringValue ?? "user"
            switch role {
            case "system", "developer":
                system.append(ChatRequest.text(of: message["content"]))
            case "tool", "function":
                var block: JSONObject = ["type": "tool_result", "tool_use_id": .string(message["tool_call_id"]?.stringValue ?? message["name"]?.stringValue ?? "")]
                block["content"] = .string(ChatRequest.text(of: message["content"]))
                pendingToolResults.append(.object(block))
            case "assistant":
                flushToolResults()
                var blocks: [JSON] = []
                let text = ChatRequest.text(of: message["content"])
                if !text.isEmpty { blocks.append(["type": "text", "text": .string(text)]) }
                for call in message["tool_calls"]?.arrayValue ?? [] {
                    let arguments = call["function"]?["arguments"]?.stringValue ?? "{}"
                    let input = (try? JSONParser.parse(arguments)) ?? [:]
                    blocks.append(["type": "tool_use", "id": .string(call["id"]?.stringValue ?? makeCompletionID(prefix: "toolu")),
                                   "name": .string(call["function"]?["name"]?.stringValue ?? ""), "input": input])
                }
                if blocks.isEmpty { blocks.append(["type": "text", "text": ""]) }
                messages.append(["role": "assistant", "content": .array(blocks)])
            default:
                flushToolResults()
                messages.append(["role": "user", "content": try userContent(message["content"])])
            }
        }
        flushToolResults()

        var body: JSONObject = ["model": .string(model)]
        body["max_tokens"] = .int(request.maxTokens ?? defaultMaxTokens)
        if !system.isEmpty { body["system"] = .string(system.joined(separator: "\n\n")) }
        body["messages"] = .array(messages)
        let source = request.body
        if let value = source["temperature"], !value.isNull { body["temperature"] = .double(min(value.doubleValue ?? 1, 1)) }
        if let value = source["top_p"], !value.isNull { body["top_p"] = value }
        switch source["stop"] {
        case .string(let stop)?: body["stop_sequences"] = [.string(stop)]
        case .array(let stops)?: body["stop_sequences"] = .array(stops)
        default: break
        }
        if request.stream { body["stream"] = true }
        if let user = source["user"]?.stringValue { body["metadata"] = ["user_id": .string(user)] }
        if let tools = source["tools"]?.arrayValue, !tools.isEmpty {
            body["tools"] = .array(tools.compactMap { tool -> JSON? in
                guard let function = tool["function"] else { return nil }
                var out: JSONObject = ["name": function["name"] ?? ""]
                if let description = function["description"], !description.isNull { out["description"] = description }
                out["input_schema"] = function["parameters"] ?? ["type": "object", "properties": [:]]
                return .object(out)
            })
            switch source["tool_choice"] {
            case .string("required")?: body["tool_choice"] = ["type": "any"]
            case .string("none")?: body["tool_choice"] = ["type": "none"]
            case .string("auto")?: body["tool_choice"] = ["type": "auto"]
            case .object(let choice)?:
                if let name = choice["function"]?["name"]?.stringValue { body["tool_choice"] = ["type": "tool", "name": .string(name)] }
            default: break
            }
        }
        return body
    }

    static func userContent(_ content: JSON?) throws(ProviderFailure) -> JSON {
        guard case .array(let parts)? = content else { return .string(ChatRequest.text(of: content)) }
        var blocks: [JSON] = []
        for part in parts {
            switch part["type"]?.stringValue {
            case "text"?, "input_text"?:
                blocks.append(["type": "text", "text": part["text"] ?? ""])
            case "image_url"?:
                let url = part["image_url"]?["url"]?.stringValue ?? part["image_url"]?.stringValue ?? ""
                if url.hasPrefix("data:"), let comma = url.firstIndex(of: ",") {
                    let header = url[url.index(url.startIndex, offsetBy: 5)..<comma]
                    let mediaType = header.split(separator: ";").first.map(String.init) ?? "image/png"
                    blocks.append(["type": "image", "source": ["type": "base64", "media_type": .string(mediaType), "data": .string(String(url[url.index(after: comma)...]))]])
                } else {
                    blocks.append(["type": "image", "source": ["type": "url", "url": .string(url)]])
                }
            default:
                throw ProviderFailure(kind: .rejected(400), message: "Anthropic cannot take a content part of type \(part["type"]?.stringValue ?? "?")",
                                      clientError: APIError.badRequest("content part type \(part["type"]?.stringValue ?? "?") is not supported by the Anthropic route").json)
            }
        }
        return .array(blocks)
    }

    // MARK: Response

    static func finishReason(_ stopReason: String?) -> String {
        switch stopReason {
        case "max_tokens": "length"
        case "tool_use": "tool_calls"
        case "refusal": "content_filter"
        default: "stop"
        }
    }

    static func translateResponse(_ bytes: [UInt8], providerName: String) throws(ProviderFailure) -> CompletedResponse {
        guard let json = try? JSONParser.parse(bytes), case .array(let content)? = json["content"] else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent a response that is not an Anthropic message")
        }
        var text = ""
        var toolCalls: [JSON] = []
        for block in content {
            switch block["type"]?.stringValue {
            case "text"?: text += block["text"]?.stringValue ?? ""
            case "tool_use"?:
                toolCalls.append(["id": block["id"] ?? "", "type": "function",
                                  "function": ["name": block["name"] ?? "", "arguments": .string((block["input"] ?? [:]).text)]])
            default: break
            }
        }
        let input = (json["usage"]?["input_tokens"]?.intValue ?? 0) + (json["usage"]?["cache_read_input_tokens"]?.intValue ?? 0)
            + (json["usage"]?["cache_creation_input_tokens"]?.intValue ?? 0)
        let usage = Usage(promptTokens: input, completionTokens: json["usage"]?["output_tokens"]?.intValue ?? 0)
        var message: JSONObject = ["role": "assistant", "content": toolCalls.isEmpty || !text.isEmpty ? .string(text) : .null]
        if !toolCalls.isEmpty { message["tool_calls"] = .array(toolCalls) }
        let builder = ChunkBuilder(id: json["id"]?.stringValue ?? makeCompletionID(), model: json["model"]?.stringValue ?? "")
        return CompletedResponse(object: builder.completion(message: message, finishReason: finishReason(json["stop_reason"]?.stringValue), usage: usage), usage: usage)
    }
}

/// Anthropic stream events → OpenAI deltas.
struct AnthropicStreamTranslator: StreamTranslator {
    /// Anthropic content-block index → OpenAI tool_calls index.
    var toolIndexes: [Int: Int] = [:]
    var sentRole = false

    mutating func translate(_ event: SSEEvent) throws(ProviderFailure) -> [StreamPiece] {
        guard let json = try? JSONParser.parse(event.data) else {
            throw ProviderFailure(kind: .malformedResponse, message: "Anthropic sent a stream event that is not JSON")
        }
        let type = json["type"]?.stringValue ?? event.event ?? ""
        switch type {
        case "message_start":
            let usage = json["message"]?["usage"]
            let input = (usage?["input_tokens"]?.intValue ?? 0) + (usage?["cache_read_input_tokens"]?.intValue ?? 0) + (usage?["cache_creation_input_tokens"]?.intValue ?? 0)
            sentRole = true
            return [.usage(prompt: input, completion: usage?["output_tokens"]?.intValue), .delta(["role": "assistant", "content": ""])]
        case "content_block_start":
            guard let block = json["content_block"], block["type"]?.stringValue == "tool_use" else { return [] }
            let index = toolIndexes.count
            toolIndexes[json["index"]?.intValue ?? 0] = index
            let call: JSON = ["index": .int(index), "id": block["id"] ?? "", "type": "function", "function": ["name": block["name"] ?? "", "arguments": ""]]
            return [.delta(["tool_calls": [call]])]
        case "content_block_delta":
            let delta = json["delta"]
            switch delta?["type"]?.stringValue {
            case "text_delta"?:
                return [.delta(["content": delta?["text"] ?? ""])]
            case "input_json_delta"?:
                let index = toolIndexes[json["index"]?.intValue ?? 0] ?? 0
                return [.delta(["tool_calls": [["index": .int(index), "function": ["arguments": delta?["partial_json"] ?? ""]]]])]
            default:
                return []
            }
        case "message_delta":
            var pieces: [StreamPiece] = []
            if let output = json["usage"]?["output_tokens"]?.intValue { pieces.append(.usage(prompt: nil, completion: output)) }
            if let reason = json["delta"]?["stop_reason"]?.stringValue { pieces.append(.finish(AnthropicAdapter.finishReason(reason))) }
            return pieces
        case "message_stop":
            return [.end]
        case "error":
            let message = json["error"]?["message"]?.stringValue ?? "Anthropic reported an error in the stream"
            let kind: ProviderFailure.Kind = json["error"]?["type"]?.stringValue == "overloaded_error" ? .upstreamStatus(529) : .upstreamStatus(502)
            throw ProviderFailure(kind: kind, message: message)
        default:
            return []  // ping, content_block_stop
        }
    }
}
