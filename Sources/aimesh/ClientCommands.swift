import ArgumentParser
import CurlHTTP
import MeshCore
import MeshState

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Options shared by commands that talk to a running node.
struct NodeClientOptions: ParsableArguments {
    @Option(name: .long, help: "The node's API base URL.")
    var node: String = "http://127.0.0.1:8080"

    @Option(name: .long, help: "API key (default: $AIMESH_API_KEY).")
    var apiKey: String?

    @Option(name: .long, help: "Sign requests with this key file (the mesh admin's, or this node's node.key in a CA mesh) for admin endpoints.")
    var adminKey: String?

    var headers: [(name: String, value: String)] {
        let key = apiKey ?? getenv("AIMESH_API_KEY").map { String(cString: $0) }
        return key.map { [("Authorization", "Bearer \($0)")] } ?? []
    }

    var baseURL: String {
        var url = node
        while url.hasSuffix("/") { url.removeLast() }
        if !url.hasPrefix("http://") && !url.hasPrefix("https://") { url = "http://" + url }
        return url
    }

    func get(_ path: String) async throws -> JSON {
        let client = CurlClient()
        defer { client.shutdown() }
        var headers = self.headers
        if let adminKey {
            let kind = (readSmallFile(adminKey) ?? "").hasPrefix("aimesh-admin-key") ? "admin" : "node"
            let key = try loadKey(adminKey, kind: kind)
            headers.append((AdminSignature.name, AdminSignature.sign(method: "GET", target: path, key: key, timestampMillis: wallClockMillis())))
        }
        let (head, body) = try await client.send(OutboundRequest(url: baseURL + path, headers: headers, timeouts: Timeouts(connect: .seconds(5), firstByte: .seconds(30))))
        let json = try JSONParser.parse(body)
        if head.status >= 400 { throw ValidationError(json["error"]?["message"]?.stringValue ?? "HTTP \(head.status)") }
        return json
    }
}

struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chat", abstract: "Send a chat request to a node and stream the answer to the terminal.")

    @OptionGroup var client: NodeClientOptions

    @Option(name: .shortAndLong, help: "Model name.")
    var model: String

    @Option(name: .long, help: "System message.")
    var system: String?

    @Option(name: .long, help: "Routing strategy for this request (x-aiproxy-strategy).")
    var strategy: String?

    @Option(name: .long, help: "Most this request may cost, in US dollars (x-aiproxy-max-cost).")
    var maxCost: Double?

    @Option(name: .long, help: "Maximum tokens to generate.")
    var maxTokens: Int?

    @Flag(name: .long, inversion: .prefixedNo, help: "Stream the answer as it is generated.")
    var stream = true

    @Flag(name: .long, help: "Print the raw JSON response (non-streaming).")
    var json = false

    @Argument(help: "The prompt.")
    var prompt: String

    func run() async throws {
        var messages: [JSON] = []
        if let system { messages.append(["role": "system", "content": .string(system)]) }
        messages.append(["role": "user", "content": .string(prompt)])
        let streaming = stream && !json
        var body: JSONObject = ["model": .string(model), "messages": .array(messages), "stream": .bool(streaming)]
        if let maxTokens { body["max_tokens"] = .int(maxTokens) }
        var headers = client.headers
        if let strategy { headers.append(("x-aiproxy-strategy", strategy)) }
        if let maxCost { headers.append(("x-aiproxy-max-cost", String(maxCost))) }
        let http = CurlClient()
        defer { http.shutdown() }
        let response = try await http.start(.post(client.baseURL + "/v1/chat/completions", json: JSON.object(body).bytes, headers: headers,
                                                  timeouts: Timeouts(connect: .seconds(5), firstByte: .seconds(300), idle: .seconds(300))))
        if response.head.status >= 400 || !streaming {
            let bytes = try await response.collect(maxBytes: 64 << 20)
            let parsed = try? JSONParser.parse(bytes)
            if response.head.status >= 400 {
                printError("error \(response.head.status): \(parsed?["error"]?["message"]?.stringValue ?? String(decoding: bytes, as: UTF8.self))")
                throw ExitCode(1)
            }
            if json {
                print(String(decoding: bytes, as: UTF8.self))
                return
            }
            print(ChatCommandOutput.text(of: parsed?["choices"]?[0]?["message"]?["content"]))
            ChatCommandOutput.printRoute(parsed?["x_aiproxy"])
            return
        }
        var parser = SSEParser()
        var info: JSON?
        var failed: String?
        while let chunk = try await response.next() {
            for event in try parser.feed(chunk) where !event.isDone {
                guard let data = try? JSONParser.parse(event.data) else { continue }
                if let error = data["error"], !error.isNull {
                    failed = error["message"]?.stringValue ?? "stream failed"
                    continue
                }
                if let content = data["choices"]?[0]?["delta"]?["content"]?.stringValue {
                    fputs(content, stdout)
                    fflush(stdout)
                }
                if let aiproxy = data["x_aiproxy"] { info = aiproxy }
            }
        }
        print("")
        if let failed {
            printError("error: \(failed)")
            throw ExitCode(1)
        }
        ChatCommandOutput.printRoute(info ?? response.head.header("x-aiproxy-route").map { ["route": .array($0.split(separator: ",").map { .string(String($0)) })] })
    }
}

enum ChatCommandOutput {
    static func text(of content: JSON?) -> String {
        switch content {
        case .string(let text)?: return text
        case .array(let parts)?: return parts.compactMap { $0["text"]?.stringValue }.joined()
        default: return ""
        }
    }

    static func printRoute(_ info: JSON?) {
        guard let info else { return }
        let route = info["route"]?.arrayValue?.compactMap(\.stringValue).joined(separator: " → ") ?? "?"
        var parts = ["route: \(route)"]
        if let cost = info["cost"]?.doubleValue { parts.append("cost: $\(cost)") }
        if let tokens = info["tokens"]?["total"]?.intValue { parts.append("tokens: \(tokens)") }
        if let latency = info["latency_ms"]?.doubleValue { parts.append("latency: \(latency) ms") }
        if let attempts = info["attempts"]?.arrayValue, attempts.count > 1 {
            parts.append("attempts: " + attempts.map { "\($0["route"]?.stringValue ?? "?")=\($0["outcome"]?.stringValue ?? "?")" }.joined(separator: ", "))
        }
        printError("[" + parts.joined(separator: " · ") + "]")
    }
}

struct ModelsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "models", abstract: "List the models a node can serve, with every route's price and availability.")

    @OptionGroup var client: NodeClientOptions

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() async throws {
        let models = try await client.get("/v1/models")
        if json {
            print(models.text)
            return
        }
        var rows: [[String]] = [["MODEL", "ROUTE", "NODE", "KIND", "IN $/1M", "OUT $/1M", "AVAILABLE", "LATENCY"]]
        for model in models["data"]?.arrayValue ?? [] {
            let name = model["id"]?.stringValue ?? "?"
            for provider in model["providers"]?.arrayValue ?? [] {
                rows.append([
                    name, provider["name"]?.stringValue ?? "?", provider["node"]?.stringValue ?? "-", provider["kind"]?.stringValue ?? "-",
                    Table.money(provider["input_cost_per_1m"]?.doubleValue), Table.money(provider["output_cost_per_1m"]?.doubleValue),
                    provider["available"]?.boolValue == false ? "no" : "yes",
                    provider["avg_latency_ms"]?.doubleValue.flatMap { Int(exactly: $0.rounded()).map { "\($0) ms" } } ?? "-",
                ])
            }
        }
        print(Table.render(rows))
    }
}

/// Plain-text tables for the terminal.
enum Table {
    static func render(_ rows: [[String]]) -> String {
        guard let header = rows.first else { return "" }
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        return rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func money(_ value: Double?) -> String {
        guard let value else { return "-" }
        if value == 0 { return "0" }
        let rounded = (value * 10000).rounded() / 10000
        return String(describing: rounded)
    }
}
