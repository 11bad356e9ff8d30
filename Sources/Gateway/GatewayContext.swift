import HTTPTypes
import Hummingbird
import MeshCore
import NIOCore

/// Per-request context: the caller's address and, once checked, the name of its API key.
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var remoteAddress: String?
    public var apiKeyName: String?
    /// The authenticated key's limits and models (mesh-wide keys carry them).
    public var clientKey: ClientKey?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.remoteAddress = source.channel.remoteAddress?.ipAddress
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
        var buffer = ByteBuffer()
        buffer.writeBytes(bytes)
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: buffer))
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
