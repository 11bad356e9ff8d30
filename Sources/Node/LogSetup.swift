import Logging
import MeshCore
import NodeConfig

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Bootstraps swift-log once per process from `observability.logging` (text or JSON lines).
public enum LogSetup {
    public static func bootstrap(level: String, format: ObservabilitySection.LogFormat, output: String) {
        let logLevel = Logger.Level(rawValue: level) ?? .info
        let descriptor: Int32
        switch output {
        case "stdout": descriptor = 1
        case "stderr", "": descriptor = 2
        default:
            let opened = open(output, O_WRONLY | O_APPEND | O_CREAT, 0o640)
            descriptor = opened >= 0 ? opened : 2
        }
        let file = FileBox(descriptor)
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler
            switch format {
            case .json: handler = JSONLogHandler(label: label, file: file)
            case .text: handler = TextLogHandler(label: label, file: file)
            }
            handler.logLevel = logLevel
            return handler
        }
    }
}

/// A file descriptor that takes whole lines: one write(2) per line, so lines from threads never interleave.
final class FileBox: Sendable {
    let descriptor: Int32
    init(_ descriptor: Int32) { self.descriptor = descriptor }
    func write(_ line: String) {
        var line = line
        line.withUTF8 { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { break }
                offset += written
            }
        }
    }
}

func timestamp() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    var tm = tm()
    var seconds = now.tv_sec
    gmtime_r(&seconds, &tm)
    func pad(_ v: Int32, _ width: Int = 2) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    return "\(tm.tm_year + 1900)-\(pad(tm.tm_mon + 1))-\(pad(tm.tm_mday))T\(pad(tm.tm_hour)):\(pad(tm.tm_min)):\(pad(tm.tm_sec)).\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
}

struct TextLogHandler: LogHandler {
    let label: String
    let file: FileBox
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        file.write("\(timestamp()) \(event.level) \(label): \(event.message)\(fields.isEmpty ? "" : " " + fields)\n")
    }
}

struct JSONLogHandler: LogHandler {
    let label: String
    let file: FileBox
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: JSONObject = ["ts": .string(timestamp()), "level": .string(event.level.rawValue), "logger": .string(label), "msg": .string("\(event.message)")]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }).sorted(by: { $0.key < $1.key }) {
            object[key] = .string("\(value)")
        }
        file.write(JSON.object(object).text + "\n")
    }
}
