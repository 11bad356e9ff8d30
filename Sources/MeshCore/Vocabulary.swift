/// What a provider speaks on the wire. Every vendor that offers an OpenAI-style API is `openAICompatible`.
public enum WireFormat: String, Sendable, Hashable, CaseIterable, Codable {
    case openAICompatible = "openai_compatible"
    case anthropic
    case gemini
    case cloudflare
}

/// Price of a model in US dollars per million tokens. Local GPUs cost 0.
public struct Price: Sendable, Hashable, Codable {
    public var inputPer1M: Double
    public var outputPer1M: Double

    public init(inputPer1M: Double, outputPer1M: Double) {
        self.inputPer1M = inputPer1M
        self.outputPer1M = outputPer1M
    }

    public static let free = Price(inputPer1M: 0, outputPer1M: 0)

    public var isFree: Bool { inputPer1M == 0 && outputPer1M == 0 }

    /// The dollars a call with this usage costs.
    public func cost(of usage: Usage) -> Double {
        (Double(usage.promptTokens) * inputPer1M + Double(usage.completionTokens) * outputPer1M) / 1_000_000
    }

    /// A single figure to compare routes by: the price of a typical call with three input tokens per
    /// output token (chat prompts carry history; answers are shorter).
    public var blended: Double { (3 * inputPer1M + outputPer1M) / 4 }
}

/// Tokens a call used. `estimated` is set when the upstream did not report them and they were counted
/// from the text (four characters a token).
public struct Usage: Sendable, Hashable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var estimated: Bool

    public init(promptTokens: Int = 0, completionTokens: Int = 0, estimated: Bool = false) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.estimated = estimated
    }

    public var totalTokens: Int { promptTokens + completionTokens }

    /// A rough token count for text when the upstream reports none.
    public static func estimateTokens(characters: Int) -> Int { characters == 0 ? 0 : max(1, (characters + 3) / 4) }

    /// OpenAI's `usage` object.
    public var json: JSON {
        ["prompt_tokens": .int(promptTokens), "completion_tokens": .int(completionTokens), "total_tokens": .int(totalTokens)]
    }

    /// Reads OpenAI's `usage` object; nil when absent or not an object.
    public init?(openAI json: JSON?) {
        guard let json, case .object = json else { return nil }
        let prompt = json["prompt_tokens"]?.intValue ?? json["input_tokens"]?.intValue
        let completion = json["completion_tokens"]?.intValue ?? json["output_tokens"]?.intValue
        guard prompt != nil || completion != nil else { return nil }
        self.init(promptTokens: prompt ?? 0, completionTokens: completion ?? 0)
    }
}

/// An error a client sees, in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var type: String
    public var code: String?
    public var param: String?
    public var message: String
    /// Extra members placed in the error object (for example, the routes that were tried).
    public var details: JSONObject

    public init(status: Int, type: String, code: String? = nil, param: String? = nil, message: String, details: JSONObject = [:]) {
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.message = message
        self.details = details
    }

    public var description: String { "\(status) \(type): \(message)" }

    public var json: JSON {
        var error: JSONObject = ["message": .string(message), "type": .string(type)]
        error["param"] = param.map(JSON.string) ?? .null
        error["code"] = code.map(JSON.string) ?? .null
        for member in details { error[member.key] = member.value }
        return ["error": .object(error)]
    }

    public static func badRequest(_ message: String, param: String? = nil, code: String? = "invalid_request") -> APIError {
        APIError(status: 400, type: "invalid_request_error", code: code, param: param, message: message)
    }

    public static func notFound(_ message: String, code: String = "model_not_found", param: String? = "model") -> APIError {
        APIError(status: 404, type: "invalid_request_error", code: code, param: param, message: message)
    }

    public static func tooLarge(limit: Int) -> APIError {
        APIError(status: 413, type: "invalid_request_error", code: "request_too_large",
                 message: "request body is larger than the node's limit of \(limit) bytes (server.max_request_size)")
    }

    public static func unauthorized(_ message: String) -> APIError {
        APIError(status: 401, type: "authentication_error", code: "invalid_api_key", message: message)
    }

    public static func forbidden(_ message: String, code: String = "forbidden") -> APIError {
        APIError(status: 403, type: "permission_error", code: code, message: message)
    }
}

/// Capabilities a model may declare (the AIProxy standard's names).
public enum Capability {
    public static let textGeneration = "text-generation"
    public static let embeddings = "embeddings"
    public static let vision = "vision"
    public static let codeGeneration = "code-generation"
    public static let reasoning = "reasoning"
    public static let tools = "tools"
}

/// Routing strategies (DESIGN.md §5).
public enum RoutingStrategy: String, Sendable, Hashable, CaseIterable, Codable {
    case costOptimized = "cost_optimized"
    case latencyOptimized = "latency_optimized"
    case availability
    case roundRobin = "round_robin"
    case leastLoaded = "least_loaded"
    case weighted

    /// Accepts the standard's spellings and a few common aliases.
    public init?(spelling: String) {
        let normalized = spelling.lowercased().replacingDashes()
        switch normalized {
        case "cost_optimized", "cost", "cheapest", "floor": self = .costOptimized
        case "latency_optimized", "latency", "fastest", "nitro": self = .latencyOptimized
        case "availability", "priority": self = .availability
        case "round_robin", "roundrobin": self = .roundRobin
        case "least_loaded", "leastloaded": self = .leastLoaded
        case "weighted": self = .weighted
        default: return nil
        }
    }
}

extension String {
    func replacingDashes() -> String { String(map { $0 == "-" ? "_" : $0 }) }
}
