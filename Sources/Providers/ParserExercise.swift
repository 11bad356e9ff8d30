import MeshCore

/// Runs untrusted bytes through every parser and translator of this module, for the fuzzer
/// (`scripts/fuzz request|upstream`) and the corpus replay test. Errors are the expected outcome of
/// most inputs and are dropped; a crash, a hang or a sanitizer report is the finding.
package enum ParserExercise {
    /// A client's request body: the chat and embeddings validators, then (when valid) its translation
    /// into each vendor's request body.
    package static func clientRequest(_ bytes: [UInt8]) {
        _ = try? EmbeddingsRequest(bytes: bytes)
        guard let chat = try? ChatRequest(bytes: bytes) else { return }
        _ = try? AnthropicAdapter.translateRequest(chat, model: chat.model, defaultMaxTokens: 1024)
        _ = GeminiAdapter.translateRequest(chat)
        _ = CloudflareAdapter.translateRequest(chat)
        _ = JSON.object(chat.body).bytes
    }

    static let sampleRequest = try? ChatRequest(bytes: Array(#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#.utf8))

    /// An upstream's answer: the first byte picks the vendor and whether it is a whole body or a stream
    /// (server-sent events fed through the vendor's stream translator).
    package static func upstreamResponse(_ bytes: [UInt8]) {
        guard let first = bytes.first, let request = sampleRequest else { return }
        let body = Array(bytes.dropFirst())
        switch first % 8 {
        case 0:
            _ = try? OpenAIAdapter.completed(body, request: request, providerName: "fuzz")
            checkChunkScan(body)
        case 1: _ = try? AnthropicAdapter.translateResponse(body, providerName: "fuzz")
        case 2: _ = try? GeminiAdapter.translateResponse(body, model: "m", providerName: "fuzz")
        case 3: _ = try? CloudflareAdapter.translateResponse(body, request: request, model: "m", providerName: "fuzz")
        case 4: _ = try? SingleResponseStream(body: body, request: request)
        case 5: stream(body, through: AnthropicStreamTranslator())
        case 6: stream(body, through: GeminiStreamTranslator())
        default: stream(body, through: CloudflareStreamTranslator())
        }
    }

    /// A stream chunk's scan (`JSONParser.scanStreamChunk`) must read what a parse reads and refuse what a
    /// parse refuses: a difference is a finding.
    static func checkChunkScan(_ bytes: [UInt8]) {
        let scanned = try? OpenAIStream.facts(of: bytes)
        let parsed = (try? JSONParser.parse(bytes)).map { OpenAIStream.facts(of: $0) }
        precondition(scanned == parsed, "the stream chunk scan and the parser disagree")
    }

    static func stream<Translator: StreamTranslator>(_ bytes: [UInt8], through translator: Translator) {
        var translator = translator
        var parser = SSEParser(maxEventBytes: 1 << 16)
        guard let events = try? parser.feed(bytes) else { return }
        for event in events {
            guard (try? translator.translate(event)) != nil else { return }
        }
    }
}
