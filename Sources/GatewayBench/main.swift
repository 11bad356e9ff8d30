// The gateway's own work per request, without sockets: `scripts/bench-gateway` runs this. Each request goes
// through the node's real Hummingbird router and middleware, body reading, parsing, options, planning, the
// executor, the answer's parse (`OpenAIAdapter.completed`, as for a real upstream), `x_aiproxy`, response
// headers, metrics and the ledger (a real SQLite file, written by its own thread) — everything a node does
// on its event loop except the HTTP codec and the libcurl call, which `aimesh floor-server` measures. The
// upstream is an adapter that answers a fixed OpenAI body at once. One task, sequential requests, so the
// figure is CPU time on the request path; with `ALLOC_COUNT_FILE` and the counter preloaded
// (scripts/lib/alloc-count.c) it also prints heap allocations per request.
import CurlHTTP
import Foundation
import Gateway
import Hummingbird
import Ledger
import Logging
import MeshCore
import NIOCore
import NIOEmbedded
import NodeConfig
import Providers
import Routing

/// Answers every chat call at once with the same OpenAI-style body, parsed as a real answer is.
struct CannedAdapter: ProviderAdapter {
    let name = "fast"
    let answer = Array(#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m-fast","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from fast! You said: benchmark"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":7,"total_tokens":9}}"#.utf8)

    func chat(_ call: ChatCall) async throws -> ChatResult {
        .complete(try OpenAIAdapter.completed(answer, request: call.request, providerName: name))
    }

    func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse {
        throw ProviderFailure(kind: .unsupported, message: "no embeddings")
    }
}

/// The canned route, as the mesh would add one (the catalog's routes come from configured providers).
struct CannedRoutes: RemoteRouteSource {
    let routes: [ExecutableRoute] = [ExecutableRoute(
        candidate: RouteCandidate(id: "provider/fast", kind: .localServer, name: "fast", upstreamModel: "m-fast", price: .free),
        adapter: CannedAdapter(), pathSuffix: ["fast"])]
    func routes(for model: String, visited: [String]) -> [ExecutableRoute] { model == "m-fast" ? routes : [] }
    func remoteModels() -> [RemoteModel] { [] }
    func verifyForward(hop: String, body: [UInt8]) -> Result<ForwardedBy, APIError> { .failure(APIError.badRequest("no mesh")) }
}

final class ByteCount: @unchecked Sendable { var bytes = 0 }

/// Reads the response body as the server would write it.
struct DrainWriter: ResponseBodyWriter {
    let count: ByteCount
    mutating func write(_ buffer: ByteBuffer) async throws { count.bytes += buffer.readableBytes }
    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

typealias AllocCount = @convention(c) () -> UInt
/// The preloaded counter's running total of allocations, when it is there.
let allocations: AllocCount? = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "alloc_count_total") else { return nil }
    return unsafeBitCast(symbol, to: AllocCount.self)
}()

@main
struct GatewayBench {
    static func main() async throws {
        // Off the main actor: every request's awaits then continue on one thread, as on a node's event loop.
        try await Task.detached { try await run() }.value
    }

    static func run() async throws {
        var requests = 50_000, rounds = 5, withLedger = true
        var arguments = CommandLine.arguments.dropFirst().makeIterator()
        while let argument = arguments.next() {
            switch argument {
            case "--requests": requests = Int(arguments.next() ?? "") ?? requests
            case "--rounds": rounds = Int(arguments.next() ?? "") ?? rounds
            case "--no-ledger": withLedger = false
            default: print("usage: gateway-bench [--requests N] [--rounds N] [--no-ledger]"); exit(2)
            }
        }
        let dataDir = NSTemporaryDirectory() + "aimesh-gateway-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let yaml = """
            node: { id: bench, data_dir: "\(dataDir)" }
            server: { listen_addr: "127.0.0.1:0" }
            observability: { logging: { level: warning } }
            """
        let outcome = ConfigLoader.parse(yaml: yaml, file: "bench.yaml", environment: [:])
        guard let configuration = outcome.configuration else { print("bad config: \(outcome.diagnostics)"); exit(1) }
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let client = CurlClient()
        let ledger = withLedger ? try Ledger(path: dataDir + "/ledger.sqlite", logger: logger) : nil
        let gateway = Gateway(configuration: configuration, client: client, ledger: ledger, logger: logger, remote: CannedRoutes())
        let responder = gateway.buildResponder()
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 40000)).get()
        let source = ApplicationRequestContextSource(channel: channel, logger: logger)
        let body = ByteBuffer(string: #"{"model":"m-fast","messages":[{"role":"user","content":"benchmark"}]}"#)
        let head = HTTPRequest(method: .post, scheme: "http", authority: "127.0.0.1", path: "/v1/chat/completions",
                               headerFields: [.contentType: "application/json", .contentLength: String(body.readableBytes)])

        func one() async throws -> Int {
            let request = Request(head: head, body: RequestBody(buffer: body))
            let response = try await responder.respond(to: request, context: GatewayContext(source: source))
            guard response.status == .ok else { print("status \(response.status)"); exit(1) }
            let count = ByteCount()
            try await response.body.write(DrainWriter(count: count))
            return count.bytes
        }

        print("answer: \(try await one()) bytes")
        for _ in 0..<2_000 { _ = try await one() }  // warm
        var perRequest: [Double] = []
        var allocs: [Double] = []
        for round in 1...rounds {
            let before = allocations?() ?? 0
            let start = ContinuousClock.now
            for _ in 0..<requests { _ = try await one() }
            let took = ContinuousClock.now - start
            let after = allocations?() ?? 0
            let micros = Double(took.components.seconds) * 1e6 + Double(took.components.attoseconds) / 1e12
            perRequest.append(micros / Double(requests))
            allocs.append(Double(after - before) / Double(requests))
            print(String(format: "round %d: %.2f µs per request", round, micros / Double(requests))
                  + (allocations == nil ? "" : String(format: ", %.1f allocations per request", Double(after - before) / Double(requests))))
        }
        let sorted = perRequest.sorted()
        print(String(format: "median %.2f µs per request (best %.2f)", sorted[sorted.count / 2], sorted[0])
              + (allocations == nil ? "" : String(format: ", %.1f allocations", allocs.sorted()[allocs.count / 2])))
        ledger?.close()
        client.shutdown()
    }
}
