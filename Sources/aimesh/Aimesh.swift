import ArgumentParser

@main
struct Aimesh: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "aimesh",
        abstract: "A federated mesh of OpenAI-compatible AI gateways: one node per machine, routing each request to the best local or cloud model.",
        version: version,
        subcommands: [
            NodeCommand.self, ChatCommand.self, ModelsCommand.self, TopologyCommand.self, PeersCommand.self, UsageCommand.self, ConfigCommand.self, DemoCommand.self,
            IDCommand.self, MeshCommand.self, KeysCommand.self, MockUpstreamCommand.self, SimCommand.self, VersionCommand.self,
        ]
    )
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version.")
    func run() { print("aimesh \(Aimesh.version)") }
}
