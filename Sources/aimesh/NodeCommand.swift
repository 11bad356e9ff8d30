import ArgumentParser
import Logging
import MeshCore
import Node
import NodeConfig

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a node: the OpenAI-compatible API, routing and failover, the ledger and metrics."
    )

    @Option(name: .long, help: "Configuration file (YAML or JSON, AIProxy shape).")
    var config: String?

    @Option(name: .long, help: "HTTP API address, HOST:PORT (overrides server.listen_addr).")
    var apiListen: String?

    @Option(name: .long, help: "Directory for the ledger and keys (overrides node.data_dir).")
    var dataDir: String?

    @Option(name: .long, help: "Node id (overrides node.id).")
    var nodeID: String?

    @Option(name: .long, help: "Mesh gossip address, HOST:PORT, UDP and TCP (overrides node.mesh.listen_addr).")
    var gossipListen: String?

    @Option(name: .long, help: "Seed peers, host:port,host:port (overrides node.mesh.peers).")
    var peers: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error (overrides observability.logging.level).")
    var logLevel: String?

    func run() async throws {
        var configuration = NodeConfiguration()
        var warnings: [ConfigDiagnostic] = []
        if let config {
            do {
                (configuration, warnings) = try ConfigLoader.load(path: config)
            } catch {
                for diagnostic in error.diagnostics { printError(diagnostic.description) }
                throw ExitCode(2)
            }
        }
        var overrides = NodeOverrides(dataDir: dataDir, nodeID: nodeID)
        if let apiListen {
            guard let address = HostPort(parsing: apiListen) else { throw ValidationError("--api-listen must be HOST:PORT, found '\(apiListen)'") }
            overrides.apiListen = address
        }
        if let gossipListen {
            guard let address = HostPort(parsing: gossipListen) else { throw ValidationError("--gossip-listen must be HOST:PORT, found '\(gossipListen)'") }
            overrides.gossipListen = address
        }
        if let peers {
            let list = peers.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }
            for peer in list where HostPort(parsing: peer) == nil { throw ValidationError("--peers entries must be HOST:PORT, found '\(peer)'") }
            overrides.peers = list
        }
        overrides.apply(to: &configuration)
        LogSetup.bootstrap(level: logLevel ?? configuration.observability.logLevel, format: configuration.observability.logFormat, output: configuration.observability.logOutput)
        let logger = Logger(label: "aimesh")
        for warning in warnings { logger.warning("\(warning.description)") }
        if configuration.providers.filter(\.enabled).isEmpty {
            logger.warning("no enabled providers: this node serves no models of its own")
        }
        let runtime: NodeRuntime
        do {
            runtime = try NodeRuntime(configuration: configuration, logger: logger)
        } catch {
            printError("aimesh: \(error)")
            throw ExitCode(1)
        }
        try await runtime.run()
    }
}

func printError(_ message: String) {
    fputs(message + "\n", stderr)
}
