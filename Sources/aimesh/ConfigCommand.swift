import ArgumentParser
import MeshCore
import NodeConfig

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with configuration files.",
        subcommands: [Check.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Validate a configuration file; print every problem as FILE:LINE: field: message."
        )

        @Argument(help: "The configuration file.")
        var file: String

        func run() throws {
            let outcome = ConfigLoader.check(path: file)
            for diagnostic in outcome.diagnostics { printError(diagnostic.description) }
            guard outcome.errors.isEmpty, let configuration = outcome.configuration else {
                printError("\(file): \(outcome.errors.count) error\(outcome.errors.count == 1 ? "" : "s")")
                throw ExitCode(1)
            }
            let enabled = configuration.providers.filter(\.enabled)
            let models = Set(enabled.flatMap { $0.models.map(\.name) })
            print("\(file): ok — node \(configuration.node.id), \(enabled.count) of \(configuration.providers.count) providers enabled, \(models.count) models, listening on \(configuration.server.listenAddr)")
        }
    }
}
