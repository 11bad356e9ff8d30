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
            var handler = LineLogHandler(label: label, file: file, format: format)
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

func timestamp() -> String { iso8601(millis: wallClockMillis(), fraction: true) }

/// One log line per event: `TIME LEVEL LABEL: MESSAGE k=v …`, or a JSON object per line.
struct LineLogHandler: LogHandler {
    let label: String
    let file: FileBox
    let format: ObservabilitySection.LogFormat
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = metadata.merging(event.metadata ?? [:]) { $1 }.sorted { $0.key < $1.key }
        switch format {
        case .text:
            let pairs = fields.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            file.write("\(timestamp()) \(event.level) \(label): \(event.message)\(pairs.isEmpty ? "" : " " + pairs)\n")
        case .json:
            var object: JSONObject = ["ts": .string(timestamp()), "level": .string(event.level.rawValue), "logger": .string(label), "msg": .string("\(event.message)")]
            for (key, value) in fields { object[key] = .string("\(value)") }
            file.write(JSON.object(object).text + "\n")
        }
    }
}

