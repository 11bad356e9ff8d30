import HTTPTypes
import NIOCore

/// How an answer's body is delimited on the wire (RFC 9112 §6).
enum ResponseFraming: Equatable {
    /// No body bytes go out: the answer to a HEAD request, or a 1xx, 204 or 304 status.
    case noBody
    case contentLength
    case chunked
    /// An HTTP/1.0 client and no length: the body ends when the connection closes.
    case untilClose
}

/// Writes HTTP/1.1 answers straight from HTTPTypes' `HTTPResponse` into bytes: what NIO's
/// `HTTPResponseEncoder` does after NIOHTTPTypesHTTP1 has converted the head to NIO's `HTTPResponseHead`,
/// without the conversion (an array of header pairs built and dropped for every answer) and with the framing
/// rules here, where they can be tested. Field names and values are safe to write as they are: HTTPTypes
/// refuses a name that is not a token and turns CR, LF and NUL in a value into spaces.
enum HTTP1ResponseEncoding {
    /// The body's framing for an answer with this status and fields, to a request with this method and
    /// version. An answer's own `Content-Length` is kept (also for HEAD, which describes the GET answer);
    /// without one, HTTP/1.1 gets chunked and HTTP/1.0 gets the body up to the close.
    static func framing(status: HTTPResponse.Status, fields: HTTPFields, headRequest: Bool, http11: Bool) -> ResponseFraming {
        if statusForbidsBody(status) || headRequest { return .noBody }
        if fields.contains(.contentLength) { return .contentLength }
        return http11 ? .chunked : .untilClose
    }

    /// 1xx, 204 and 304 answers have no body and no length (RFC 9110 §6.4.1, §8.6).
    static func statusForbidsBody(_ status: HTTPResponse.Status) -> Bool {
        status.code < 200 || status.code == 204 || status.code == 304
    }

    /// The head: status line, `Date` and `Server`, the answer's fields (less the framing fields this
    /// encoder writes itself, and any `Date`, `Server` or `Connection` of its own), the framing field, and
    /// `Connection: close` or `keep-alive` when the client needs telling.
    ///
    /// Its length is summed first and its bytes copied in one write: written piece by piece (four pieces a
    /// field) the head cost about 47 `ByteBuffer` writes and 13,500 instructions an answer (callgrind), a
    /// capacity check and an exclusivity check each.
    static func writeHead(_ response: HTTPResponse, framing: ResponseFraming, connection: ConnectionHeader,
                          date: String, server: String?, into buffer: inout ByteBuffer) {
        // A HEAD answer keeps the length of what GET would send; a status without a body has none.
        let keepsLength = framing == .contentLength || (framing == .noBody && !statusForbidsBody(response.status))
        let fields = response.headerFields
        let reason = response.status.reasonPhrase
        let chunked: StaticString = framing == .chunked ? "\r\ntransfer-encoding: chunked" : ""
        let connectionLine: StaticString
        switch connection {
        case .none: connectionLine = ""
        case .close: connectionLine = "\r\nconnection: close"
        case .keepAlive: connectionLine = "\r\nconnection: keep-alive"
        }
        // "HTTP/1.1 200 " and "\r\ndate: ", then the lines that vary, then the blank line.
        var length = 13 + reason.utf8.count + 8 + date.utf8.count + chunked.utf8CodeUnitCount + connectionLine.utf8CodeUnitCount + 4
        if let server { length += 10 + server.utf8.count }
        for field in fields where !skipped(field.name, keepsLength: keepsLength) {
            length += 4 + field.name.rawName.utf8.count + field.value.utf8.count
        }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
            var out = HeadBytes(base: raw.baseAddress!)
            out.put("HTTP/1.1 ")
            // HTTPTypes keeps codes within 0...999: three digits.
            let code = response.status.code
            out.put(byte: UInt8(ascii: "0") + UInt8(code / 100))
            out.put(byte: UInt8(ascii: "0") + UInt8(code / 10 % 10))
            out.put(byte: UInt8(ascii: "0") + UInt8(code % 10))
            out.put(byte: UInt8(ascii: " "))
            out.put(reason)
            out.put("\r\ndate: ")
            out.put(date)
            if let server {
                out.put("\r\nserver: ")
                out.put(server)
            }
            for field in fields where !skipped(field.name, keepsLength: keepsLength) {
                out.put("\r\n")
                out.put(field.name.rawName)
                out.put(": ")
                out.put(field.value)
            }
            out.put(chunked)
            out.put(connectionLine)
            out.put("\r\n\r\n")
            precondition(out.offset == length, "the head's length was miscounted")
            return out.offset
        }
    }

    /// Whether the head leaves out an answer's own field: the encoder writes `Date`, `Server`, `Connection`
    /// and the framing fields itself. Names are told apart by length first: most fields are none of these,
    /// and a string comparison for each of them cost more than writing the field.
    private static func skipped(_ name: HTTPField.Name, keepsLength: Bool) -> Bool {
        switch name.canonicalName.utf8.count {
        case 4: return name == .date
        case 6: return name == .server
        case 10: return name == .connection
        case 14: return !keepsLength && name == .contentLength
        case 17: return name == .transferEncoding
        default: return false
        }
    }

    /// Copies a head's pieces into memory the caller has sized for them.
    private struct HeadBytes {
        let base: UnsafeMutableRawPointer
        var offset = 0

        mutating func put(_ text: StaticString) {
            text.withUTF8Buffer { bytes in
                if let start = bytes.baseAddress { (base + offset).copyMemory(from: start, byteCount: bytes.count) }
                offset += bytes.count
            }
        }

        mutating func put(_ text: String) {
            // Native strings (all of these) are contiguous UTF-8: copied in place, without a copy of the string.
            let copied = text.utf8.withContiguousStorageIfAvailable { bytes in
                if let start = bytes.baseAddress { (base + offset).copyMemory(from: start, byteCount: bytes.count) }
                return bytes.count
            }
            if let copied {
                offset += copied
            } else {
                for byte in text.utf8 { put(byte: byte) }
            }
        }

        mutating func put(byte: UInt8) {
            base.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self)
            offset += 1
        }
    }

    enum ConnectionHeader {
        case none, close, keepAlive
    }

    /// One chunk of a chunked body: size in hex, the bytes, CRLF. (An empty chunk would end the body; the
    /// caller writes none.)
    static func writeChunk(_ chunk: ByteBuffer, into buffer: inout ByteBuffer) {
        writeHex(chunk.readableBytes, into: &buffer)
        buffer.writeStaticString("\r\n")
        var chunk = chunk
        buffer.writeBuffer(&chunk)
        buffer.writeStaticString("\r\n")
    }

    /// The last chunk and the trailer fields.
    static func writeLastChunk(trailers: HTTPFields?, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("0\r\n")
        for field in trailers ?? [:] {
            buffer.writeString(field.name.rawName)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
    }

    /// The interim answer to `Expect: 100-continue`.
    static let `continue`: StaticString = "HTTP/1.1 100 Continue\r\n\r\n"

    /// The answer to a request that cannot be parsed; the connection closes after it.
    static let badRequest: StaticString = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"

    static func writeHex(_ value: Int, into buffer: inout ByteBuffer) {
        precondition(value >= 0)
        let hex: StaticString = "0123456789abcdef"
        var shift = 0
        while shift < 60, value >> (shift + 4) != 0 { shift += 4 }
        hex.withUTF8Buffer { hex in
            while shift >= 0 {
                buffer.writeInteger(hex[(value >> shift) & 0xF])
                shift -= 4
            }
        }
    }
}
