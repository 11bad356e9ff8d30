import Synchronization

/// An outbound HTTP request.
public struct OutboundRequest: Sendable {
    public var method: String
    public var url: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]?
    public var timeouts: Timeouts
    /// Ends the transfer from outside (`AbortSignal.fire`) with `TransferError.Kind.aborted`.
    public var abort: AbortSignal?

    public init(method: String = "GET", url: String, headers: [(name: String, value: String)] = [], body: [UInt8]? = nil, timeouts: Timeouts = Timeouts(),
                abort: AbortSignal? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeouts = timeouts
        self.abort = abort
    }

    public static func post(_ url: String, json body: [UInt8], headers: [(name: String, value: String)] = [], timeouts: Timeouts = Timeouts()) -> OutboundRequest {
        OutboundRequest(method: "POST", url: url, headers: [("Content-Type", "application/json")] + headers, body: body, timeouts: timeouts)
    }
}

/// Lets someone other than the waiting task end a transfer, with a reason (the mesh, when the peer a
/// request was forwarded to is declared dead): the transfer fails with `.aborted` and that reason. Firing
/// before the transfer starts aborts it as soon as it does; firing twice does nothing more.
public final class AbortSignal: Sendable {
    private let state = Mutex<(reason: String?, actions: [@Sendable (String) -> Void])>((nil, []))

    public init() {}

    public var reason: String? { state.withLock { $0.reason } }

    public func fire(_ reason: String) {
        let actions = state.withLock { state -> [@Sendable (String) -> Void] in
            guard state.reason == nil else { return [] }
            state.reason = reason
            defer { state.actions = [] }
            return state.actions
        }
        for action in actions { action(reason) }
    }

    /// Runs `action` when the signal fires (at once if it has).
    func onFire(_ action: @escaping @Sendable (String) -> Void) {
        let fired = state.withLock { state -> String? in
            if let reason = state.reason { return reason }
            state.actions.append(action)
            return nil
        }
        if let fired { action(fired) }
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
        headers.first { $0.name.equalsIgnoringASCIICase(name) }?.value
    }

    /// The headers whose names start with `prefix` (case-insensitive), in order.
    public func headers(withPrefix prefix: String) -> [(name: String, value: String)] {
        headers.filter { $0.name.hasPrefixIgnoringASCIICase(prefix) }
    }
}

extension StringProtocol {
    /// Equal to `other` when ASCII letters are compared without case (header names), without building a
    /// lowercased copy of either: a response's dozen header names were each copied to compare them.
    /// Inlinable, so a caller in another module gets a version specialized for its string types: the
    /// generic one walked both strings through protocol witnesses (10 µs per request on the mesh path).
    @inlinable
    public func equalsIgnoringASCIICase(_ other: some StringProtocol) -> Bool {
        utf8.count == other.utf8.count && hasPrefixIgnoringASCIICase(other)
    }

    /// Starts with `prefix` when ASCII letters are compared without case.
    @inlinable
    public func hasPrefixIgnoringASCIICase(_ prefix: some StringProtocol) -> Bool {
        var mine = utf8.makeIterator()
        for theirs in prefix.utf8 {
            guard let byte = mine.next() else { return false }
            if byte != theirs && asciiLowercased(byte) != asciiLowercased(theirs) { return false }
        }
        return true
    }
}

@inlinable @inline(__always)
func asciiLowercased(_ byte: UInt8) -> UInt8 {
    byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
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
        /// Ended by the request's `AbortSignal`; the message is its reason.
        case aborted
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
