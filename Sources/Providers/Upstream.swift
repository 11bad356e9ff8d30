import CurlHTTP
import MeshCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension OutboundResponse {
    /// `next()`, its errors as the `ProviderFailure` a client may see (for the streams that read it).
    func nextChunk() async throws(ProviderFailure) -> [UInt8]? {
        do { return try await next() } catch { throw ProviderFailure.from(error) }
    }

    /// `nextIfAvailable()` (nil: nothing has arrived yet), its errors as `ProviderFailure`s.
    func nextChunkIfAvailable() throws(ProviderFailure) -> [UInt8]?? {
        do { return try nextIfAvailable() } catch { throw ProviderFailure.from(error) }
    }
}

/// Sending to an upstream and turning what comes back into `ProviderFailure`s that a client may see.
struct Upstream: Sendable {
    let client: CurlClient
    /// The credential, so that it can be scrubbed from anything an upstream echoes back.
    let secret: String?
    let providerName: String

    /// Starts the request; on a non-2xx status reads the (bounded) error body and throws.
    func start(_ request: OutboundRequest) async throws(ProviderFailure) -> OutboundResponse {
        let response: OutboundResponse
        do {
            response = try await client.start(request)
        } catch {
            throw ProviderFailure.from(error)
        }
        let status = response.head.status
        guard (200..<300).contains(status) else {
            let body = (try? await response.collect(maxBytes: 64 * 1024)) ?? []
            throw failure(status: status, head: response.head, body: body)
        }
        return response
    }

    /// Sends the request and returns the whole 2xx body (one wake-up, nothing streamed); on a
    /// non-2xx status throws the classified failure.
    func fetch(_ request: OutboundRequest, maxBytes: Int = 64 << 20) async throws(ProviderFailure) -> [UInt8] {
        try await fetchWithHead(request, maxBytes: maxBytes).1
    }

    /// `fetch`, keeping the response head (peers report their path in `x-aiproxy-route`).
    func fetchWithHead(_ request: OutboundRequest, maxBytes: Int = 64 << 20) async throws(ProviderFailure) -> (ResponseHead, [UInt8]) {
        let head: ResponseHead, body: [UInt8]
        do {
            (head, body) = try await client.send(request, maxBytes: maxBytes)
        } catch {
            throw ProviderFailure.from(error)
        }
        guard (200..<300).contains(head.status) else { throw failure(status: head.status, head: head, body: body) }
        return (head, body)
    }

    func collect(_ response: OutboundResponse, maxBytes: Int = 64 << 20) async throws(ProviderFailure) -> [UInt8] {
        do {
            return try await response.collect(maxBytes: maxBytes)
        } catch {
            throw ProviderFailure.from(error)
        }
    }

    func failure(status: Int, head: ResponseHead, body: [UInt8]) -> ProviderFailure {
        let upstreamMessage = scrub(Upstream.errorMessage(in: body) ?? "")
        let detail = upstreamMessage.isEmpty ? "" : ": \(upstreamMessage)"
        switch status {
        case 429:
            let retryAfter = head.header("retry-after").flatMap(Double.init)
            return ProviderFailure(kind: .rateLimited, message: "\(providerName) is rate limiting (429)\(detail)", retryAfter: retryAfter)
        case 400, 413, 415, 422:
            let message = upstreamMessage.isEmpty ? "\(providerName) rejected the request (\(status))" : upstreamMessage
            let error = APIError(status: status, type: "invalid_request_error", code: "upstream_rejected", message: message)
            return ProviderFailure(kind: .rejected(status), message: "\(providerName) rejected the request (\(status))\(detail)", clientError: error.json)
        case 401, 403:
            // Never echo an upstream's words about our credentials: some quote part of the key.
            return ProviderFailure(kind: .upstreamStatus(status), message: "\(providerName) refused this node's credentials (\(status))")
        default:
            return ProviderFailure(kind: .upstreamStatus(status), message: "\(providerName) answered \(status)\(detail)")
        }
    }

    /// Removes the credential from text an upstream sent back.
    func scrub(_ text: String) -> String {
        var text = text
        if let secret, secret.count >= 4, text.contains(secret) {
            text = text.replacingAll(secret, with: "<redacted>")
        }
        if text.count > 500 { text = String(text.prefix(500)) + "…" }
        return text
    }

    /// The human message in an error body of any supported vendor.
    static func errorMessage(in body: [UInt8]) -> String? {
        guard let json = try? JSONParser.parse(body) else {
            let text = String(decoding: body.prefix(300), as: UTF8.self).trimmingWhitespace()
            return text.isEmpty ? nil : text
        }
        if let message = json["error"]?["message"]?.stringValue { return message }
        if let message = json["error"]?.stringValue { return message }
        if let message = json["errors"]?[0]?["message"]?.stringValue { return message }
        if let message = json["message"]?.stringValue { return message }
        if let message = json["detail"]?.stringValue { return message }
        return nil
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            out += rest[rest.startIndex..<range.lowerBound]
            out += replacement
            rest = rest[range.upperBound...]
        }
        out += rest
        return out
    }
}

/// Seconds since 1970, for OpenAI's `created`.
func unixTime() -> Int { Int(time(nil)) }

/// Builds OpenAI chat-completion chunks for streams translated from other formats.
struct ChunkBuilder: Sendable {
    let id: String
    let created: Int
    let model: String

    init(id: String, model: String) {
        self.id = id
        self.created = unixTime()
        self.model = model
    }

    func chunk(delta: JSONObject, finishReason: String? = nil) -> [UInt8] {
        let choice: JSON = ["index": 0, "delta": .object(delta), "finish_reason": finishReason.map(JSON.string) ?? .null]
        return JSON.object(header(choices: [choice])).bytes
    }

    func usageChunk(_ usage: Usage) -> [UInt8] {
        var object = header(choices: [])
        object["usage"] = usage.json
        return JSON.object(object).bytes
    }

    private func header(choices: [JSON]) -> JSONObject {
        ["id": .string(id), "object": "chat.completion.chunk", "created": .int(created), "model": .string(model), "choices": .array(choices)]
    }

    /// A complete (non-streaming) response object.
    func completion(message: JSONObject, finishReason: String, usage: Usage) -> JSONObject {
        let choice: JSON = ["index": 0, "message": .object(message), "finish_reason": .string(finishReason)]
        return ["id": .string(id), "object": "chat.completion", "created": .int(created), "model": .string(model), "choices": [choice], "usage": usage.json]
    }
}

/// A fragment of meaning from an upstream stream, in a form every format maps to.
enum StreamPiece: Sendable {
    /// An OpenAI `delta` object (role, content, tool_calls).
    case delta(JSONObject)
    case finish(String)
    case usage(prompt: Int?, completion: Int?)
    /// The upstream said it is done.
    case end
}

/// Turns one upstream's SSE events into pieces.
protocol StreamTranslator: Sendable {
    mutating func translate(_ event: SSEEvent) throws(ProviderFailure) -> [StreamPiece]
}

/// A stream that reads SSE from an upstream, translates it and emits OpenAI chunks, ending with a
/// finish chunk (and a usage chunk when the client asked for one) as `.final`.
final class TranslatingStream<Translator: StreamTranslator>: ChatStream, @unchecked Sendable {
    private let response: OutboundResponse
    private var translator: Translator
    private var parser = SSEParser()
    private let builder: ChunkBuilder
    private let clientWantsUsage: Bool
    private let estimatedPromptTokens: Int
    private var queue: [StreamItem] = []
    private var queueIndex = 0
    private var promptTokens: Int?
    private var completionTokens: Int?
    private var contentCharacters = 0
    private var finishReason: String?
    private var done = false
    let headers: [(name: String, value: String)]

    init(response: OutboundResponse, translator: Translator, builder: ChunkBuilder, clientWantsUsage: Bool, estimatedPromptTokens: Int) {
        self.response = response
        self.translator = translator
        self.builder = builder
        self.clientWantsUsage = clientWantsUsage
        self.estimatedPromptTokens = estimatedPromptTokens
        self.headers = []
    }

    var usage: Usage {
        if promptTokens == nil && completionTokens == nil {
            return Usage(promptTokens: estimatedPromptTokens, completionTokens: Usage.estimateTokens(characters: contentCharacters), estimated: true)
        }
        return Usage(promptTokens: promptTokens ?? estimatedPromptTokens, completionTokens: completionTokens ?? Usage.estimateTokens(characters: contentCharacters), estimated: promptTokens == nil || completionTokens == nil)
    }

    func cancel() { response.cancel() }

    func next() async throws -> StreamItem? {
        while true {
            if let item = dequeue() { return item }
            if done { return nil }
            try take(try await response.nextChunk())
        }
    }

    func nextIfReady() throws -> StreamPoll {
        while true {
            if let item = dequeue() { return .item(item) }
            if done { return .end }
            guard let chunk = try response.nextChunkIfAvailable() else { return .notReady }
            try take(chunk)
        }
    }

    private func dequeue() -> StreamItem? {
        guard queueIndex < queue.count else { return nil }
        let item = queue[queueIndex]
        queueIndex += 1
        if queueIndex == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueIndex = 0
        }
        return item
    }

    /// Parses and translates the upstream's next bytes (nil: its end).
    private func take(_ chunk: [UInt8]?) throws {
        var events: [SSEEvent]
        if let chunk {
            do {
                events = try parser.feed(chunk)
            } catch {
                throw ProviderFailure(kind: .malformedResponse, message: "\(error)")
            }
        } else {
            events = parser.finish().map { [$0] } ?? []
        }
        for event in events {
            for piece in try translator.translate(event) { apply(piece) }
            if done { break }
        }
        if chunk == nil && !done {
            if finishReason != nil {
                finishStream()
            } else {
                throw ProviderFailure(kind: .streamCut, message: "the upstream ended the stream before it finished")
            }
        }
    }

    private func apply(_ piece: StreamPiece) {
        switch piece {
        case .delta(let delta):
            if case .string(let text)? = delta["content"] { contentCharacters += text.utf8.count }
            queue.append(.chunk(builder.chunk(delta: delta)))
        case .finish(let reason):
            finishReason = reason
        case .usage(let prompt, let completion):
            if let prompt { promptTokens = prompt }
            if let completion { completionTokens = completion }
        case .end:
            finishStream()
        }
    }

    private func finishStream() {
        guard !done else { return }
        done = true
        let finishChunk = builder.chunk(delta: [:], finishReason: finishReason ?? "stop")
        if clientWantsUsage {
            queue.append(.chunk(finishChunk))
            queue.append(.final(builder.usageChunk(usage)))
        } else {
            queue.append(.final(finishChunk))
        }
    }
}

/// Makes a fresh request id for translated responses.
func makeCompletionID(prefix: String = "chatcmpl") -> String {
    var generator = FastRandom()
    let value = generator.next() as UInt64
    return "\(prefix)-\(String(value, radix: 36))"
}
