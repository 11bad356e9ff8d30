#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Wall-clock milliseconds since 1970 (UTC): for timestamps that leave the process (ledger rows,
/// records, certificates, hop headers). Durations and deadlines use `ContinuousClock`.
public func wallClockMillis() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}

private func utcParts(_ seconds: Int64) -> tm {
    var time = time_t(seconds)
    var parts = tm()
    gmtime_r(&time, &parts)
    return parts
}

private func pad(_ value: Int32, _ width: Int = 2) -> String {
    let text = String(value)
    return String(repeating: "0", count: max(0, width - text.count)) + text
}

/// `2026-11-23T17:03:00Z`, or with `fraction` `2026-11-23T17:03:00.123Z` (UTC).
public func iso8601(millis: Int64, fraction: Bool = false) -> String {
    let parts = utcParts(millis / 1000)
    let base = "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))T\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec))"
    return fraction ? base + ".\(pad(Int32(millis % 1000), 3))Z" : base + "Z"
}

/// An HTTP `Date` header's value (RFC 9110's IMF-fixdate): `Thu, 03 Dec 2026 04:25:04 GMT`.
public func httpDate(seconds: Int64) -> String {
    let parts = utcParts(seconds)
    let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    return "\(days[Int(parts.tm_wday)]), \(pad(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
        + "\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec)) GMT"
}

/// Creates `path` and any missing parents with `mode` (0700: data and key directories). Returns the
/// system's reason when a directory cannot be made, nil on success.
@discardableResult
public func makeDirectories(_ path: String, mode: mode_t = 0o700) -> String? {
    var current = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        current += "/\(component)"
        if mkdir(current, mode) != 0 && errno != EEXIST { return String(cString: strerror(errno)) }
    }
    return nil
}

/// A whole file's bytes, or nil when it cannot be read or is larger than `limit`.
public func readFileBytes(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&buffer, 1, buffer.count, file)
        if count <= 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
        if bytes.count > limit { return nil }
    }
    return bytes
}

/// A small text file (at most `limit` bytes of valid UTF-8), or nil.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
    readFileBytes(path, limit: limit).flatMap { String(validating: $0, as: UTF8.self) }
}

/// Writes a file with `mode`, replacing what was there.
public func writeSmallFile(_ path: String, _ text: String, mode: mode_t = 0o644) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return text.utf8CString.withUnsafeBufferPointer { buffer in write(fd, buffer.baseAddress, buffer.count - 1) == buffer.count - 1 }
}

/// Asks the kernel to schedule the calling thread as batch work (`SCHED_BATCH`, Linux): when it wakes while
/// every CPU is busy it waits for the running thread's turn to end instead of preempting it, so it finds
/// several events ready when it runs. For a thread that drains completions (the curl engine's): on a loaded
/// 2-core machine it then sleeps half as often and costs about 40 % less a request (docs/PERFORMANCE.md). A
/// wake-up on an idle CPU runs at once as before, so an unloaded node answers as fast. No privilege is needed;
/// returns false where the policy does not exist.
@discardableResult
public func scheduleCurrentThreadAsBatch() -> Bool {
    #if os(Linux)
    var parameters = sched_param()
    parameters.sched_priority = 0
    return sched_setscheduler(0, schedBatch, &parameters) == 0
    #else
    return false
    #endif
}

/// `SCHED_BATCH` in <linux/sched.h>; Glibc's Swift overlay does not export the constant.
private let schedBatch: Int32 = 3

/// Whether the calling thread runs as batch work (`scheduleCurrentThreadAsBatch`).
public func currentThreadIsBatch() -> Bool {
    #if os(Linux)
    return sched_getscheduler(0) == schedBatch
    #else
    return false
    #endif
}
