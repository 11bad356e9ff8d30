/// Human spellings of durations and sizes used in configuration files and headers.
public enum Units {
    /// Parses "200ms", "1.5s", "30s", "5m", "2h", "90d", "1m30s", "250us", "100ns". A bare number is seconds.
    public static func parseDuration(_ text: String) -> Duration? {
        let text = text.trimmingWhitespace()
        guard !text.isEmpty else { return nil }
        if let seconds = Double(text) {
            // A bare number is seconds, in any spelling Double reads ("1e3" too): refuse what no Duration
            // holds (about 292 years) instead of trapping on the conversion.
            let millis = (seconds * 1000).rounded()
            guard millis.isFinite, millis >= 0, millis < 9e15 else { return nil }
            return .milliseconds(Int64(millis))
        }
        var total = Duration.zero
        var rest = Substring(text)
        while !rest.isEmpty {
            let numberEnd = rest.firstIndex { !($0.isNumber || $0 == ".") } ?? rest.endIndex
            guard numberEnd > rest.startIndex, let value = Double(rest[rest.startIndex..<numberEnd]), value >= 0 else { return nil }
            rest = rest[numberEnd...]
            let unitEnd = rest.firstIndex { $0.isNumber || $0 == "." } ?? rest.endIndex
            let unit = rest[rest.startIndex..<unitEnd].lowercased()
            rest = rest[unitEnd...]
            let nanosPerUnit: Double
            switch unit {
            case "ns": nanosPerUnit = 1
            case "us", "µs": nanosPerUnit = 1e3
            case "ms": nanosPerUnit = 1e6
            case "s", "sec", "secs", "second", "seconds": nanosPerUnit = 1e9
            case "m", "min", "mins", "minute", "minutes": nanosPerUnit = 60e9
            case "h", "hr", "hour", "hours": nanosPerUnit = 3600e9
            case "d", "day", "days": nanosPerUnit = 86400e9
            default: return nil
            }
            let nanos = value * nanosPerUnit
            guard nanos < 9e18 else { return nil }
            total += .nanoseconds(Int64(nanos.rounded()))
        }
        return total
    }

    /// Whether `value` lies within `window` of `center`, without overflowing on values from the wire
    /// (a timestamp of Int64.min is simply far away).
    public static func isWithin(_ value: Int64, of center: Int64, by window: Int64) -> Bool {
        let (difference, overflow) = value.subtractingReportingOverflow(center)
        return !overflow && difference.magnitude <= UInt64(max(0, window))
    }

    /// Parses "10MB", "512KB", "1GiB", "2048" (bytes). K/M/G are powers of 1024, as config files mean them.
    public static func parseByteSize(_ text: String) -> Int? {
        let text = text.trimmingWhitespace()
        let numberEnd = text.firstIndex { !($0.isNumber || $0 == ".") } ?? text.endIndex
        guard numberEnd > text.startIndex, let value = Double(text[text.startIndex..<numberEnd]), value >= 0 else { return nil }
        let unit = text[numberEnd...].trimmingWhitespace().lowercased()
        let multiplier: Double
        switch unit {
        case "", "b": multiplier = 1
        case "k", "kb", "kib": multiplier = 1024
        case "m", "mb", "mib": multiplier = 1024 * 1024
        case "g", "gb", "gib": multiplier = 1024 * 1024 * 1024
        default: return nil
        }
        let bytes = value * multiplier
        guard bytes < 1e15 else { return nil }
        return Int(bytes)
    }

    /// "1.5s", "200ms", "3m20s": a short readable duration.
    public static func format(_ duration: Duration) -> String {
        let millis = duration.milliseconds
        if millis < 1000 { return "\(millis)ms" }
        if millis < 60_000 {
            let tenths = (millis + 50) / 100
            return tenths % 10 == 0 ? "\(tenths / 10)s" : "\(tenths / 10).\(tenths % 10)s"
        }
        let seconds = millis / 1000
        if seconds < 3600 { return "\(seconds / 60)m\(seconds % 60 == 0 ? "" : "\(seconds % 60)s")" }
        return "\(seconds / 3600)h\(seconds % 3600 / 60 == 0 ? "" : "\(seconds % 3600 / 60)m")"
    }
}

extension Duration {
    /// Whole milliseconds (truncated).
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// The duration in seconds as a Double.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// Milliseconds as a Double.
    public var millisecondsDouble: Double { seconds * 1000 }
}

extension StringProtocol {
    /// The string without leading and trailing whitespace (no Foundation needed). Inlinable, so callers
    /// get it specialized for their string type; an ASCII string (header values, config text) is trimmed
    /// on its bytes, anything else Character by Character.
    @inlinable
    public func trimmingWhitespace() -> String {
        let bytes = utf8
        if bytes.allSatisfy({ $0 < 0x80 }) {
            // One pass forward: where the first byte that is not whitespace is, and after the last one.
            var start: String.Index?
            var end = bytes.startIndex
            var index = bytes.startIndex
            while index < bytes.endIndex {
                let next = bytes.index(after: index)
                if !isASCIIWhitespace(bytes[index]) {
                    if start == nil { start = index }
                    end = next
                }
                index = next
            }
            guard let start else { return "" }
            return String(self[start..<end])
        }
        var slice = Substring(self)
        while let first = slice.first, first.isWhitespace { slice = slice.dropFirst() }
        while let last = slice.last, last.isWhitespace { slice = slice.dropLast() }
        return String(slice)
    }
}

/// The ASCII characters with Unicode's White_Space property (what `Character.isWhitespace` says of them).
@inlinable @inline(__always)
func isASCIIWhitespace(_ byte: UInt8) -> Bool {
    byte == 0x20 || (byte >= 0x09 && byte <= 0x0D)
}
