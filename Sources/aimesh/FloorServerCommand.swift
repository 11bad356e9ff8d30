import ArgumentParser
import CurlHTTP
import Gateway
import Hummingbird
import HummingbirdCore
import Logging
import MeshCore
import NIOCore
import NodeConfig

/// The least a Hummingbird + libcurl gateway can cost, for `scripts/bench-floor`: the same server stack,
/// executor set-up and HTTP client as a node, with none of the gateway's work. Three endpoints answer
/// `POST …/v1/chat/completions`: `/canned` answers at once without reading the body, `/body` reads the body
/// first, `/forward` reads it and sends it unchanged to `--upstream` with the node's `CurlClient`, answering
/// with the upstream's body. A node's overhead above `/forward`'s is what routing, accounting and the
/// OpenAI-compatible surface cost; `/forward`'s own overhead over a direct call is the floor of the stack.
///
/// `--stack` picks the HTTP server under the same router: `node` is the node's (`LeanHTTP1Channel`),
/// `hummingbird` is Hummingbird's own `HTTP1Channel` (what nodes ran before), `nio` answers from a bare NIO
/// channel handler with no router at all (`RawFloorServer`), the floor below every Hummingbird choice.
struct FloorServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "floor-server",
        abstract: "Run the bare server stack a node is built on (Hummingbird + libcurl) with no gateway logic, to measure the floor (benchmarks).",
        shouldDisplay: false
    )

    enum Stack: String, ExpressibleByArgument, CaseIterable {
        case node, hummingbird, nio
    }

    @Option(name: .long, help: "Address to listen on, HOST:PORT.")
    var listen: String = "127.0.0.1:0"

    @Option(name: .long, help: "Chat completions URL that /forward sends to.")
    var upstream: String

    @Option(name: .long, help: "HTTP server: node (the node's LeanHTTP1Channel), hummingbird (its HTTP1Channel) or nio (a bare NIO handler, no router).")
    var stack: Stack = .node

    func run() async throws {
        guard let address = HostPort(parsing: listen) else { throw ValidationError("--listen must be HOST:PORT") }
        // A node's client: its curl thread scheduled as `server.io_scheduling`'s default has it.
        var clientConfiguration = CurlClient.Configuration()
        clientConfiguration.batchScheduling = ServerSection().batchIOScheduling
        let client = CurlClient(configuration: clientConfiguration)
        let upstream = self.upstream
        let canned = ByteBuffer(string: #"{"id":"floor","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#)
        if stack == .nio {
            try await RawFloorServer.run(host: address.host, port: address.port, client: client, upstream: upstream, canned: canned)
            return
        }
        let json: HTTPFields = [.contentType: "application/json"]
        let router = Router(context: GatewayContext.self)
        router.post("/canned/v1/chat/completions") { _, _ in
            Response(status: .ok, headers: json, body: ResponseBody(byteBuffer: canned))
        }
        router.post("/body/v1/chat/completions") { request, _ in
            var request = request
            _ = try await request.collectBody(upTo: 1 << 20)
            return Response(status: .ok, headers: json, body: ResponseBody(byteBuffer: canned))
        }
        router.post("/forward/v1/chat/completions") { request, _ in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let (head, answer) = try await client.send(.post(upstream, json: Array(body.readableBytesView)))
            return Response(status: .init(code: head.status), headers: json, body: ResponseBody(byteBuffer: ByteBuffer(bytes: answer)))
        }
        var logger = Logger(label: "floor")
        logger.logLevel = .warning
        // The node's responder type, with no exact paths: every request walks the router.
        let responder = ExactPathResponder(router: router, exact: [])
        let server: HTTPServerBuilder = stack == .hummingbird ? .http1()
            : HTTPServerBuilder { _ in LeanHTTP1Channel(responder: responder, configuration: .init(maxBodyBytes: 1 << 20, serverName: "floor")) }
        let app = Application(responder: responder, server: server, configuration: .init(address: .hostname(address.host, port: address.port), serverName: "floor"), logger: logger)
        print("floor server (\(stack.rawValue)) on \(address)")
        try await app.runService()
    }
}
