import CurlHTTP
import MeshCore

/// Any OpenAI-style server: OpenAI, Groq, Together, OpenRouter, Fireworks, DeepSeek, Mistral, and local
/// servers (vLLM, Ollama, llama.cpp, LM Studio, LocalAI, TGI). Bodies pass through with only `model`
/// spliced; streams pass through event by event.
public struct OpenAIAdapter: ProviderAdapter {
    public let name: String
    let baseURL: String
    let apiKey: String?
    let headers: [(name: String, value: String)]
    let upstream: Upstream
    /// Ask upstreams for `stream_options.include_usage` so streamed calls are priced exactly.
    let requestStreamUsage: Bool
    /// Headers computed from the exact bytes sent and the request id (mesh forwarding signs its hop header here).
    public typealias BodySigner = @Sendable (_ body: [UInt8], _ requestID: String) -> [(name: String, value: String)]
    let signer: BodySigner?

    public init(name: String, baseURL: String, apiKey: String?, headers: [(name: String, value: String)] = [], client: CurlClient, requestStreamUsage: Bool = true,
                signer: BodySigner? = nil) {
        self.signer = signer
        self.name = name
        self.baseURL = baseURL
        self.apiKey = apiKey
        self.headers = headers
        self.upstream = Upstream(client: client, secret: apiKey, providerName: name)
        self.requestStreamUsage = requestStreamUsage
    }

    func requestHeaders(_ extra: [(name: String, value: String)]) -> [(name: String, value: String)] {
        var all = headers + extra
        if let apiKey { all.append(("Authorization", "Bearer \(apiKey)")) }
        return all
    }

    public func chat(_ call: ChatCall) async throws -> ChatResult {
        let request = call.request
        var edits: [BodyEdit] = []
        if call.upstreamModel != request.model { edits.append(.replace(key: "model", with: .string(call.upstreamModel))) }
        if request.stream && requestStreamUsage && !request.clientWantsStreamUsage {
            if case .object(var options)? = request.body["stream_options"] {
                options["include_usage"] = true
                edits.append(.replace(key: "stream_options", with: .object(options)))
            } else if request.topLevel.valueRanges["stream_options"] != nil {
                edits.append(.replace(key: "stream_options", with: ["include_usage": true]))
            } else {
                edits.append(.insert(key: "stream_options", value: ["include_usage": true]))
            }
        }
        let body = BodyEdit.apply(edits, to: request.raw, topLevel: request.topLevel)
        var outbound = OutboundRequest.post("\(baseURL)/chat/completions", json: body, headers: requestHeaders(call.extraHeaders + (signer?(body, call.requestID) ?? [])),
                                            timeouts: call.timeouts)
        outbound.abort = call.abort
        if !request.stream {
            let (head, bytes) = try await upstream.fetchWithHead(outbound)
            var completed = try OpenAIAdapter.completed(bytes, request: request, providerName: name)
            completed.headers = head.headers(withPrefix: "x-aiproxy-")
            return .complete(completed)
        }
        let response = try await upstream.start(outbound)
        guard response.head.header("content-type")?.lowercased().contains("text/event-stream") ?? true else {
            // Some servers answer a stream request with one JSON body: accept it as a one-chunk stream.
            let bytes = try await upstream.collect(response)
            return .stream(try SingleResponseStream(body: bytes, request: request))
        }
        return .stream(OpenAIStream(response: response, request: request))
    }

    /// What an answer's bytes are read for: its usage. The rest (the choices' text, a peer's `x_aiproxy`,
    /// whose cost the gateway reads from its range) is checked but not built: the bytes pass through to
    /// the client as they came.
    static let answerMembers: Set<String> = ["usage"]

    package static func completed(_ bytes: [UInt8], request: ChatRequest, providerName: String) throws(ProviderFailure) -> CompletedResponse {
        let parsed: JSONParser.TopLevel
        do {
            parsed = try JSONParser.parseTopLevelObject(bytes, keeping: answerMembers)
        } catch {
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent a body that is not a JSON object: \(error)")
        }
        guard let choices = parsed.valueRanges["choices"], bytes[choices.lowerBound] == UInt8(ascii: "[") else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(providerName) sent a response without choices")
        }
        let usage = Usage(openAI: parsed.object["usage"]) ?? {
            // No usage: estimate from the text, which only this rare case builds.
            let list = (try? JSONParser.parse(bytes[choices]))?.arrayValue ?? []
            let characters = list.reduce(0) { $0 + ChatRequest.text(of: $1["message"]?["content"]).utf8.count }
            return Usage(promptTokens: request.estimatedPromptTokens, completionTokens: Usage.estimateTokens(characters: characters), estimated: true)
        }()
        return CompletedResponse(body: bytes, closingBrace: parsed.closingBrace, usage: usage, topLevel: parsed)
    }

    public func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse {
        let request = call.request
        var edits: [BodyEdit] = []
        if call.upstreamModel != request.model { edits.append(.replace(key: "model", with: .string(call.upstreamModel))) }
        let body = BodyEdit.apply(edits, to: request.raw, topLevel: request.topLevel)
        var outbound = OutboundRequest.post("\(baseURL)/embeddings", json: body, headers: requestHeaders(call.extraHeaders + (signer?(body, call.requestID) ?? [])),
                                            timeouts: call.timeouts)
        outbound.abort = call.abort
        let bytes = try await upstream.fetch(outbound)
        let parsed: JSONParser.TopLevel
        do {
            parsed = try JSONParser.parseTopLevelObject(bytes)
        } catch {
            throw ProviderFailure(kind: .malformedResponse, message: "\(name) sent embeddings that are not a JSON object")
        }
        guard parsed.object["data"]?.arrayValue != nil else {
            throw ProviderFailure(kind: .malformedResponse, message: "\(name) sent embeddings without data")
        }
        let usage = Usage(openAI: parsed.object["usage"]) ?? Usage(promptTokens: request.estimatedTokens, estimated: true)
        return CompletedResponse(body: bytes, closingBrace: parsed.closingBrace, usage: usage, topLevel: parsed)
    }
}

/// Edits of a top-level JSON object that keep every other byte as it was.
enum BodyEdit {
    case replace(key: String, with: JSON)
    case insert(key: String, value: JSON)

    static func apply(_ edits: [BodyEdit], to raw: [UInt8], topLevel: JSONParser.TopLevel) -> [UInt8] {
        guard !edits.isEmpty else { return raw }
        // Apply from the end of the body backwards so earlier offsets stay valid.
        var placed: [(offset: Int, end: Int, bytes: [UInt8])] = []
        for edit in edits {
            switch edit {
            case .replace(let key, let value):
                guard let range = topLevel.valueRanges[key] else { continue }
                placed.append((range.lowerBound, range.upperBound, value.bytes))
            case .insert(let key, let value):
                var bytes: [UInt8] = []
                JSON.encodeString(key, into: &bytes)
                bytes.append(UInt8(ascii: ":"))
                value.encode(into: &bytes)
                if !topLevel.valueRanges.isEmpty { bytes.append(UInt8(ascii: ",")) }
                placed.append((topLevel.afterOpeningBrace, topLevel.afterOpeningBrace, bytes))
            }
        }
        var out = raw
        for edit in placed.sorted(by: { $0.offset > $1.offset }) {
            out.replaceSubrange(edit.offset..<edit.end, with: edit.bytes)
        }
        return out
    }
}

/// Passes an OpenAI stream through, holding back only the finishing chunk so that the gateway can
/// add `x_aiproxy` to the last event, and dropping the usage chunk when only aimesh asked for it.
final class OpenAIStream: ChatStream, @unchecked Sendable {
    private let response: OutboundResponse
    private let clientWantsUsage: Bool
    private let estimatedPromptTokens: Int
    private var parser = SSEParser()
    private var events: [SSEEvent] = []
    private var eventIndex = 0
    private var out: [StreamItem] = []
    private var held: [UInt8]?
    private var reported: Usage?
    private var contentCharacters = 0
    private var sawFinish = false
    private var ended = false
    private var upstreamDone = false
    let headers: [(name: String, value: String)]

    init(response: OutboundResponse, request: ChatRequest) {
        self.response = response
        self.clientWantsUsage = request.clientWantsStreamUsage
        self.estimatedPromptTokens = request.estimatedPromptTokens
        self.headers = response.head.headers(withPrefix: "x-aiproxy-")
    }

    var usage: Usage {
        reported ?? Usage(promptTokens: estimatedPromptTokens, completionTokens: Usage.estimateTokens(characters: contentCharacters), estimated: true)
    }

    func cancel() { response.cancel() }

    func next() async throws -> StreamItem? {
        while true {
            switch try advance() {
            case .item(let item): return item
            case .end: return nil
            case .notReady: try await fill()
            }
        }
    }

    func nextIfReady() throws -> StreamPoll {
        while true {
            let poll = try advance()
            guard poll == .notReady else { return poll }
            guard try fillIfAvailable() else { return .notReady }
        }
    }

    /// Works through the events already parsed; `.notReady` when it needs more of the upstream's bytes.
    private func advance() throws(ProviderFailure) -> StreamPoll {
        while true {
            if !out.isEmpty { return .item(out.removeFirst()) }
            if ended { return .end }
            let event: SSEEvent
            if eventIndex < events.count {
                event = events[eventIndex]
                eventIndex += 1
            } else if upstreamDone {
                ended = true
                if sawFinish || held != nil {
                    if let held { return .item(.final(held)) }
                    return .end
                }
                throw ProviderFailure(kind: .streamCut, message: "the upstream ended the stream before it finished")
            } else {
                return .notReady
            }
            if event.isDone {
                ended = true
                if let held { return .item(.final(held)) }
                return .end
            }
            let facts: ChunkFacts
            do {
                facts = try OpenAIStream.facts(of: event.data)
            } catch {
                throw ProviderFailure(kind: .malformedResponse, message: "the upstream sent a stream event that is not JSON")
            }
            if let error = facts.error {
                let message = error["message"]?.stringValue ?? "the upstream reported an error in the stream"
                throw ProviderFailure(kind: .upstreamStatus(502), message: message)
            }
            if let usage = Usage(openAI: facts.usage) { reported = usage }
            contentCharacters += facts.contentBytes
            if facts.choiceCount == 0 && facts.usage != nil {
                // The usage-only chunk.
                if clientWantsUsage {
                    if let previous = held { out.append(.chunk(previous)) }
                    held = event.data
                }
                continue
            }
            if facts.finishes {
                sawFinish = true
                if let previous = held { out.append(.chunk(previous)) }
                held = event.data
                continue
            }
            if let previous = held {
                held = nil
                out.append(.chunk(previous))
            }
            out.append(.chunk(event.data))
        }
    }

    /// What a chunk is read for: an error, the usage, and each choice's finish reason and text length.
    struct ChunkFacts: Equatable {
        /// The `error` member, unless absent or null.
        var error: JSON?
        /// The `usage` member, unless absent or null.
        var usage: JSON?
        var choiceCount = 0
        var finishes = false
        /// UTF-8 bytes of the choices' `delta.content` text.
        var contentBytes = 0
    }

    /// An event's facts. Every OpenAI chunk is an object: it is checked whole and read without building it
    /// (`JSONParser.scanStreamChunk`); an error or a usage, once per stream at most, is then parsed from its
    /// own bytes. Anything else is parsed and read as a value.
    static func facts(of data: [UInt8]) throws(JSONParseError) -> ChunkFacts {
        if let summary = try JSONParser.scanStreamChunk(data) {
            return ChunkFacts(error: summary.error.map { (try? JSONParser.parse(data[$0])) ?? .null },
                              usage: summary.usage.map { (try? JSONParser.parse(data[$0])) ?? .null },
                              choiceCount: summary.choiceCount, finishes: summary.finishes, contentBytes: summary.contentBytes)
        }
        return facts(of: try JSONParser.parse(data))
    }

    /// The same facts read from a parsed value.
    static func facts(of json: JSON) -> ChunkFacts {
        var facts = ChunkFacts()
        if let error = json["error"], !error.isNull { facts.error = error }
        if let usage = json["usage"], !usage.isNull { facts.usage = usage }
        let choices = json["choices"]?.arrayValue ?? []
        facts.choiceCount = choices.count
        for choice in choices {
            if let reason = choice["finish_reason"], !reason.isNull { facts.finishes = true }
            if case .string(let text)? = choice["delta"]?["content"] { facts.contentBytes += text.utf8.count }
        }
        return facts
    }

    /// Waits for the upstream's next bytes and parses them (every parsed event has been used).
    private func fill() async throws {
        try take(try await response.nextChunk())
    }

    /// Parses the upstream's next bytes if they have arrived; false when they have not.
    private func fillIfAvailable() throws -> Bool {
        guard let chunk = try response.nextChunkIfAvailable() else { return false }
        try take(chunk)
        return true
    }

    private func take(_ chunk: [UInt8]?) throws(ProviderFailure) {
        events.removeAll(keepingCapacity: true)
        eventIndex = 0
        if let chunk {
            do {
                events = try parser.feed(chunk)
            } catch {
                throw ProviderFailure(kind: .malformedResponse, message: "\(error)")
            }
        } else {
            upstreamDone = true
            if let last = parser.finish() { events = [last] }
        }
    }
}

/// A stream request that an upstream answered with one JSON body: replayed as a two-chunk stream.
final class SingleResponseStream: ChatStream, @unchecked Sendable {
    private var items: [StreamItem]
    let usage: Usage
    let headers: [(name: String, value: String)] = []

    init(body: [UInt8], request: ChatRequest) throws(ProviderFailure) {
        let completed = try OpenAIAdapter.completed(body, request: request, providerName: "upstream")
        let json = (try? JSONParser.parse(completed.body)) ?? .null
        let builder = ChunkBuilder(id: json["id"]?.stringValue ?? makeCompletionID(), model: json["model"]?.stringValue ?? request.model)
        let message = json["choices"]?[0]?["message"]
        var delta: JSONObject = ["role": "assistant"]
        delta["content"] = .string(ChatRequest.text(of: message?["content"]))
        if let toolCalls = message?["tool_calls"], !toolCalls.isNull {
            delta["tool_calls"] = .array((toolCalls.arrayValue ?? []).enumerated().map { index, call in
                var call = call
                call["index"] = .int(index)
                return call
            })
        }
        let finish = json["choices"]?[0]?["finish_reason"]?.stringValue ?? "stop"
        var items: [StreamItem] = [.chunk(builder.chunk(delta: delta))]
        if request.clientWantsStreamUsage {
            items.append(.chunk(builder.chunk(delta: [:], finishReason: finish)))
            items.append(.final(builder.usageChunk(completed.usage)))
        } else {
            items.append(.final(builder.chunk(delta: [:], finishReason: finish)))
        }
        self.items = items
        self.usage = completed.usage
    }

    func next() async throws -> StreamItem? { items.isEmpty ? nil : items.removeFirst() }
    func cancel() {}
}
