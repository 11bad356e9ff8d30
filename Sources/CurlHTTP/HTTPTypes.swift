/// An outbound HTTP request.
public struct OutboundRequest: Sendable {
    public var method: String
    public var url: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]?
    public var timeouts: Timeouts

    public init(method: String = "GET", url: String, headers: [(name: String, value: String)] = [], body: [UInt8]? = nil, timeouts: Timeouts = Timeouts()) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeouts = timeouts
    }

    public static func post(_ url: String, json body: [UInt8], headers: [(name: String, value: String)] = [], timeouts: Timeouts = Timeouts()) -> OutboundRequest {
        OutboundRequest(method: "POST", url: url, headers: [("Content-Type", "application/json")] + headers, body: body, timeouts: timeouts)
    }
}

/// The limits of one transfer. `nil` means no limit of that kind.
public struct Timeouts: Sendable, Equatable {
    /// Time to establish the TCP (and TLS) connection.
    public var connect: Duration?
    /// Time until the response's status line arrives.
    public var firstByte: Duration?
    /// Longest silence between two pieces of the body (a stalled stream).
    public var idle: Duration?
    /// Time for the whole transfer, body included.
    public var total: Duration?

    public init(connect: Duration? = .seconds(10), firstByte: Duration? = .seconds(60), idle: Duration? = .seconds(120), total: Duration? = nil) {
        self.connect = connect
        self.firstByte = firstByte
        self.idle = idle
        self.total = total
    }
}

/// Status line and headers of a response.
public struct ResponseHead: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]

    public init(status: Int, headers: [(name: String, value: String)] = []) {
        self.status = status
        self.headers = headers
    }

    /// The first header with this name (case-insensitive).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name.lowercased() == lower }?.value
    }
}

/// Why a transfer failed. `phase` says how far it got, which decides whether a retry is safe.
public struct TransferError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case couldNotResolve
        case couldNotConnect
        case connectTimeout
        case firstByteTimeout
        case idleTimeout
        case totalTimeout
        case connectionReset
        case tooLarge(limit: Int)
        case cancelled
        case invalidRequest
        case shutdown
        case other(code: Int)
    }

    public enum Phase: Sendable, Equatable {
        /// No byte of a response arrived.
        case beforeResponse
        /// The head arrived; the body was cut.
        case duringBody
    }

    public var kind: Kind
    public var phase: Phase
    /// A readable reason, without URLs' credentials or header values.
    public var message: String

    public init(kind: Kind, phase: Phase, message: String) {
        self.kind = kind
        self.phase = phase
        self.message = message
    }

    public var description: String { message }

    public var isTimeout: Bool {
        switch kind {
        case .connectTimeout, .firstByteTimeout, .idleTimeout, .totalTimeout: true
        default: false
        }
    }
}
