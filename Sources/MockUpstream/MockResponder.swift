import MeshCore

/// Which vendor's wire format a request used (from its path).
public enum MockFormat: String, Sendable, CaseIterable {
    case openAI = "openai"
    case anthropic
    case gemini
    case cloudflare
}

/// What the mock sends back for one request, before faults are applied.
enum MockReply {
    case full(status: Int, contentType: String, body: [UInt8])
    /// Events sent one by one (already framed as SSE).
    case stream(status: Int, events: [[UInt8]])
}

/// Deterministic answers in each vendor's real format: "Hello from NAME! You said: TEXT", token counts
/// from word counts, streams one word per event.
struct MockResponder {
    let name: String
    let requiredKey: String?
    let embeddingDimensions = 8

    func reply(method: String, path: String, headers: [(String, String)], body: [UInt8]) -> MockReply {
        let route = path.split(separator: "?").first.map(String.init) ?? path
        if method == "GET" {
            if route.hasSuffix("/models") {
                return json(200, ["object": "list", "data": [["id": .string("mock-model"), "object": "model", "owned_by": .string(name)]]])
            }
            if route == "/health" { return json(200, ["status": "ok"]) }
            return json(404, ["error": ["message": .string("no route \(route)"), "type": "invalid_request_error"]])
        }
        let format = MockResponder.format(of: route)
        if let requiredKey, !authorized(format: format, headers: headers, key: requiredKey) {
            return error(format, status: 401, message: "invalid credentials")
        }
        guard let request = try? JSONParser.parse(body), case .object = request else {
            return error(format, status: 400, message: "body is not a JSON object")
        }
        switch format {
        case .openAI:
            if route.hasSuffix("/embeddings") { return openAIEmbeddings(request) }
            return openAIChat(request)
        case .anthropic:
            return anthropic(request)
        case .gemini:
            if route.hasSuffix(":batchEmbedContents") { return geminiEmbeddings(request) }
            let model = route.split(separator: "/").last.map { String($0.split(separator: ":").first ?? "") } ?? "gemini"
            return gemini(request, model: model, stream: route.hasSuffix(":streamGenerateContent"))
        case .cloudflare:
            let model = route.components(after: "/ai/run/")
            if request["text"] != nil { return cloudflareEmbeddings(request) }
            return cloudflare(request, model: model)
        }
    }

    static func format(of path: String) -> MockFormat {
        if path.contains("/ai/run/") { return .cloudflare }
        if path.hasSuffix("/v1/messages") || path.hasSuffix("/messages") { return .anthropic }
        if path.contains(":generateContent") || path.contains(":streamGenerateContent") || path.contains(":batchEmbedContents") || path.contains(":embedContent") { return .gemini }
        return .openAI
    }

    func authorized(format: MockFormat, headers: [(String, String)], key: String) -> Bool {
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
        switch format {
        case .openAI, .cloudflare: return header("authorization") == "Bearer \(key)"
        case .anthropic: return header("x-api-key") == key
        case .gemini: return header("x-goog-api-key") == key
        }
    }

    // MARK: Content

    /// The text of the last user message in any of the formats.
    static func lastUserText(_ request: JSON) -> String {
        func text(_ content: JSON?) -> String {
            switch content {
            case .string(let value)?: return value
            case .array(let parts)?: return parts.compactMap { $0["text"]?.stringValue }.joined(separator: " ")
            default: return ""
            }
        }
        if let messages = request["messages"]?.arrayValue {
            for message in messages.reversed() where message["role"]?.stringValue == "user" {
                return text(message["content"])
            }
        }
        if let contents = request["contents"]?.arrayValue {
            for content in contents.reversed() where content["role"]?.stringValue != "model" {
                return text(content["parts"])
            }
        }
        return ""
    }

    static func wordCount(_ request: JSON) -> Int {
        var words = 0
        func count(_ value: JSON?) {
            switch value {
            case .string(let text)?: words += text.split(whereSeparator: { $0 == " " || $0 == "\n" }).count
            case .array(let items)?: items.forEach { count($0) }
            case .object(let object)?: object.members.forEach { if $0.key == "text" || $0.key == "content" || $0.key == "parts" || $0.key == "system" { count($0.value) } }
            default: break
            }
        }
        count(request["messages"])
        count(request["contents"])
        count(request["system"])
        count(request["systemInstruction"])
        return max(words, 1)
    }

    func answer(_ request: JSON) -> String { "Hello from \(name)! You said: \(MockResponder.lastUserText(request))" }

    func words(_ text: String) -> [String] {
        let parts = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        return parts.enumerated().map { $0.offset == 0 ? $0.element : " " + $0.element }
    }

    func json(_ status: Int, _ value: JSON) -> MockReply { .full(status: status, contentType: "application/json", body: value.bytes) }

    func sse(_ value: JSON, event: String? = nil) -> [UInt8] { SSEEvent(event: event, data: value.bytes).encoded() }

    func error(_ format: MockFormat, status: Int, message: String) -> MockReply {
        switch format {
        case .openAI:
            return json(status, ["error": ["message": .string(message), "type": status == 429 ? "rate_limit_error" : (status >= 500 ? "server_error" : "invalid_request_error"), "param": nil, "code": nil]])
        case .anthropic:
            let type = status == 429 ? "rate_limit_error" : status == 529 ? "overloaded_error" : status >= 500 ? "api_error" : status == 401 ? "authentication_error" : "invalid_request_error"
            return json(status, ["type": "error", "error": ["type": .string(type), "message": .string(message)]])
        case .gemini:
            let statusName = status == 429 ? "RESOURCE_EXHAUSTED" : status >= 500 ? "UNAVAILABLE" : status == 401 ? "UNAUTHENTICATED" : "INVALID_ARGUMENT"
            return json(status, ["error": ["code": .int(status), "message": .string(message), "status": .string(statusName)]])
        case .cloudflare:
            return json(status, ["success": false, "errors": [["code": 7000, "message": .string(message)]], "messages": [], "result": nil])
        }
    }

    // MARK: OpenAI

    func openAIChat(_ request: JSON) -> MockReply {
        let model = request["model"]?.stringValue ?? "mock-model"
        let text = answer(request)
        let promptTokens = MockResponder.wordCount(request)
        let completionTokens = words(text).count
        let usage: JSON = ["prompt_tokens": .int(promptTokens), "completion_tokens": .int(completionTokens), "total_tokens": .int(promptTokens + completionTokens)]
        let id = "chatcmpl-mock"
        let tool = request["tools"]?[0]?["function"]?["name"]?.stringValue
        if request["stream"]?.boolValue == true {
            var events: [[UInt8]] = []
            func chunk(_ delta: JSON, finish: JSON = nil) -> JSON {
                ["id": .string(id), "object": "chat.completion.chunk", "created": 1_700_000_000, "model": .string(model),
                 "choices": [["index": 0, "delta": delta, "finish_reason": finish]]]
            }
            events.append(sse(chunk(["role": "assistant", "content": ""])))
            if let tool {
                events.append(sse(chunk(["tool_calls": [["index": 0, "id": "call_mock", "type": "function", "function": ["name": .string(tool), "arguments": ""]]]])))
                events.append(sse(chunk(["tool_calls": [["index": 0, "function": ["arguments": .string(toolArguments(request))]]]])))
                events.append(sse(chunk([:], finish: "tool_calls")))
            } else {
                for word in words(text) { events.append(sse(chunk(["content": .string(word)]))) }
                events.append(sse(chunk([:], finish: "stop")))
            }
            if request["stream_options"]?["include_usage"]?.boolValue == true {
                events.append(sse(["id": .string(id), "object": "chat.completion.chunk", "created": 1_700_000_000, "model": .string(model), "choices": [], "usage": usage]))
            }
            events.append(SSEEvent(data: Array("[DONE]".utf8)).encoded())
            return .stream(status: 200, events: events)
        }
        var message: JSONObject = ["role": "assistant", "content": .string(text)]
        var finish = "stop"
        if let tool {
            message["content"] = nil
            message["tool_calls"] = [["id": "call_mock", "type": "function", "function": ["name": .string(tool), "arguments": .string(toolArguments(request))]]]
            finish = "tool_calls"
        }
        return json(200, ["id": .string(id), "object": "chat.completion", "created": 1_700_000_000, "model": .string(model),
                          "choices": [["index": 0, "message": .object(message), "finish_reason": .string(finish)]], "usage": usage])
    }

    func toolArguments(_ request: JSON) -> String { JSON.object(["q": .string(MockResponder.lastUserText(request))]).text }

    func vector(for text: String) -> JSON {
        var hash: UInt64 = 1469598103934665603
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 1099511628211 }
        var generator = SplitMix64(seed: hash)
        return .array((0..<embeddingDimensions).map { _ in .double((Double(generator.next() % 2000) / 1000) - 1) })
    }

    func openAIEmbeddings(_ request: JSON) -> MockReply {
        let inputs: [String]
        switch request["input"] {
        case .string(let text)?: inputs = [text]
        case .array(let items)?: inputs = items.map { $0.stringValue ?? $0.text }
        default: inputs = []
        }
        let data: [JSON] = inputs.enumerated().map { ["object": "embedding", "index": .int($0.offset), "embedding": vector(for: $0.element)] }
        let tokens = inputs.reduce(0) { $0 + max(1, $1.split(separator: " ").count) }
        return json(200, ["object": "list", "data": .array(data), "model": request["model"] ?? "", "usage": ["prompt_tokens": .int(tokens), "total_tokens": .int(tokens)]])
    }

    // MARK: Anthropic

    func anthropic(_ request: JSON) -> MockReply {
        guard request["max_tokens"]?.intValue != nil else { return error(.anthropic, status: 400, message: "max_tokens: Field required") }
        if let messages = request["messages"]?.arrayValue, messages.contains(where: { $0["role"]?.stringValue == "system" }) {
            return error(.anthropic, status: 400, message: "messages: Unexpected role \"system\"")
        }
        let model = request["model"]?.stringValue ?? "claude"
        let text = answer(request)
        let input = MockResponder.wordCount(request)
        let output = words(text).count
        let tool = request["tools"]?[0]?["name"]?.stringValue
        if request["stream"]?.boolValue == true {
            var events: [[UInt8]] = []
            events.append(sse(["type": "message_start", "message": ["id": "msg_mock", "type": "message", "role": "assistant", "content": [], "model": .string(model),
                                                                     "stop_reason": nil, "stop_sequence": nil, "usage": ["input_tokens": .int(input), "output_tokens": 1]]], event: "message_start"))
            if let tool {
                events.append(sse(["type": "content_block_start", "index": 0, "content_block": ["type": "tool_use", "id": "toolu_mock", "name": .string(tool), "input": [:]]], event: "content_block_start"))
                events.append(sse(["type": "content_block_delta", "index": 0, "delta": ["type": "input_json_delta", "partial_json": .string(toolArguments(request))]], event: "content_block_delta"))
            } else {
                events.append(sse(["type": "content_block_start", "index": 0, "content_block": ["type": "text", "text": ""]], event: "content_block_start"))
                events.append(sse(["type": "ping"], event: "ping"))
                for word in words(text) {
                    events.append(sse(["type": "content_block_delta", "index": 0, "delta": ["type": "text_delta", "text": .string(word)]], event: "content_block_delta"))
                }
            }
            events.append(sse(["type": "content_block_stop", "index": 0], event: "content_block_stop"))
            events.append(sse(["type": "message_delta", "delta": ["stop_reason": .string(tool == nil ? "end_turn" : "tool_use"), "stop_sequence": nil], "usage": ["output_tokens": .int(output)]], event: "message_delta"))
            events.append(sse(["type": "message_stop"], event: "message_stop"))
            return .stream(status: 200, events: events)
        }
        let content: JSON = tool.map { [["type": "tool_use", "id": "toolu_mock", "name": .string($0), "input": ["q": .string(MockResponder.lastUserText(request))]]] } ?? [["type": "text", "text": .string(text)]]
        return json(200, ["id": "msg_mock", "type": "message", "role": "assistant", "content": content, "model": .string(model),
                          "stop_reason": .string(tool == nil ? "end_turn" : "tool_use"), "stop_sequence": nil, "usage": ["input_tokens": .int(input), "output_tokens": .int(output)]])
    }

    // MARK: Gemini

    func gemini(_ request: JSON, model: String, stream: Bool) -> MockReply {
        let text = answer(request)
        let input = MockResponder.wordCount(request)
        let output = words(text).count
        let usage: JSON = ["promptTokenCount": .int(input), "candidatesTokenCount": .int(output), "totalTokenCount": .int(input + output)]
        if stream {
            var events: [[UInt8]] = []
            let pieces = words(text)
            for (index, word) in pieces.enumerated() {
                var candidate: JSONObject = ["content": ["role": "model", "parts": [["text": .string(word)]]], "index": 0]
                var response: JSONObject = [:]
                if index == pieces.count - 1 {
                    candidate["finishReason"] = "STOP"
                    response["usageMetadata"] = usage
                }
                response["candidates"] = [.object(candidate)]
                response["modelVersion"] = .string(model)
                events.append(sse(.object(response)))
            }
            return .stream(status: 200, events: events)
        }
        return json(200, ["candidates": [["content": ["role": "model", "parts": [["text": .string(text)]]], "finishReason": "STOP", "index": 0]],
                          "usageMetadata": usage, "modelVersion": .string(model)])
    }

    func geminiEmbeddings(_ request: JSON) -> MockReply {
        let requests = request["requests"]?.arrayValue ?? []
        let embeddings: [JSON] = requests.map { ["values": vector(for: $0["content"]?["parts"]?[0]?["text"]?.stringValue ?? "")] }
        return json(200, ["embeddings": .array(embeddings)])
    }

    // MARK: Cloudflare

    func cloudflare(_ request: JSON, model: String) -> MockReply {
        let text = answer(request)
        let input = MockResponder.wordCount(request)
        let output = words(text).count
        let usage: JSON = ["prompt_tokens": .int(input), "completion_tokens": .int(output), "total_tokens": .int(input + output)]
        if request["stream"]?.boolValue == true {
            var events = words(text).map { sse(["response": .string($0), "p": "abc"]) }
            events.append(sse(["response": "", "usage": usage]))
            events.append(SSEEvent(data: Array("[DONE]".utf8)).encoded())
            return .stream(status: 200, events: events)
        }
        return json(200, ["result": ["response": .string(text), "usage": usage], "success": true, "errors": [], "messages": []])
    }

    func cloudflareEmbeddings(_ request: JSON) -> MockReply {
        let texts = request["text"]?.arrayValue?.compactMap(\.stringValue) ?? [request["text"]?.stringValue ?? ""]
        return json(200, ["result": ["shape": [.int(texts.count), .int(embeddingDimensions)], "data": .array(texts.map(vector(for:)))], "success": true, "errors": [], "messages": []])
    }
}

extension String {
    func components(after marker: String) -> String {
        guard let range = self.firstRange(of: marker) else { return self }
        return String(self[range.upperBound...])
    }
}
