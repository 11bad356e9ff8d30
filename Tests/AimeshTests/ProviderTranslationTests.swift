import CurlHTTP
import MockUpstream
import MeshCore
@testable import Providers
import Testing

@Suite struct ChatRequestTests {
    @Test func validRequest_isParsedOnce() throws {
        let request = try ChatRequest(bytes: Array(#"{"model":"m","messages":[{"role":"user","content":"hello"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":5}"#.utf8))
        #expect(request.model == "m" && request.stream && request.clientWantsStreamUsage && request.maxTokens == 5)
        #expect(request.promptCharacters == 5)
    }

    @Test(arguments: [
        (#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
        (#"{"model":3,"messages":[{"role":"user","content":"x"}]}"#, "model"),
        (#"{"model":"m"}"#, "messages"),
        (#"{"model":"m","messages":[]}"#, "messages"),
        (#"{"model":"m","messages":["hi"]}"#, "messages[0]"),
        (#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#, "messages[0].role"),
        (#"{"model":"m","messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "stream"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, "max_tokens"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, "temperature"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#, "stop"),
    ])
    func invalidRequest_is400NamingTheParameter(_ body: String, _ param: String) {
        do {
            _ = try ChatRequest(bytes: Array(body.utf8))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == 400)
            #expect(error.param == param)
        }
    }

    @Test func malformedJSON_is400WithPosition() {
        do {
            _ = try ChatRequest(bytes: Array("{\"model\": ".utf8))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == 400 && error.code == "invalid_json" && error.message.contains("line 1"))
        }
    }
}

@Suite struct AnthropicTranslationTests {
    func request(_ json: String) throws -> ChatRequest { try ChatRequest(bytes: Array(json.utf8)) }

    @Test func request_movesSystemOut_setsMaxTokens_andMapsToolsAndResults() throws {
        let chat = try request("""
            {"model":"claude","messages":[
              {"role":"system","content":"be brief"},
              {"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\\"q\\":\\"x\\"}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"found"}
            ],"tools":[{"type":"function","function":{"name":"lookup","description":"d","parameters":{"type":"object"}}}],
            "tool_choice":"required","stop":"END","temperature":1.5}
            """)
        let body = JSON.object(try AnthropicAdapter.translateRequest(chat, model: "claude-sonnet-4-5", defaultMaxTokens: 777))
        #expect(body["system"]?.stringValue == "be brief")
        #expect(body["max_tokens"]?.intValue == 777)
        #expect(body["temperature"]?.doubleValue == 1)
        #expect(body["stop_sequences"]?[0]?.stringValue == "END")
        let messages = try #require(body["messages"]?.arrayValue)
        #expect(messages.map { $0["role"]?.stringValue } == ["user", "assistant", "user"])
        #expect(messages[0]["content"]?[1]?["source"]?["media_type"]?.stringValue == "image/png")
        #expect(messages[0]["content"]?[1]?["source"]?["data"]?.stringValue == "QUJD")
        #expect(messages[1]["content"]?[0]?["type"]?.stringValue == "tool_use")
        #expect(messages[1]["content"]?[0]?["input"]?["q"]?.stringValue == "x")
        #expect(messages[2]["content"]?[0]?["tool_use_id"]?.stringValue == "call_1")
        #expect(body["tools"]?[0]?["input_schema"]?["type"]?.stringValue == "object")
        #expect(body["tool_choice"]?["type"]?.stringValue == "any")
    }

    @Test func response_becomesAnOpenAICompletion() throws {
        let bytes = Array(#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t1","name":"f","input":{"a":1}}],"stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":4,"cache_read_input_tokens":2}}"#.utf8)
        let completed = try AnthropicAdapter.translateResponse(bytes, providerName: "anthropic")
        let json = try JSONParser.parse(completed.body)
        #expect(json["object"]?.stringValue == "chat.completion")
        #expect(json["choices"]?[0]?["message"]?["content"]?.stringValue == "Hi")
        #expect(json["choices"]?[0]?["message"]?["tool_calls"]?[0]?["function"]?["arguments"]?.stringValue == #"{"a":1}"#)
        #expect(json["choices"]?[0]?["finish_reason"]?.stringValue == "tool_calls")
        #expect(completed.usage == Usage(promptTokens: 12, completionTokens: 4))
    }

    @Test func streamEvents_becomeDeltasFinishAndUsage() throws {
        var translator = AnthropicStreamTranslator()
        func feed(_ type: String, _ json: String) throws -> [StreamPiece] {
            try translator.translate(SSEEvent(event: type, data: Array(json.utf8)))
        }
        let start = try feed("message_start", #"{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}"#)
        guard case .usage(7, _)? = start.first else { Issue.record("no usage: \(start)"); return }
        let delta = try feed("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#)
        guard case .delta(let object)? = delta.first else { Issue.record("no delta"); return }
        #expect(object["content"]?.stringValue == "Hel")
        let end = try feed("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":9}}"#)
        #expect(end.count == 2)
        guard case .finish("length") = end[1] else { Issue.record("finish: \(end)"); return }
        #expect(throws: ProviderFailure.self) { try feed("error", #"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#) }
    }
}

@Suite struct GeminiAndCloudflareTranslationTests {
    @Test func gemini_request_usesContentsSystemInstructionAndGenerationConfig() throws {
        let chat = try ChatRequest(bytes: Array(#"{"model":"g","messages":[{"role":"system","content":"sys"},{"role":"user","content":"q"},{"role":"assistant","content":"a"},{"role":"user","content":"q2"}],"max_tokens":50,"temperature":0.2,"stop":["x"]}"#.utf8))
        let body = JSON.object(GeminiAdapter.translateRequest(chat))
        #expect(body["systemInstruction"]?["parts"]?[0]?["text"]?.stringValue == "sys")
        #expect(body["contents"]?.arrayValue?.map { $0["role"]?.stringValue } == ["user", "model", "user"])
        #expect(body["generationConfig"]?["maxOutputTokens"]?.intValue == 50)
        #expect(body["generationConfig"]?["stopSequences"]?[0]?.stringValue == "x")
    }

    @Test func gemini_response_mapsTextFinishAndUsage() throws {
        let bytes = Array(#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello"},{"text":" there"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}"#.utf8)
        let completed = try GeminiAdapter.translateResponse(bytes, model: "gemini", providerName: "g")
        let json = try JSONParser.parse(completed.body)
        #expect(json["choices"]?[0]?["message"]?["content"]?.stringValue == "Hello there")
        #expect(json["choices"]?[0]?["finish_reason"]?.stringValue == "length")
        #expect(completed.usage == Usage(promptTokens: 3, completionTokens: 2))
    }

    @Test func gemini_blockedPrompt_isTheClientsProblem() {
        let bytes = Array(#"{"promptFeedback":{"blockReason":"SAFETY"}}"#.utf8)
        #expect {
            try GeminiAdapter.translateResponse(bytes, model: "gemini", providerName: "g")
        } throws: { error in
            (error as? ProviderFailure)?.kind == .rejected(400)
        }
    }

    @Test func cloudflare_unwrapsTheEnvelope_andReportsFailure() throws {
        let chat = try ChatRequest(bytes: Array(#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#.utf8))
        let ok = try CloudflareAdapter.translateResponse(Array(#"{"result":{"response":"yo","usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}},"success":true,"errors":[]}"#.utf8), request: chat, model: "@cf/x", providerName: "cf")
        #expect(try JSONParser.parse(ok.body)["choices"]?[0]?["message"]?["content"]?.stringValue == "yo")
        #expect(ok.usage == Usage(promptTokens: 2, completionTokens: 1))
        #expect(throws: ProviderFailure.self) {
            try CloudflareAdapter.translateResponse(Array(#"{"result":null,"success":false,"errors":[{"code":7003,"message":"bad"}]}"#.utf8), request: chat, model: "@cf/x", providerName: "cf")
        }
    }

    @Test func cloudflare_urls_forDirectAccountAndAIGateway() {
        let client = CurlHTTPTestSupport.sharedClient
        let direct = CloudflareAdapter(name: "cf", baseURL: "https://api.cloudflare.com/client/v4", accountID: "acc", apiToken: "t", client: client)
        #expect(direct.runURL == "https://api.cloudflare.com/client/v4/accounts/acc/ai/run")
        let gateway = CloudflareAdapter(name: "cf", baseURL: "https://gateway.ai.cloudflare.com/v1/acc/gw/workers-ai", accountID: "acc", apiToken: "t", client: client)
        #expect(gateway.runURL == "https://gateway.ai.cloudflare.com/v1/acc/gw/workers-ai")
        #expect(gateway.openAIBase == "https://gateway.ai.cloudflare.com/v1/acc/gw/workers-ai/v1")
    }
}

/// `nextIfReady` (what the gateway uses to write events that arrived together in one go) gives the same
/// items, in the same order, as `next()` alone, with the stream read both ways mixed as the gateway does.
@Suite(.timeLimit(.minutes(1))) struct StreamPollTests {
    let client = CurlClient()

    func items(_ stream: any ChatStream, mixed: Bool) async throws -> (items: [StreamItem], polled: Int) {
        var items: [StreamItem] = []
        var polled = 0
        while let item = try await stream.next() {
            items.append(item)
            guard mixed else { continue }
            // Drain what is already here without waiting, as pumpStream does after each item.
            polling: while true {
                switch try stream.nextIfReady() {
                case .item(let more): items.append(more); polled += 1
                case .end: return (items, polled)
                case .notReady: break polling
                }
            }
        }
        return (items, polled)
    }

    static func comparable(_ item: StreamItem) -> String {
        let (kind, bytes): (String, [UInt8]) = switch item {
        case .chunk(let bytes): ("chunk", bytes)
        case .final(let bytes): ("final", bytes)
        }
        guard case .object(var object)? = try? JSONParser.parse(bytes) else { return kind + " (not JSON)" }
        object["id"] = nil
        object["created"] = nil
        return kind + " " + JSON.object(object).text
    }

    @Test func pollingAndWaiting_giveTheSameItems() async throws {
        try await withMocks([.init(name: "m")]) { mocks in
            let base = mocks[0].baseURL
            let adapters: [(any ProviderAdapter, String)] = [
                (OpenAIAdapter(name: "m", baseURL: base + "/v1", apiKey: nil, client: client), "m"),
                (AnthropicAdapter(name: "a", baseURL: base + "/v1", apiKey: "k", client: client), "claude-x"),
                (GeminiAdapter(name: "g", baseURL: base + "/v1beta", apiKey: "k", client: client), "gemini-x"),
                (CloudflareAdapter(name: "c", baseURL: base + "/client/v4", accountID: "acct1", apiToken: "t", client: client), "@cf/meta/llama-3.1-8b-instruct"),
            ]
            let words = (1...400).map { "w\($0)" }.joined(separator: " ")
            for (adapter, upstream) in adapters {
            for usage in [false, true] {
                let extra: JSONObject = usage ? ["stream_options": ["include_usage": true]] : [:]
                let request = try ChatRequest(bytes: chatBody("m", words, stream: true, extra: extra).bytes)
                var results: [[StreamItem]] = []
                var polled = 0
                for mixed in [false, true] {
                    guard case .stream(let stream) = try await adapter.chat(ChatCall(request: request, upstreamModel: upstream, requestID: "r")) else {
                        Issue.record("expected a stream"); return
                    }
                    let read = try await items(stream, mixed: mixed)
                    results.append(read.items)
                    polled += read.polled
                }
                #expect(results[0].count > 400, "\(adapter.name): one chunk per word and more")
                #expect(polled > 0, "\(adapter.name): some items were already there when asked for without waiting")
                // Translated streams make up an id and a timestamp per stream: compare what remains.
                let (waited, mixed) = (results[0].map(Self.comparable), results[1].map(Self.comparable))
                let differ = zip(waited, mixed).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                #expect(waited.count == mixed.count && differ == nil,
                        "\(adapter.name), include_usage \(usage): \(waited.count) vs \(mixed.count) items, first difference at \(differ.map(String.init) ?? "-")")
                guard case .final? = results[1].last else { Issue.record("\(adapter.name): the last item is the final chunk"); return }
            }
            }
        }
    }
}

/// A stream's events are read for their error, usage and choices only, without building them; the rest is checked.
@Suite struct StreamEventTests {
    static let chunks = [
        #" {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk","created":1,"model":"a-model-with-a-long-name","system_fingerprint":"fp_0123456789","choices":[{"index":0,"delta":{"content":"hé"},"finish_reason":null}],"usage":null}"#,
        #"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
        #"{"choices":[{"delta":{"content":"a\n\"b\u00e9\ud83d\ude00"},"finish_reason":null},{"delta":{"content":"xyz"},"finish_reason":"stop"}]}"#,
        #"{"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
        #"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#,
        #"{"error":{"message":"overloaded","type":"server_error"},"id":"x"}"#,
        #"{"error":null,"choices":[{"delta":{"content":null},"finish_reason":null}]}"#,
        #"{"choices":"not a list","usage":[1]}"#,
        #"{"choices":[1,"two",null,{"delta":"flat","finish_reason":0}]}"#,
        #"{"choices":[{"delta":{"content":"old"}}],"choices":[{"delta":{"content":"newer"},"finish_reason":"stop","finish_reason":null}]}"#,
        #"{"choices":[{"delta":{"content":"first","content":7}}]}"#,
        #"{}"#,
        #"[1,2]"#,
        #""text""#,
        #"{"ch\u006fices":[{"delta":{"content":"escaped name"},"finish_reason":"stop"}]}"#,
    ]

    @Test func theScan_readsWhatAParseReads() throws {
        for text in Self.chunks {
            let bytes = Array(text.utf8)
            let scanned = try OpenAIStream.facts(of: bytes)
            let parsed = OpenAIStream.facts(of: try JSONParser.parse(bytes))
            #expect(scanned == parsed, "\(text)")
        }
        let mixed = try OpenAIStream.facts(of: Array(Self.chunks[2].utf8))
        #expect(mixed.contentBytes == "a\n\"bé😀".utf8.count + 3 && mixed.finishes && mixed.choiceCount == 2)
        let duplicate = try OpenAIStream.facts(of: Array(Self.chunks[9].utf8))
        #expect(duplicate.contentBytes == 5 && !duplicate.finishes, "the last of a repeated member counts")
        let error = try OpenAIStream.facts(of: Array(Self.chunks[5].utf8))
        #expect(error.error?["message"]?.stringValue == "overloaded")
    }

    @Test func theScan_summarisesObjectsWithPlainNames_only() throws {
        let text = Array(Self.chunks[3].utf8)
        let summary = try #require(try JSONParser.scanStreamChunk(text))
        #expect(summary.usage.map { String(decoding: text[$0], as: UTF8.self) } == #"{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}"#)
        #expect(summary.finishes && summary.choiceCount == 1 && summary.error == nil)
        #expect(try JSONParser.scanStreamChunk(Array("[1,2]".utf8)) == nil, "not an object")
        #expect(try JSONParser.scanStreamChunk(Array(Self.chunks.last!.utf8)) == nil, "a name with escapes")
    }

    @Test func malformedAnywhere_isRefused() {
        let bad = [#"{"id":"x","choices":[}"#, #"{"model":"\x","choices":[]}"#, #"{"choices":[]"#, #"{"id":01}"#,
                   #"{"choices":[{"delta":{"content":"\ud800"}}]}"#, #"{"choices":[{"delta":{"content":"a"}}]} x"#,
                   "{\"choices\":[{\"delta\":{\"content\":\"\u{01}\"}}]}", #"{"usage":{"a":}}"#, #"{"ch\u006fices":[}"#, "", "   "]
        for text in bad {
            #expect(throws: JSONParseError.self, "\(text)") { try OpenAIStream.facts(of: Array(text.utf8)) }
        }
        var bytes = Array(#"{"choices":[{"delta":{"content":"ab"}}]}"#.utf8)
        bytes[bytes.firstIndex(of: UInt8(ascii: "b"))!] = 0xFF
        #expect(throws: JSONParseError.self, "not UTF-8") { try OpenAIStream.facts(of: bytes) }
        let deep = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(throws: JSONParseError.self, "too deep") { try OpenAIStream.facts(of: Array("{\"choices\":[\(deep)]}".utf8)) }
    }
}
