import ArgumentParser
import Dispatch
import Foundation
import NIOCore
import NIOPosix

/// The entry point. Before any Swift concurrency code runs, NIO's event loops become the global executor,
/// so a request's handler runs on the event loop thread that read it: no hop from NIO to Swift
/// concurrency's own pool and back for every request. `EventLoopGlobalExecutor` runs the jobs on the
/// generic executor; `AIMESH_NIO_EXECUTOR=serial` uses NIO's own takeover instead (jobs isolated to the
/// loop, one trip through its queue per nonisolated async call) and `AIMESH_NIO_EXECUTOR=0` none, to compare.
@main
enum Entry {
    static func main() {
        if let loops = ProcessInfo.processInfo.environment["AIMESH_EVENT_LOOPS"].flatMap(Int.init), loops > 0 {
            NIOSingletons.groupLoopCountSuggestion = loops
        }
        switch ProcessInfo.processInfo.environment["AIMESH_NIO_EXECUTOR"] {
        case "0": break
        case "serial": NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        default: _ = EventLoopGlobalExecutor.install()
        }
        Task {
            await Aimesh.main()
            exit(0)
        }
        dispatchMain()
    }
}

struct Aimesh: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "aimesh",
        abstract: "A federated mesh of OpenAI-compatible AI gateways: one node per machine, routing each request to the best local or cloud model.",
        version: version,
        subcommands: [
            NodeCommand.self, ChatCommand.self, ModelsCommand.self, TopologyCommand.self, PeersCommand.self, UsageCommand.self, ConfigCommand.self, DemoCommand.self,
            IDCommand.self, MeshCommand.self, KeysCommand.self, MockUpstreamCommand.self, FloorServerCommand.self, SimCommand.self, VersionCommand.self,
        ]
    )
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version.")
    func run() { print("aimesh \(Aimesh.version)") }
}
