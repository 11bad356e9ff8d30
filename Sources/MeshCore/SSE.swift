/// One server-sent event (WHATWG HTML §9.2): its `event` name if any and its `data` lines joined by "\n".
public struct SSEEvent: Sendable, Equatable {
    public var event: String?
    public var data: [UInt8]
    public var id: String?

    public init(event: String? = nil, data: [UInt8], id: String? = nil) {
        self.event = event
        self.data = data
        self.id = id
    }

    public var dataString: String { String(decoding: data, as: UTF8.self) }

    /// `true` for OpenAI's end marker `data: [DONE]`.
    public var isDone: Bool { data == SSEEvent.doneMarker }

    static let doneMarker: [UInt8] = Array("[DONE]".utf8)

    /// The event as wire bytes: `event:` when named, one `data:` line per line of data, a blank line.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        SSEEvent.encode(event: event, data: data, into: &out)
        return out
    }

    public static func encode(event: String? = nil, data: [UInt8], into out: inout [UInt8]) {
        if let event {
            out.append(contentsOf: "event: ".utf8)
            out.append(contentsOf: event.utf8)
            out.append(0x0A)
        }
        var lineStart = 0
        for i in 0..<data.count where data[i] == 0x0A {
            out.append(contentsOf: "data: ".utf8)
            out.append(contentsOf: data[lineStart..<i])
            out.append(0x0A)
            lineStart = i + 1
        }
        out.append(contentsOf: "data: ".utf8)
        out.append(contentsOf: data[lineStart...])
        out.append(contentsOf: [0x0A, 0x0A])
    }
}

/// An incremental SSE parser: feed it bytes as they arrive, in chunks cut anywhere, and it returns the
/// events completed so far. Accepts LF, CRLF and CR line ends; ignores comments; bounds event size.
public struct SSEParser: Sendable {
    public struct TooLarge: Error, Sendable, CustomStringConvertible {
        public var limit: Int
        public var description: String { "a server-sent event exceeded \(limit) bytes" }
    }

    public let maxEventBytes: Int
    private var line: [UInt8] = []
    private var data: [UInt8] = []
    private var hasData = false
    private var eventName: String?
    private var eventID: String?
    private var lastWasCR = false

    public init(maxEventBytes: Int = 8 << 20) {
        self.maxEventBytes = maxEventBytes
    }

    public mutating func feed<Bytes: Sequence<UInt8>>(_ bytes: Bytes) throws(TooLarge) -> [SSEEvent] {
        var failure: TooLarge?
        let events = bytes.withContiguousStorageIfAvailable { buffer -> [SSEEvent] in
            do throws(TooLarge) { return try feed(buffer) } catch { failure = error; return [] }
        } ?? [UInt8](bytes).withUnsafeBufferPointer { buffer -> [SSEEvent] in
            do throws(TooLarge) { return try feed(buffer) } catch { failure = error; return [] }
        }
        if let failure { throw failure }
        return events
    }

    /// The bytes between line ends are appended in one piece: a generic byte-by-byte loop cost one heap
    /// allocation per byte of the stream when called from another module (it was not specialized).
    public mutating func feed(_ bytes: UnsafeBufferPointer<UInt8>) throws(TooLarge) -> [SSEEvent] {
        var events: [SSEEvent] = []
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            if byte == 0x0A || byte == 0x0D {
                index += 1
                if byte == 0x0A && lastWasCR {
                    lastWasCR = false
                    continue
                }
                lastWasCR = byte == 0x0D
                if let event = finishLine() { events.append(event) }
                continue
            }
            lastWasCR = false
            var end = index + 1
            while end < count, bytes[end] != 0x0A, bytes[end] != 0x0D { end += 1 }
            if line.count + data.count + (end - index) > maxEventBytes { throw TooLarge(limit: maxEventBytes) }
            line.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[index..<end]))
            index = end
        }
        return events
    }

    /// Ends the stream: a final event not followed by a blank line is still delivered.
    public mutating func finish() -> SSEEvent? {
        if !line.isEmpty { _ = finishLine() }
        return dispatch()
    }

    private mutating func finishLine() -> SSEEvent? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty { return dispatch() }
        if line[0] == UInt8(ascii: ":") { return nil }
        var field = line[...]
        var value: ArraySlice<UInt8> = []
        if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            field = line[..<colon]
            value = line[(colon + 1)...]
            if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        }
        switch String(decoding: field, as: UTF8.self) {
        case "data":
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
        case "event":
            eventName = String(decoding: value, as: UTF8.self)
        case "id":
            eventID = String(decoding: value, as: UTF8.self)
        default:
            break
        }
        return nil
    }

    private mutating func dispatch() -> SSEEvent? {
        defer {
            data.removeAll(keepingCapacity: true)
            hasData = false
            eventName = nil
        }
        guard hasData else { return nil }
        return SSEEvent(event: eventName, data: data, id: eventID)
    }
}
