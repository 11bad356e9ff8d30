import CurlHTTP
import NIOCore
import NIOHTTP1
import NIOPosix

/// `floor-server --stack nio`: the floor server's endpoints answered from a bare NIO channel handler, with
/// no router, no `Request`/`Response` and no HTTPTypes conversion, so what Hummingbird's layers cost in a
/// hop can be measured (`scripts/bench-floor`). For benchmarks only: it answers requests one at a time as
/// they come and does not hold back pipelined ones.
enum RawFloorServer {
    static func run(host: String, port: Int, client: CurlClient, upstream: String, canned: ByteBuffer) async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(Handler(client: client, upstream: upstream, canned: canned))
                }
            }
            .bind(host: host, port: port).get()
        print("raw floor server on \(channel.localAddress!)")
        try await channel.closeFuture.get()
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let client: CurlClient, upstream: String, canned: ByteBuffer
        var head: HTTPRequestHead?
        var body: ByteBuffer?
        init(client: CurlClient, upstream: String, canned: ByteBuffer) { self.client = client; self.upstream = upstream; self.canned = canned }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): head = h; body = nil
            case .body(var b): if body == nil { body = b } else { body!.writeBuffer(&b) }
            case .end:
                guard let head else { return }
                let keepAlive = head.isKeepAlive
                if head.uri.hasPrefix("/forward") {
                    let bytes = Array(body?.readableBytesView ?? ByteBuffer().readableBytesView)
                    let loop = context.eventLoop
                    let bound = NIOLoopBound(context, eventLoop: loop)
                    let client = self.client, upstream = self.upstream
                    Task {
                        let status: Int, answer: [UInt8]
                        do { let (h, a) = try await client.send(.post(upstream, json: bytes)); status = h.status; answer = a }
                        catch { status = 502; answer = Array("upstream failed".utf8) }
                        loop.execute { Handler.respond(bound.value, status: status, body: ByteBuffer(bytes: answer), keepAlive: keepAlive) }
                    }
                } else {
                    Handler.respond(context, status: 200, body: canned, keepAlive: keepAlive)
                }
            }
        }

        static func respond(_ context: ChannelHandlerContext, status: Int, body: ByteBuffer, keepAlive: Bool) {
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.readableBytes))
            if !keepAlive { headers.add(name: "connection", value: "close") }
            let head = HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers)
            context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
