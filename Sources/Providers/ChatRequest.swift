import MeshCore

/// A client's OpenAI-style chat request, parsed and checked once at the edge. It keeps the raw bytes
/// and where each top-level member sits, so an OpenAI-style upstream gets the body with only `model`
/// spliced, never re-encoded.
public struct ChatRequest: Sendable {
    public let raw: [UInt8]
    public let topLevel: JSONParser.TopLevel
    public var body: JSONObject { topLevel.object }
    public let model: String
    public let stream: Bool
    /// The client asked for `stream_options.include_usage`.
    public let clientWantsStreamUsage: Bool
    public let maxTokens: Int?
    public let messages: [JSON]
    /// Characters of text in the messages (for token estimates when an upstream reports none).
    public let promptCharacters: Int

    public var estimatedPromptTokens: Int { Usage.estimateTokens(characters: promptCharacters) }

    static let roles: Set<String> = ["system", "developer", "user", "assistant", "tool", "function"]

    /// Parses and validates; throws a 400 `APIError` naming the offending parameter.
    public init(bytes: [UInt8]) throws(APIError) {
        let topLevel: JSONParser.TopLevel
        do {
            topLevel = try JSONParser.parseTopLevelObject(bytes)
        } catch {
            throw APIError.badRequest("the request body is not valid JSON: \(error)", code: "invalid_json")
        }
        let body = topLevel.object
        guard let modelValue = body["model"] else { throw APIError.badRequest("missing required parameter 'model'", param: "model", code: "missing_required_parameter") }
        guard case .string(let model) = modelValue, !model.isEmpty else {
            throw APIError.badRequest("'model' must be a non-empty string, found \(modelValue.typeName)", param: "model", code: "invalid_type")
        }
        guard let messagesValue = body["messages"] else {
            throw APIError.badRequest("missing required parameter 'messages'", param: "messages", code: "missing_required_parameter")
        }
        guard case .array(let messages) = messagesValue, !messages.isEmpty else {
            throw APIError.badRequest("'messages' must be a non-empty array", param: "messages", code: "invalid_type")
        }
        var characters = 0
        for (index, message) in messages.enumerated() {
            guard case .object(let object) = message else {
                throw APIError.badRequest("messages[\(index)] must be an object, found \(message.typeName)", param: "messages[\(index)]", code: "invalid_type")
            }
            guard case .string(let role)? = object["role"], ChatRequest.roles.contains(role) else {
                throw APIError.badRequest("messages[\(index)].role must be one of system, developer, user, assistant, tool", param: "messages[\(index)].role", code: "invalid_value")
            }
            switch object["content"] {
            case .string(let text)?: characters += text.utf8.count
            case .array(let parts)?:
                for (partIndex, part) in parts.enumerated() {
                    guard case .object(let partObject) = part else {
                        throw APIError.badRequest("messages[\(index)].content[\(partIndex)] must be an object", param: "messages[\(index)].content[\(partIndex)]", code: "invalid_type")
                    }
                    if case .string(let text)? = partObject["text"] { characters += text.utf8.count }
                }
            case .null?, nil:
                if role != "assistant" {
                    throw APIError.badRequest("messages[\(index)].content is required for role \(role)", param: "messages[\(index)].content", code: "missing_required_parameter")
                }
            case let other?:
                throw APIError.badRequest("messages[\(index)].content must be a string or an array of parts, found \(other.typeName)", param: "messages[\(index)].content", code: "invalid_type")
            }
        }
        var stream = false
        if let value = body["stream"], !value.isNull {
            guard case .bool(let flag) = value else { throw APIError.badRequest("'stream' must be a boolean", param: "stream", code: "invalid_type") }
            stream = flag
        }
        var includeUsage = false
        if let options = body["stream_options"], !options.isNull {
            guard case .object = options else { throw APIError.badRequest("'stream_options' must be an object", param: "stream_options", code: "invalid_type") }
            includeUsage = options["include_usage"]?.boolValue ?? false
        }
        var maxTokens: Int?
        for key in ["max_completion_tokens", "max_tokens"] {
            guard let value = body[key], !value.isNull else { continue }
            guard let int = value.intValue, int >= 1 else {
                throw APIError.badRequest("'\(key)' must be a positive integer", param: key, code: "invalid_type")
            }
            maxTokens = maxTokens ?? int
        }
        for key in ["temperature", "top_p", "presence_penalty", "frequency_penalty"] {
            if let value = body[key], !value.isNull, value.doubleValue == nil {
                throw APIError.badRequest("'\(key)' must be a number, found \(value.typeName)", param: key, code: "invalid_type")
            }
        }
        if let n = body["n"], !n.isNull, (n.intValue ?? 0) < 1 {
            throw APIError.badRequest("'n' must be a positive integer", param: "n", code: "invalid_type")
        }
        if let stop = body["stop"], !stop.isNull {
            switch stop {
            case .string: break
            case .array(let items) where items.allSatisfy({ $0.stringValue != nil }): break
            default: throw APIError.badRequest("'stop' must be a string or an array of strings", param: "stop", code: "invalid_type")
            }
        }
        if let tools = body["tools"], !tools.isNull, tools.arrayValue == nil {
            throw APIError.badRequest("'tools' must be an array", param: "tools", code: "invalid_type")
        }
        self.raw = bytes
        self.topLevel = topLevel
        self.model = model
        self.stream = stream
        self.clientWantsStreamUsage = includeUsage
        self.maxTokens = maxTokens
        self.messages = messages
        self.promptCharacters = characters
    }

    /// Text of every message's content, for translation to formats that take plain text.
    public static func text(of content: JSON?) -> String {
        switch content {
        case .string(let text)?: return text
        case .array(let parts)?:
            return parts.compactMap { part -> String? in
                guard case .object(let object) = part else { return nil }
                if let type = object["type"]?.stringValue, type != "text" && type != "input_text" { return nil }
                return object["text"]?.stringValue
            }.joined()
        default: return ""
        }
    }
}

/// An OpenAI-style embeddings request.
public struct EmbeddingsRequest: Sendable {
    public let raw: [UInt8]
    public let topLevel: JSONParser.TopLevel
    public let model: String
    /// The inputs as strings (token-array inputs are passed through to OpenAI-style upstreams only).
    public let inputs: [String]
    public let inputIsTokens: Bool

    public init(bytes: [UInt8]) throws(APIError) {
        let topLevel: JSONParser.TopLevel
        do {
            topLevel = try JSONParser.parseTopLevelObject(bytes)
        } catch {
            throw APIError.badRequest("the request body is not valid JSON: \(error)", code: "invalid_json")
        }
        let body = topLevel.object
        guard case .string(let model)? = body["model"], !model.isEmpty else {
            throw APIError.badRequest("'model' must be a non-empty string", param: "model", code: "missing_required_parameter")
        }
        var inputs: [String] = []
        var isTokens = false
        switch body["input"] {
        case .string(let text)?: inputs = [text]
        case .array(let items)?:
            guard !items.isEmpty else { throw APIError.badRequest("'input' must not be empty", param: "input", code: "invalid_value") }
            if items.allSatisfy({ $0.stringValue != nil }) {
                inputs = items.compactMap(\.stringValue)
            } else if items.allSatisfy({ $0.intValue != nil || $0.arrayValue != nil }) {
                isTokens = true
            } else {
                throw APIError.badRequest("'input' must be a string, an array of strings or of token arrays", param: "input", code: "invalid_type")
            }
        case nil: throw APIError.badRequest("missing required parameter 'input'", param: "input", code: "missing_required_parameter")
        default: throw APIError.badRequest("'input' must be a string or an array", param: "input", code: "invalid_type")
        }
        if inputs.count > 2048 { throw APIError.badRequest("'input' has more than 2048 items", param: "input", code: "invalid_value") }
        self.raw = bytes
        self.topLevel = topLevel
        self.model = model
        self.inputs = inputs
        self.inputIsTokens = isTokens
    }

    public var estimatedTokens: Int { inputs.reduce(0) { $0 + Usage.estimateTokens(characters: $1.utf8.count) } }
}
