import HTTPTypes
import Hummingbird
import MeshCore
import NIOCore

/// Per-request context: the caller's address and, once checked, the name of its API key.
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection, asked for the caller's address only when a limit by IP needs it (formatting the
    /// address for every request cost an allocation and a lock in NIO).
    let channel: any Channel
    public var remoteAddress: String? { channel.remoteAddress?.ipAddress }
    public var apiKeyName: String?
    /// The authenticated key's limits and models (mesh-wide keys carry them).
    public var clientKey: ClientKey?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }

    public var maxUploadSize: Int { 10 * 1024 * 1024 }
}

/// Thrown through Hummingbird so that middleware can stop a request with an OpenAI-shaped error.
struct APIErrorResponse: HTTPResponseError {
    let error: APIError
    var status: HTTPResponse.Status { HTTPResponse.Status(code: error.status) }
    func response(from request: Request, context: some RequestContext) throws -> Response { error.response() }
}

extension APIError {
    /// The error as OpenAI-shaped JSON with its status.
    public func response(extraHeaders: HTTPFields = [:]) -> Response {
        var headers = extraHeaders
        headers[.contentType] = "application/json"
        if let retry = details["retry_after"]?.doubleValue {
            headers[.retryAfter] = String(max(1, Int(retry.rounded(.up))))
        }
        var buffer = ByteBuffer()
        buffer.writeBytes(json.bytes)
        return Response(status: HTTPResponse.Status(code: status), headers: headers, body: ResponseBody(byteBuffer: buffer))
    }
}

/// JSON responses from `JSON` values and raw bytes.
enum JSONResponse {
    static func make(_ value: JSON, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        make(bytes: value.bytes, status: status, headers: headers)
    }

    static func make(bytes: [UInt8], status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        return make(bytes: bytes, status: status, completeHeaders: headers)
    }

    /// `headers` already carry the content type (the served answers' do): used as they are, with the
    /// length appended (Hummingbird would otherwise search the fields for it and set it by name).
    static func make(bytes: [UInt8], status: HTTPResponse.Status = .ok, completeHeaders headers: HTTPFields) -> Response {
        var headers = headers
        headers.append(HTTPField(name: .contentLength, value: String(bytes.count)))
        // Sized at once (an empty buffer grew to a power of two, copying what it had).
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

extension HTTPFields {
    /// The first field named `name`. `HTTPFields`' own subscript joins every such field through a lazy
    /// generic sequence, which costs half a microsecond even for one field; the request path asks for
    /// single-valued fields only.
    func first(_ name: HTTPField.Name) -> String? {
        for field in self where field.name == name { return field.value }
        return nil
    }
}

extension HTTPField.Name {
    static let aiproxyRequestID = HTTPField.Name("x-aiproxy-request-id")!
    static let aiproxyNode = HTTPField.Name("x-aiproxy-node")!
    static let aiproxyProvider = HTTPField.Name("x-aiproxy-provider")!
    static let aiproxyRoute = HTTPField.Name("x-aiproxy-route")!
    static let aiproxyAttempts = HTTPField.Name("x-aiproxy-attempts")!
    static let aiproxyStrategy = HTTPField.Name("x-aiproxy-strategy")!
    static let aiproxyCost = HTTPField.Name("x-aiproxy-cost")!
    static let aiproxyLatency = HTTPField.Name("x-aiproxy-latency-ms")!
    static let aiproxyMaxCost = HTTPField.Name("x-aiproxy-max-cost")!
    static let aiproxyPinnedProvider = HTTPField.Name("x-aiproxy-provider")!
    static let aiproxyLocalOnly = HTTPField.Name("x-aiproxy-local-only")!
    static let aiproxyMetadata = HTTPField.Name("x-aiproxy-metadata")!
    static let aiproxyTimeout = HTTPField.Name("x-aiproxy-timeout")!
    static let aiproxyHop = HTTPField.Name("x-aiproxy-hop")!
    static let aiproxyCacheTTL = HTTPField.Name("x-aiproxy-cache-ttl")!
    static let aiproxyCache = HTTPField.Name("x-aiproxy-cache")!
    static let aiproxyAdmin = HTTPField.Name("x-aiproxy-admin")!
    static let accelBuffering = HTTPField.Name("x-accel-buffering")!
}
