import ArgumentParser
import MeshCore

/// Renderings of `GET /aiproxy/mesh/topology` (shared by `aimesh topology` and the demo).
enum TopologyRender {
    static func table(_ topology: JSON) -> String {
        var rows: [[String]] = [["NODE", "STATUS", "REGION", "TYPE", "LOAD", "GPUS", "MODELS (provider kind, $ in/out per 1M)"]]
        for node in topology["nodes"]?.arrayValue ?? [] {
            let name = (node["name"]?.stringValue ?? "?") + (node["self"]?.boolValue == true ? " *" : "")
            let models = (node["models"]?.arrayValue ?? []).map { model -> String in
                let price = "\(Table.money(model["input_cost_per_1m"]?.doubleValue))/\(Table.money(model["output_cost_per_1m"]?.doubleValue))"
                return "\(model["name"]?.stringValue ?? "?") (\(model["kind"]?.stringValue ?? "?"), \(price))"
            }
            let gpus = (node["gpus"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
            let load = node["load"]?.doubleValue.flatMap { Int(exactly: ($0 * 100).rounded()).map { "\($0)%" } } ?? "-"
            rows.append([name, node["status"]?.stringValue ?? "?", node["region"]?.stringValue ?? "-", node["type"]?.stringValue ?? "-", load,
                         gpus.isEmpty ? "-" : gpus.joined(separator: ", "), models.isEmpty ? "-" : models.joined(separator: "; ")])
        }
        var edges: [[String]] = [["EDGE", "RTT", "STATUS"]]
        for edge in topology["edges"]?.arrayValue ?? [] {
            edges.append(["\(edge["from"]?.stringValue ?? "?") → \(edge["to"]?.stringValue ?? "?")",
                          edge["rtt_ms"]?.doubleValue.map { String(format3($0)) + " ms" } ?? "-", edge["status"]?.stringValue ?? "?"])
        }
        return Table.render(rows) + "\n\n" + Table.render(edges)
    }

    static func format3(_ value: Double) -> String { String(describing: (value * 1000).rounded() / 1000) }

    static func dot(_ topology: JSON) -> String {
        var lines = ["digraph aimesh {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
        for node in topology["nodes"]?.arrayValue ?? [] {
            let name = node["name"]?.stringValue ?? "?"
            let models = (node["models"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
            let label = ([name, node["status"]?.stringValue ?? ""] + models).joined(separator: "\\n")
            lines.append("  \"\(name)\" [label=\"\(label)\"\(node["status"]?.stringValue == "healthy" ? "" : ", color=red")];")
        }
        for edge in topology["edges"]?.arrayValue ?? [] {
            let rtt = edge["rtt_ms"]?.doubleValue.map { format3($0) + " ms" } ?? ""
            lines.append("  \"\(edge["from"]?.stringValue ?? "?")\" -> \"\(edge["to"]?.stringValue ?? "?")\" [label=\"\(rtt)\"];")
        }
        lines.append("}")
        return lines.joined(separator: "\n")
    }

    static func mermaid(_ topology: JSON) -> String {
        func id(_ name: String) -> String { "n_" + name.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined() }
        var lines = ["graph LR"]
        for node in topology["nodes"]?.arrayValue ?? [] {
            let name = node["name"]?.stringValue ?? "?"
            let models = (node["models"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
            lines.append("  \(id(name))[\"\(([name] + models).joined(separator: "<br/>"))\"]")
        }
        for edge in topology["edges"]?.arrayValue ?? [] {
            let rtt = edge["rtt_ms"]?.doubleValue.map { format3($0) + " ms" } ?? "?"
            lines.append("  \(id(edge["from"]?.stringValue ?? "?")) -- \"\(rtt)\" --> \(id(edge["to"]?.stringValue ?? "?"))")
        }
        return lines.joined(separator: "\n")
    }
}

struct TopologyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "topology", abstract: "Show the mesh as a node sees it: nodes, models, prices, load, GPUs and measured RTTs.")

    enum Format: String, ExpressibleByArgument, CaseIterable { case table, json, dot, mermaid }

    @OptionGroup var client: NodeClientOptions

    @Option(name: .long, help: "table, json, dot (Graphviz) or mermaid.")
    var format: Format = .table

    func run() async throws {
        let topology = try await client.get("/aiproxy/mesh/topology")
        switch format {
        case .table: print(TopologyRender.table(topology))
        case .json: print(topology.text)
        case .dot: print(TopologyRender.dot(topology))
        case .mermaid: print(TopologyRender.mermaid(topology))
        }
    }
}

struct PeersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "peers", abstract: "List a node's peers: status, address, latency, load and models.")

    @OptionGroup var client: NodeClientOptions

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() async throws {
        let status = try await client.get("/aiproxy/mesh/status")
        if json {
            print((status["peers"] ?? []).text)
            return
        }
        var rows: [[String]] = [["PEER", "STATUS", "GOSSIP", "API", "LATENCY", "LOAD", "MODELS"]]
        for peer in status["peers"]?.arrayValue ?? [] {
            rows.append([peer["id"]?.stringValue ?? "?", peer["status"]?.stringValue ?? "?", peer["addr"]?.stringValue ?? "-", peer["api"]?.stringValue ?? "-",
                         peer["latency_ms"]?.doubleValue.map { TopologyRender.format3($0) + " ms" } ?? "-",
                         peer["load"]?.doubleValue.flatMap { Int(exactly: ($0 * 100).rounded()).map { "\($0)%" } } ?? "-",
                         (peer["models_available"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: ", ")])
        }
        print(Table.render(rows))
        if let mesh = status["mesh"] {
            print("\nthis node: \(mesh["node_id"]?.stringValue ?? "?") gossip \(mesh["gossip"]?.stringValue ?? "?"), \(mesh["members"]?.intValue ?? 0) members alive")
        }
    }
}

struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "usage", abstract: "Print a node's spend and tokens from its ledger, grouped by key, model, provider or node.")

    enum Group: String, ExpressibleByArgument, CaseIterable { case key, model, provider, node }

    @OptionGroup var client: NodeClientOptions

    @Option(name: .long, help: "Since: epoch ms, a date (2026-11-23, UTC) or a span (24h, 7d). Default: today (UTC).")
    var since: String?

    @Option(name: .long, help: "key, model, provider or node.")
    var groupBy: Group = .key

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() async throws {
        var path = "/aiproxy/usage?group_by=\(groupBy.rawValue)"
        if let since { path += "&since=\(since)" }
        let usage = try await client.get(path)
        if json {
            print(usage.text)
            return
        }
        var rows: [[String]] = [[groupBy.rawValue.uppercased(), "REQUESTS", "PROMPT", "COMPLETION", "COST $", "ERRORS"]]
        for row in (usage["rows"]?.arrayValue ?? []) + [usage["total"].map { total -> JSON in
            var object = total.objectValue ?? [:]
            object["group"] = "TOTAL"
            return .object(object)
        } ?? .null] where row != .null {
            rows.append([row["group"]?.stringValue ?? "?", String(row["requests"]?.intValue ?? 0), String(row["prompt_tokens"]?.intValue ?? 0),
                         String(row["completion_tokens"]?.intValue ?? 0), Table.money(row["cost"]?.doubleValue), String(row["errors"]?.intValue ?? 0)])
        }
        print("node \(usage["node"]?.stringValue ?? "?") since \(iso8601(millis: Int64(usage["since_ms"]?.intValue ?? 0)))\n")
        print(Table.render(rows))
    }
}
