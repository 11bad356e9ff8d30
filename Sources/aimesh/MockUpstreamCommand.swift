import ArgumentParser
import MeshCore
import MockUpstream
import NodeConfig

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct MockUpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mock-upstream",
        abstract: "Run a loopback stand-in model server speaking OpenAI, Anthropic, Gemini and Workers AI (for demos, tests and benchmarks)."
    )

    @Option(name: .long, help: "Address to listen on, HOST:PORT (port 0 picks a free one).")
    var listen: String = "127.0.0.1:0"

    @Option(name: .long, help: "Name shown in answers.")
    var name: String = "mock"

    @Option(name: .long, help: "Delay before every answer (e.g. 60ms).")
    var latency: String = "0ms"

    @Option(name: .long, help: "Gap between streamed events (e.g. 5ms).")
    var eventInterval: String = "0ms"

    @Option(name: .long, help: "Require this credential in the vendor's auth header.")
    var requireKey: String?

    @Option(name: .long, help: "Write the chosen port to this file.")
    var portFile: String?

    func run() async throws {
        guard let address = HostPort(parsing: listen) else { throw ValidationError("--listen must be HOST:PORT") }
        guard let latency = Units.parseDuration(latency), let interval = Units.parseDuration(eventInterval) else {
            throw ValidationError("--latency and --event-interval take durations such as 60ms")
        }
        let mock = try await MockUpstream.start(.init(name: name, host: address.host, port: address.port, latency: latency, eventInterval: interval, requiredKey: requireKey))
        if let portFile, let file = fopen(portFile, "w") {
            fputs("\(mock.port)\n", file)
            fclose(file)
        }
        print("mock upstream \(name) listening on \(mock.baseURL)")
        fflush(stdout)
        while true { try await Task.sleep(for: .seconds(3600)) }
    }
}
