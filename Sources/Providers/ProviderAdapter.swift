import CurlHTTP
import MeshCore

/// One call to one route: what to ask, of which upstream model, within which limits.
public struct ChatCall: Sendable {
    public var request: ChatRequest
    public var upstreamModel: String
    public var requestID: String
    public var timeouts: Timeouts
    /// Headers added to the upstream request (peer forwarding uses these for its hop header).
    public var extraHeaders: [(name: String, value: String)]
    /// Default `max_tokens` for APIs that require one (Anthropic).
    public var defaultMaxTokens: Int
    /// Ends the upstream call from outside (peer forwarding: the peer was declared dead).
    public var abort: AbortSignal?

    public init(request: ChatRequest, upstreamModel: String, requestID: String, timeouts: Timeouts = Timeouts(), extraHeaders: [(name: String, value: String)] = [], defaultMaxTokens: Int = 4096) {
        self.request = request
        self.upstreamModel = upstreamModel
        self.requestID = requestID
        self.timeouts = timeouts
        self.extraHeaders = extraHeaders
        self.defaultMaxTokens = defaultMaxTokens
    }
}

public struct EmbeddingsCall: Sendable {
    public var request: EmbeddingsRequest
    public var upstreamModel: String
    public var requestID: String
    public var timeouts: Timeouts
    public var extraHeaders: [(name: String, value: String)]
    /// Ends the upstream call from outside (peer forwarding: the peer was declared dead).
    public var abort: AbortSignal?

    public init(request: EmbeddingsRequest, upstreamModel: String, requestID: String, timeouts: Timeouts = Timeouts(), extraHeaders: [(name: String, value: String)] = []) {
        self.request = request
        self.upstreamModel = upstreamModel
        self.requestID = requestID
        self.timeouts = timeouts
        self.extraHeaders = extraHeaders
    }
}

/// A finished answer in OpenAI's shape: a JSON object as bytes, plus what the ledger needs.
public struct CompletedResponse: Sendable {
    /// OpenAI-shaped JSON object.
    public var body: [UInt8]
    /// Offset of the object's closing brace (where `x_aiproxy` goes).
    public var closingBrace: Int
    public var usage: Usage
    /// Response headers worth passing on (for peers: their `x-aiproxy-*`).
    public var headers: [(name: String, value: String)]
    /// The body's top-level members with their byte ranges, when the adapter parsed it as it was sent
    /// (OpenAI-style answers): a peer's `x_aiproxy` is found here without parsing the answer again.
    public var topLevel: JSONParser.TopLevel?

    public init(body: [UInt8], closingBrace: Int, usage: Usage, headers: [(name: String, value: String)] = [], topLevel: JSONParser.TopLevel? = nil) {
        self.body = body
        self.closingBrace = closingBrace
        self.usage = usage
        self.headers = headers
        self.topLevel = topLevel
    }

    /// Builds one from a JSON object.
    public init(object: JSONObject, usage: Usage) {
        let bytes = JSON.object(object).bytes
        self.init(body: bytes, closingBrace: bytes.count - 1, usage: usage)
    }

    /// The body with `"x_aiproxy": info` added as its last member.
    public func adding(_ key: String, _ value: JSON) -> [UInt8] {
        JSON.appendingMember(to: body, closingBrace: closingBrace, isEmpty: body.count <= 2, key: key, value: value)
    }
}

/// A piece of an OpenAI-shaped stream: the JSON payload of one `data:` event.
public enum StreamItem: Sendable, Equatable {
    case chunk([UInt8])
    /// The last chunk (a JSON object to which the gateway appends `x_aiproxy`); the stream ends after it.
    case final([UInt8])
}

/// What a stream has ready without waiting.
public enum StreamPoll: Sendable, Equatable {
    case item(StreamItem)
    /// The stream ended (as `next()` returning nil).
    case end
    /// The next item has not arrived yet: `next()` would wait.
    case notReady
}

/// A stream of OpenAI chat-completion chunks from some upstream, already translated.
public protocol ChatStream: AnyObject, Sendable {
    /// The next item, nil after the end. Throws `ProviderFailure` when the upstream fails.
    func next() async throws -> StreamItem?
    /// The next item only if it is already here (so that events which arrived together are written to the
    /// client together); never waits. Throws as `next()` does.
    func nextIfReady() throws -> StreamPoll
    /// Tokens used, known (or estimated) once the stream has ended.
    var usage: Usage { get }
    /// Response headers worth passing on.
    var headers: [(name: String, value: String)] { get }
    func cancel()
}

extension ChatStream {
    /// Streams that cannot tell say nothing is ready: each item is then written as it comes.
    public func nextIfReady() throws -> StreamPoll { .notReady }
}

public enum ChatResult: Sendable {
    case complete(CompletedResponse)
    case stream(any ChatStream)
}

/// Why a route failed, and whether another route may be tried.
public struct ProviderFailure: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case connect
        case timeout
        case rateLimited
        case upstreamStatus(Int)
        /// The upstream refused the request as malformed: the client's fault, not worth a retry.
        case rejected(Int)
        case malformedResponse
        case streamCut
        case cancelled
        case unsupported
    }

    public var kind: Kind
    /// Safe to show a client: never a credential, never a URL with a key.
    public var message: String
    /// Seconds the upstream asked to wait (429 retry-after).
    public var retryAfter: Double?
    /// For `.rejected`: the upstream's error object (already in OpenAI's shape).
    public var clientError: JSON?

    public init(kind: Kind, message: String, retryAfter: Double? = nil, clientError: JSON? = nil) {
        self.kind = kind
        self.message = message
        self.retryAfter = retryAfter
        self.clientError = clientError
    }

    public var description: String { message }

    /// Failures another route may fix: connection errors, timeouts, 429, 5xx, bad credentials.
    public var isRetryable: Bool {
        switch kind {
        case .rejected, .cancelled: false
        default: true
        }
    }

    /// A short label for metrics and `attempts`.
    public var label: String {
        switch kind {
        case .connect: "connect_error"
        case .timeout: "timeout"
        case .rateLimited: "rate_limited"
        case .upstreamStatus(let status): "http_\(status)"
        case .rejected(let status): "rejected_\(status)"
        case .malformedResponse: "bad_response"
        case .streamCut: "stream_cut"
        case .cancelled: "cancelled"
        case .unsupported: "unsupported"
        }
    }

    public static func from(_ error: any Error) -> ProviderFailure {
        if let failure = error as? ProviderFailure { return failure }
        if let transfer = error as? TransferError { return from(transfer) }
        if error is CancellationError { return ProviderFailure(kind: .cancelled, message: "cancelled") }
        return ProviderFailure(kind: .malformedResponse, message: "\(error)")
    }

    public static func from(_ error: TransferError) -> ProviderFailure {
        switch error.kind {
        case .cancelled, .shutdown: return ProviderFailure(kind: .cancelled, message: error.message)
        // Aborted from outside (the peer was declared dead): the route failed, the next may serve.
        case .aborted: return ProviderFailure(kind: .connect, message: error.message)
        case .couldNotConnect, .couldNotResolve: return ProviderFailure(kind: .connect, message: "could not connect: \(error.message)")
        case .connectTimeout: return ProviderFailure(kind: .connect, message: "connect timed out: \(error.message)")
        case .firstByteTimeout, .idleTimeout, .totalTimeout: return ProviderFailure(kind: .timeout, message: error.message)
        case .connectionReset: return ProviderFailure(kind: error.phase == .beforeResponse ? .connect : .streamCut, message: error.message)
        case .tooLarge: return ProviderFailure(kind: .malformedResponse, message: error.message)
        case .invalidRequest: return ProviderFailure(kind: .unsupported, message: error.message)
        case .other: return ProviderFailure(kind: error.phase == .beforeResponse ? .connect : .streamCut, message: error.message)
        }
    }
}

/// Speaks one upstream's wire format, translating to and from OpenAI's chat shape.
public protocol ProviderAdapter: Sendable {
    var name: String { get }
    func chat(_ call: ChatCall) async throws -> ChatResult
    func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse
}
