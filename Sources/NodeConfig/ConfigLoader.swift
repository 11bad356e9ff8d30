import MeshCore
import Yams

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a configuration file (YAML or JSON) in the AIProxy standard's shape.
public enum ConfigLoader {
    /// The result of reading a file: the configuration when there were no errors, and every finding.
    public struct Outcome: Sendable {
        public var configuration: NodeConfiguration?
        public var diagnostics: [ConfigDiagnostic]
        public var errors: [ConfigDiagnostic] { diagnostics.filter { $0.severity == .error } }
        public var warnings: [ConfigDiagnostic] { diagnostics.filter { $0.severity == .warning } }
    }

    /// Loads and validates `path`; throws with every error found.
    public static func load(path: String, environment: [String: String] = ProcessEnvironment.current) throws(ConfigError) -> (NodeConfiguration, [ConfigDiagnostic]) {
        let outcome = check(path: path, environment: environment)
        guard let configuration = outcome.configuration, outcome.errors.isEmpty else {
            throw ConfigError(diagnostics: outcome.diagnostics)
        }
        return (configuration, outcome.warnings)
    }

    public static func check(path: String, environment: [String: String] = ProcessEnvironment.current) -> Outcome {
        guard let text = readFile(path) else {
            return Outcome(configuration: nil, diagnostics: [ConfigDiagnostic(file: path, line: 0, field: "", message: "cannot read the file (\(String(cString: strerror(errno))))")])
        }
        var outcome = parse(yaml: text, file: path, environment: environment)
        outcome.configuration?.sourcePath = path
        return outcome
    }

    public static func parse(yaml original: String, file: String = "<config>", environment: [String: String] = [:]) -> Outcome {
        // One notion of a line for the guard, the YAML library and every line number reported.
        let text = YAMLAliasGuard.normalizingLineBreaks(original)
        switch YAMLAliasGuard.firstFinding(normalized: text) {
        case .alias(let line)?:
            return Outcome(configuration: nil, diagnostics: [ConfigDiagnostic(file: file, line: line, field: "", message:
                "YAML aliases (*name) are not accepted in aimesh configs (a few nested ones can stand for a document too large to load): write the value out, or quote it if it is text starting with '*'")])
        case .complexKey(let line)?:
            return Outcome(configuration: nil, diagnostics: [ConfigDiagnostic(file: file, line: line, field: "", message:
                "complex mapping keys ('? key', '[a, b]: …', '{a: b}: …') are not accepted in aimesh configs: every key is a plain name; quote text that starts with '?'")])
        case nil:
            break
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            return Outcome(configuration: nil, diagnostics: [yamlDiagnostic(error, file: file)])
        } catch {
            return Outcome(configuration: nil, diagnostics: [ConfigDiagnostic(file: file, line: 0, field: "", message: "\(error)")])
        }
        var configuration = NodeConfiguration()
        let reader = YAMLReader(file: file, environment: environment)
        if let root {
            SectionParser(reader: reader).parseRoot(Field(node: root, path: ""), into: &configuration)
        }
        return Outcome(configuration: reader.hasErrors ? nil : configuration, diagnostics: reader.diagnostics)
    }

    static func yamlDiagnostic(_ error: YamlError, file: String) -> ConfigDiagnostic {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _), .composer(let context, let problem, let mark, _):
            let detail = context.map { "\($0.text): " } ?? ""
            return ConfigDiagnostic(file: file, line: mark.line, field: "", message: "YAML syntax: \(detail)\(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigDiagnostic(file: file, line: context.mark.line, field: "", message: "duplicate keys \(duplicates.joined(separator: ", "))")
        default:
            return ConfigDiagnostic(file: file, line: 0, field: "", message: "YAML: \(error)")
        }
    }

    static func readFile(_ path: String) -> String? {
        readFileBytes(path, limit: 16 << 20).map { String(decoding: $0, as: UTF8.self) }
    }
}

/// The process environment as a dictionary.
public enum ProcessEnvironment {
    public static var current: [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}

/// One function per section of the file.
struct SectionParser {
    let reader: YAMLReader

    func parseRoot(_ root: Field, into config: inout NodeConfiguration) {
        guard let members = reader.mapping(root, allowed: ["node", "server", "providers", "routing", "budget", "observability", "security", "version"]) else { return }
        for (key, field) in members {
            switch key {
            case "node": parseNode(field, into: &config.node)
            case "server": parseServer(field, into: &config.server)
            case "providers": config.providers = parseProviders(field)
            case "routing": parseRouting(field, into: &config.routing, providers: config.providers)
            case "budget": parseBudget(field, into: &config.budget)
            case "observability": parseObservability(field, into: &config.observability)
            case "security": parseSecurity(field, into: &config.security)
            default: break
            }
        }
        // Routing may name providers declared after it.
        if let routing = members.first(where: { $0.key == "routing" }) {
            checkFallbackChain(routing.field, routing: config.routing, providers: config.providers)
        }
    }

    // MARK: node

    func parseNode(_ field: Field, into node: inout NodeSection) {
        guard let members = reader.mapping(field, allowed: ["id", "name", "region", "type", "data_dir", "mesh"]) else { return }
        for (key, value) in members {
            switch key {
            case "id":
                if let id = reader.string(value) {
                    if id.isEmpty || id.count > 64 || !id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }) {
                        reader.error(value, "node ids are 1–64 letters, digits, '-', '_' or '.', found '\(id)'")
                    } else {
                        node.id = id
                    }
                }
            case "name": node.name = reader.string(value)
            case "region": node.region = reader.string(value) ?? node.region
            case "type":
                let choices = Dictionary(uniqueKeysWithValues: NodeType.allCases.map { ($0.rawValue, $0) })
                node.type = reader.oneOf(value, choices, what: "node type") ?? node.type
            case "data_dir": node.dataDir = reader.string(value)
            case "mesh": parseMesh(value, into: &node.mesh)
            default: break
            }
        }
    }

    func parseMesh(_ field: Field, into mesh: inout MeshSection) {
        let allowed = [
            "enabled", "listen_addr", "advertise_addr", "advertise_api", "peers", "trust", "secret_keys", "max_hops", "share_load",
            "peer_timeout", "heartbeat_interval", "probe_interval", "probe_timeout", "indirect_checks", "suspicion_multiplier",
            "gossip_interval", "gossip_fanout", "retransmit_multiplier", "push_pull_interval", "record_ttl",
        ]
        guard let members = reader.mapping(field, allowed: allowed) else { return }
        for (key, value) in members {
            switch key {
            case "enabled": mesh.enabled = reader.bool(value) ?? mesh.enabled
            case "listen_addr": mesh.listenAddr = reader.hostPort(value)
            case "advertise_addr": mesh.advertiseAddr = reader.hostPort(value)
            case "advertise_api": mesh.advertiseAPI = reader.string(value)
            case "peers": mesh.peers = parsePeers(value)
            case "trust": parseTrust(value, into: &mesh)
            case "secret_keys":
                if let keys = reader.sequence(value) {
                    mesh.secretKeys = keys.compactMap { item in
                        guard let text = reader.string(item) else { return nil }
                        let bytes = ByteEncoding.fromHex(text) ?? ByteEncoding.fromBase64(text)
                        guard bytes?.count == 32 else {
                            // Never echo the value: it is a secret.
                            reader.error(item, "a mesh secret must be 32 bytes written as 64 hex digits or base64 (make one with `aimesh mesh keygen`)")
                            return nil
                        }
                        return Secret(text)
                    }
                }
            case "max_hops": mesh.maxHops = reader.int(value, range: 1...8) ?? mesh.maxHops
            case "share_load": mesh.shareLoad = reader.bool(value) ?? mesh.shareLoad
            case "peer_timeout": mesh.peerTimeout = reader.duration(value) ?? mesh.peerTimeout
            case "heartbeat_interval", "probe_interval": mesh.probeInterval = reader.duration(value) ?? mesh.probeInterval
            case "probe_timeout": mesh.probeTimeout = reader.duration(value) ?? mesh.probeTimeout
            case "indirect_checks": mesh.indirectChecks = reader.int(value, range: 0...16) ?? mesh.indirectChecks
            case "suspicion_multiplier": mesh.suspicionMultiplier = reader.int(value, range: 1...32) ?? mesh.suspicionMultiplier
            case "gossip_interval": mesh.gossipInterval = reader.duration(value) ?? mesh.gossipInterval
            case "gossip_fanout": mesh.gossipFanout = reader.int(value, range: 1...32) ?? mesh.gossipFanout
            case "retransmit_multiplier": mesh.retransmitMultiplier = reader.int(value, range: 1...32) ?? mesh.retransmitMultiplier
            case "push_pull_interval": mesh.pushPullInterval = reader.duration(value) ?? mesh.pushPullInterval
            case "record_ttl": mesh.recordTTL = reader.duration(value) ?? mesh.recordTTL
            default: break
            }
        }
    }

    func parsePeers(_ field: Field) -> [SeedPeer] {
        if case .scalar = field.node { return (reader.stringList(field) ?? []).map { SeedPeer(address: $0) } }
        guard let items = reader.sequence(field) else { return [] }
        var peers: [SeedPeer] = []
        for item in items {
            if case .mapping = item.node {
                guard let members = reader.mapping(item, allowed: ["id", "addr", "address", "priority"]) else { continue }
                var peer = SeedPeer(address: "")
                for (key, value) in members {
                    switch key {
                    case "id": peer.id = reader.string(value)
                    case "addr", "address": peer.address = reader.string(value) ?? ""
                    case "priority": peer.priority = reader.int(value)
                    default: break
                    }
                }
                if peer.address.isEmpty { reader.error(item, "a peer needs an addr") } else { peers.append(peer) }
            } else if let text = reader.string(item) {
                if HostPort(parsing: text) == nil {
                    reader.error(item, "expected HOST:PORT, found '\(text)'")
                } else {
                    peers.append(SeedPeer(address: text))
                }
            }
        }
        return peers
    }

    func parseTrust(_ field: Field, into mesh: inout MeshSection) {
        if case .scalar = field.node {
            mesh.trustMode = reader.oneOf(field, ["ca": .ca, "open": .open], what: "trust mode") ?? mesh.trustMode
            return
        }
        guard let members = reader.mapping(field, allowed: ["mode", "admin_public_key", "certificate"]) else { return }
        for (key, value) in members {
            switch key {
            case "mode": mesh.trustMode = reader.oneOf(value, ["ca": .ca, "open": .open], what: "trust mode") ?? mesh.trustMode
            case "admin_public_key":
                mesh.adminPublicKey = reader.string(value)
                if let key = mesh.adminPublicKey, ByteEncoding.fromHex(key)?.count != 32 {
                    reader.error(value, "must be the mesh admin's public key, 64 hex digits (printed by `aimesh mesh init`)")
                }
            case "certificate": mesh.certificatePath = reader.string(value)
            default: break
            }
        }
        if mesh.trustMode == .ca && mesh.adminPublicKey == nil {
            reader.error(field, "trust mode 'ca' needs admin_public_key (print it with `aimesh mesh init`)")
        }
        if mesh.trustMode == .ca && mesh.certificatePath == nil {
            reader.error(field, "trust mode 'ca' needs certificate: this node's certificate file (`aimesh mesh admit NODE_ID --name NAME`)")
        }
    }

    // MARK: server

    func parseServer(_ field: Field, into server: inout ServerSection) {
        let allowed = ["listen_addr", "read_timeout", "write_timeout", "request_timeout", "max_request_size", "io_scheduling", "endpoints"]
        guard let members = reader.mapping(field, allowed: allowed) else { return }
        for (key, value) in members {
            switch key {
            case "listen_addr": server.listenAddr = reader.hostPort(value) ?? server.listenAddr
            case "read_timeout": server.readTimeout = reader.duration(value) ?? server.readTimeout
            case "write_timeout": server.writeTimeout = reader.duration(value) ?? server.writeTimeout
            case "request_timeout": server.requestTimeout = reader.duration(value) ?? server.requestTimeout
            case "max_request_size":
                if let size = reader.byteSize(value) {
                    if size < 1024 { reader.error(value, "must be at least 1KB") } else { server.maxRequestSize = size }
                }
            case "io_scheduling":
                server.batchIOScheduling = reader.oneOf(value, ["batch": true, "normal": false], what: "io_scheduling") ?? server.batchIOScheduling
            case "endpoints":
                guard let items = reader.sequence(value) else { continue }
                for item in items {
                    guard let entry = reader.mapping(item, allowed: ["path", "protocol", "enabled"]) else { continue }
                    var path: String?
                    var enabled = true
                    for (k, v) in entry {
                        switch k {
                        case "path": path = reader.string(v)
                        case "enabled": enabled = reader.bool(v) ?? true
                        case "protocol": _ = reader.oneOf(v, ["openai": 0, "native": 1], what: "protocol")
                        default: break
                        }
                    }
                    if let path, !enabled { server.disabledPaths.insert(path) }
                }
            default: break
            }
        }
    }

    // MARK: providers

    func parseProviders(_ field: Field) -> [ProviderConfig] {
        guard let members = reader.namedMapping(field) else { return [] }
        var providers: [ProviderConfig] = []
        for (name, value) in members {
            if let provider = parseProvider(name: name, value) { providers.append(provider) }
        }
        return providers
    }

    func parseProvider(name: String, _ field: Field) -> ProviderConfig? {
        let allowed = [
            "type", "enabled", "priority", "weight", "base_url", "endpoint", "credentials", "api_key", "models", "headers",
            "max_concurrency", "timeout", "connect_timeout", "first_byte_timeout", "idle_timeout", "api", "anthropic_version",
        ]
        let notInProcess = "aimesh does not load models in process; run an inference server on this machine (llama.cpp's llama-server, vLLM, Ollama, LM Studio) and point this provider at it with base_url: http://127.0.0.1:PORT/v1"
        guard let members = reader.mapping(field, allowed: allowed + ["runtimes", "path", "model_path"]) else { return nil }
        let typeField = members.first { $0.key == "type" }?.field
        guard let typeField, let typeName = reader.string(typeField) else {
            reader.error(field, "provider '\(name)' needs a type (one of: \(ProviderCatalog.knownTypes.joined(separator: ", ")))")
            return nil
        }
        guard let (canonical, entry) = ProviderCatalog.entry(for: typeName) else {
            reader.error(typeField, "unknown provider type '\(typeName)'; expected one of: \(ProviderCatalog.knownTypes.joined(separator: ", "))")
            return nil
        }
        var provider = ProviderConfig(name: name, type: canonical, wireFormat: entry.wireFormat, isLocal: entry.isLocal, vendor: entry.vendor, baseURL: entry.defaultBaseURL ?? "")
        var baseURLField: Field?
        var unsetKeyVariable: String?
        for (key, value) in members {
            switch key {
            case "type": break
            case "runtimes", "path", "model_path": reader.error(value, notInProcess)
            case "enabled": provider.enabled = reader.bool(value) ?? provider.enabled
            case "priority": provider.priority = reader.int(value, range: 0...1_000_000) ?? provider.priority
            case "weight": provider.weight = reader.double(value, minimum: 0) ?? provider.weight
            case "base_url", "endpoint":
                baseURLField = value
                if let url = reader.string(value) {
                    var trimmed = url
                    while trimmed.hasSuffix("/") { trimmed.removeLast() }
                    provider.baseURL = trimmed
                }
            case "api_key":
                if let key = reader.string(value, unsetIsAllowed: true) { provider.credentials.apiKey = Secret(key) } else { unsetKeyVariable = reader.unsetVariables[value.path] }
            case "credentials":
                guard let creds = reader.mapping(value, allowed: ["api_key", "account_id", "api_token"]) else { continue }
                for (k, v) in creds {
                    switch k {
                    case "api_key":
                        if let key = reader.string(v, unsetIsAllowed: true) { provider.credentials.apiKey = Secret(key) } else { unsetKeyVariable = reader.unsetVariables[v.path] }
                    case "api_token":
                        if let key = reader.string(v, unsetIsAllowed: true) { provider.credentials.apiToken = Secret(key) } else { unsetKeyVariable = reader.unsetVariables[v.path] }
                    case "account_id": provider.credentials.accountID = reader.string(v, unsetIsAllowed: true)
                    default: break
                    }
                }
            case "models":
                provider.models = parseModels(value, provider: provider, notInProcess: notInProcess)
            case "headers":
                guard let headers = reader.namedMapping(value) else { continue }
                for (k, v) in headers {
                    if let text = reader.string(v) { provider.headers.append((k, text)) }
                }
            case "max_concurrency": provider.maxConcurrency = reader.int(value, range: 1...100_000)
            case "timeout", "first_byte_timeout": provider.firstByteTimeout = reader.duration(value) ?? provider.firstByteTimeout
            case "connect_timeout": provider.connectTimeout = reader.duration(value) ?? provider.connectTimeout
            case "idle_timeout": provider.idleTimeout = reader.duration(value) ?? provider.idleTimeout
            case "api":
                provider.cloudflareAPI = reader.oneOf(value, ["native": "native", "openai": "openai"], what: "Workers AI API") ?? provider.cloudflareAPI
                if entry.wireFormat != .cloudflare { reader.warning(value, "'api' only applies to cloudflare providers") }
            case "anthropic_version": provider.anthropicVersion = reader.string(value) ?? provider.anthropicVersion
            default: break
            }
        }
        if provider.baseURL.isEmpty {
            reader.error(baseURLField ?? field, "provider '\(name)' of type \(canonical) needs base_url (for example http://127.0.0.1:8000/v1)")
        } else if !(provider.baseURL.hasPrefix("http://") || provider.baseURL.hasPrefix("https://")) {
            reader.error(baseURLField ?? field, "base_url must start with http:// or https://, found '\(provider.baseURL)'")
        }
        if provider.models.isEmpty && members.contains(where: { $0.key == "models" }) == false {
            reader.error(field, "provider '\(name)' lists no models; add models: [{ name: ..., upstream_model: ... }]")
        }
        if entry.wireFormat == .cloudflare && provider.credentials.accountID == nil && provider.enabled && provider.credentials.bearer != nil && !provider.baseURL.contains("/accounts/") && !provider.baseURL.contains("gateway.ai.cloudflare.com") {
            reader.error(field, "cloudflare provider '\(name)' needs credentials.account_id")
        }
        if (entry.needsKey || unsetKeyVariable != nil) && provider.credentials.bearer == nil && provider.enabled {
            provider.enabled = false
            if let variable = unsetKeyVariable {
                provider.disabledReason = "environment variable \(variable) is not set"
            } else {
                provider.disabledReason = "no credentials.api_key"
            }
            reader.warning(field, "provider '\(name)' is disabled: \(provider.disabledReason!)")
        }
        return provider
    }

    func parseModels(_ field: Field, provider: ProviderConfig, notInProcess: String) -> [ModelConfig] {
        guard let items = reader.sequence(field) else { return [] }
        var models: [ModelConfig] = []
        var names: Set<String> = []
        let upstreamKeys = ["upstream_model", "openai_model", "cloudflare_model", "anthropic_model", "gemini_model", "model", "model_id"]
        let allowed = ["name", "capabilities", "cost_per_1k_tokens", "cost_per_generation", "input_cost_per_1m", "output_cost_per_1m",
                       "input_cost_per_1k", "output_cost_per_1k", "context_window", "max_output_tokens", "cache", "cache_ttl"] + upstreamKeys
        for item in items {
            if case .scalar = item.node {
                guard let name = reader.string(item) else { continue }
                if names.insert(name).inserted { models.append(ModelConfig(name: name)) } else { reader.error(item, "model '\(name)' is listed twice") }
                continue
            }
            guard let members = reader.mapping(item, allowed: allowed + ["path", "runtime", "format"]) else { continue }
            for (key, value) in members where ["path", "runtime", "format"].contains(key) { reader.error(value, notInProcess) }
            guard let nameField = members.first(where: { $0.key == "name" })?.field, let name = reader.string(nameField) else {
                reader.error(item, "a model needs a name (what clients ask for)")
                continue
            }
            var model = ModelConfig(name: name)
            var per1k: Double?
            for (key, value) in members {
                switch key {
                case "name", "path", "runtime", "format": break
                case _ where upstreamKeys.contains(key):
                    if let upstream = reader.string(value) { model.upstreamModel = upstream }
                case "capabilities": model.capabilities = reader.stringList(value) ?? model.capabilities
                case "cost_per_1k_tokens": per1k = reader.double(value, minimum: 0)
                case "cost_per_generation": model.costPerGeneration = reader.double(value, minimum: 0)
                case "input_cost_per_1m": model.price.inputPer1M = reader.double(value, minimum: 0) ?? 0
                case "output_cost_per_1m": model.price.outputPer1M = reader.double(value, minimum: 0) ?? 0
                case "input_cost_per_1k": model.price.inputPer1M = (reader.double(value, minimum: 0) ?? 0) * 1000
                case "output_cost_per_1k": model.price.outputPer1M = (reader.double(value, minimum: 0) ?? 0) * 1000
                case "context_window": model.contextWindow = reader.int(value, range: 1...100_000_000)
                case "max_output_tokens": model.maxOutputTokens = reader.int(value, range: 1...10_000_000)
                case "cache":
                    if case .scalar = value.node, let on = reader.bool(value) {
                        model.cacheTTL = on ? .seconds(3600) : nil
                    }
                case "cache_ttl": model.cacheTTL = reader.duration(value)
                default: break
                }
            }
            if let per1k {
                let hasSplit = members.contains { ["input_cost_per_1m", "output_cost_per_1m", "input_cost_per_1k", "output_cost_per_1k"].contains($0.key) }
                if hasSplit {
                    reader.warning(item, "cost_per_1k_tokens is ignored because input/output prices are set")
                } else {
                    model.price = Price(inputPer1M: per1k * 1000, outputPer1M: per1k * 1000)
                }
            }
            if names.insert(name).inserted { models.append(model) } else { reader.error(nameField, "model '\(name)' is listed twice in this provider") }
        }
        return models
    }

    // MARK: routing

    func parseRouting(_ field: Field, into routing: inout RoutingSection, providers: [ProviderConfig]) {
        let unsupported = ["policies": "routing.policies (rule expressions) are not evaluated by aimesh; express per-request needs with the x-aiproxy-strategy / x-aiproxy-max-cost / x-aiproxy-provider headers or the native request's routing object"]
        guard let members = reader.mapping(field, allowed: ["strategy", "failover", "load_balancing", "circuit_breaker"], unsupported: unsupported) else { return }
        for (key, value) in members {
            switch key {
            case "strategy":
                if let text = reader.string(value) {
                    if let strategy = RoutingStrategy(spelling: text) { routing.strategy = strategy } else {
                        reader.error(value, "unknown strategy '\(text)'; expected one of: \(RoutingStrategy.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                }
            case "failover":
                guard let items = reader.mapping(value, allowed: ["enabled", "max_retries", "retry_delay", "max_retry_delay", "fallback_chain", "attempt_timeout"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "enabled": routing.failover.enabled = reader.bool(v) ?? routing.failover.enabled
                    case "max_retries": routing.failover.maxRetries = reader.int(v, range: 0...20) ?? routing.failover.maxRetries
                    case "retry_delay": routing.failover.retryDelay = reader.duration(v) ?? routing.failover.retryDelay
                    case "max_retry_delay": routing.failover.maxRetryDelay = reader.duration(v) ?? routing.failover.maxRetryDelay
                    case "fallback_chain": routing.failover.fallbackChain = reader.stringList(v) ?? []
                    case "attempt_timeout": routing.failover.attemptTimeout = reader.duration(v)
                    default: break
                    }
                }
            case "load_balancing":
                guard let items = reader.mapping(value, allowed: ["enabled", "strategy", "health_aware", "unhealthy_threshold"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "enabled": routing.loadBalancing.enabled = reader.bool(v) ?? routing.loadBalancing.enabled
                    case "strategy":
                        if let text = reader.string(v) {
                            if let strategy = RoutingStrategy(spelling: text) { routing.loadBalancing.strategy = strategy } else {
                                reader.error(v, "unknown load-balancing strategy '\(text)'; expected round_robin, least_loaded or weighted")
                            }
                        }
                    case "health_aware": routing.loadBalancing.healthAware = reader.bool(v) ?? routing.loadBalancing.healthAware
                    case "unhealthy_threshold": routing.loadBalancing.unhealthyThreshold = reader.double(v, minimum: 0, maximum: 1) ?? routing.loadBalancing.unhealthyThreshold
                    default: break
                    }
                }
            case "circuit_breaker":
                guard let items = reader.mapping(value, allowed: ["consecutive_failures", "failure_ratio", "minimum_requests", "window", "open_duration"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "consecutive_failures": routing.circuitBreaker.consecutiveFailures = reader.int(v, range: 1...1000) ?? routing.circuitBreaker.consecutiveFailures
                    case "failure_ratio": routing.circuitBreaker.failureRatio = reader.double(v, minimum: 0, maximum: 1) ?? routing.circuitBreaker.failureRatio
                    case "minimum_requests": routing.circuitBreaker.minimumRequests = reader.int(v, range: 1...100_000) ?? routing.circuitBreaker.minimumRequests
                    case "window": routing.circuitBreaker.window = reader.duration(v) ?? routing.circuitBreaker.window
                    case "open_duration": routing.circuitBreaker.openDuration = reader.duration(v) ?? routing.circuitBreaker.openDuration
                    default: break
                    }
                }
            default: break
            }
        }
    }

    func checkFallbackChain(_ field: Field, routing: RoutingSection, providers: [ProviderConfig]) {
        let names = Set(providers.map(\.name))
        for entry in routing.failover.fallbackChain where entry != "mesh_peer" && !names.contains(entry) {
            reader.error(line: field.line, path: "routing.failover.fallback_chain", "'\(entry)' is not a provider in this file (nor 'mesh_peer')")
        }
    }

    // MARK: budget, observability, security

    func parseBudget(_ field: Field, into budget: inout BudgetSection) {
        guard let members = reader.mapping(field, allowed: ["enabled", "daily_limit", "monthly_limit", "track_costs", "cost_db", "alerts"]) else { return }
        for (key, value) in members {
            switch key {
            case "enabled": budget.enabled = reader.bool(value) ?? budget.enabled
            case "daily_limit": budget.dailyLimit = reader.double(value, minimum: 0)
            case "monthly_limit": budget.monthlyLimit = reader.double(value, minimum: 0)
            case "track_costs": budget.trackCosts = reader.bool(value) ?? budget.trackCosts
            case "cost_db":
                if let url = reader.string(value) {
                    if url.hasPrefix("sqlite://") {
                        var path = String(url.dropFirst("sqlite://".count))
                        if path.hasPrefix("/") && url.hasPrefix("sqlite:///") == false { path = String(path) }
                        budget.costDBPath = path
                    } else if url.contains("://") {
                        reader.error(value, "aimesh keeps its ledger in SQLite; use sqlite:///path/to/ledger.db or leave cost_db out (default: data_dir/ledger.sqlite)")
                    } else {
                        budget.costDBPath = url
                    }
                }
            case "alerts":
                guard let items = reader.sequence(value) else { continue }
                for item in items {
                    guard let alert = reader.mapping(item, allowed: ["threshold", "action"]) else { continue }
                    var threshold: Double?
                    var action: BudgetSection.AlertAction = .log
                    for (k, v) in alert {
                        switch k {
                        case "threshold": threshold = reader.double(v, minimum: 0, maximum: 100)
                        case "action": action = reader.oneOf(v, ["log": .log, "disable_paid_providers": .disablePaidProviders], what: "alert action") ?? .log
                        default: break
                        }
                    }
                    if let threshold { budget.alerts.append(.init(thresholdPercent: threshold, action: action)) } else { reader.error(item, "an alert needs a threshold (percent)") }
                }
            default: break
            }
        }
    }

    func parseObservability(_ field: Field, into observability: inout ObservabilitySection) {
        let unsupported = ["tracing": "tracing is not exported yet; request ids are in every response (x-aiproxy-request-id) and in the ledger"]
        guard let members = reader.mapping(field, allowed: ["logging", "metrics"], unsupported: unsupported) else { return }
        for (key, value) in members {
            switch key {
            case "logging":
                guard let items = reader.mapping(value, allowed: ["level", "format", "output"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "level":
                        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
                        observability.logLevel = reader.oneOf(v, Dictionary(uniqueKeysWithValues: levels.map { ($0, $0) }), what: "log level") ?? observability.logLevel
                    case "format": observability.logFormat = reader.oneOf(v, ["text": .text, "json": .json], what: "log format") ?? observability.logFormat
                    case "output": observability.logOutput = reader.string(v) ?? observability.logOutput
                    default: break
                    }
                }
            case "metrics":
                guard let items = reader.mapping(value, allowed: ["enabled", "prometheus_port", "path", "collect"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "enabled": observability.metricsEnabled = reader.bool(v) ?? observability.metricsEnabled
                    case "prometheus_port": observability.prometheusPort = reader.int(v, range: 0...65535)
                    case "path": observability.metricsPath = reader.string(v) ?? observability.metricsPath
                    case "collect": _ = reader.stringList(v)
                    default: break
                    }
                }
            default: break
            }
        }
    }

    func parseSecurity(_ field: Field, into security: inout SecuritySection) {
        guard let members = reader.mapping(field, allowed: ["auth", "rate_limiting", "cors"]) else { return }
        for (key, value) in members {
            switch key {
            case "auth":
                guard let items = reader.mapping(value, allowed: ["enabled", "type", "api_keys"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "enabled": security.authEnabled = reader.bool(v) ?? security.authEnabled
                    case "type":
                        if let type = reader.string(v), type != "api_key" {
                            reader.error(v, "auth type '\(type)' is not supported; aimesh checks API keys (type: api_key) from this file or made with `aimesh keys create`")
                        }
                    case "api_keys":
                        guard let keys = reader.sequence(v) else { continue }
                        for (index, item) in keys.enumerated() {
                            guard let entry = reader.mapping(item, allowed: ["key", "name", "rate_limit"]) else { continue }
                            var secret: Secret?
                            var name = "key-\(index + 1)"
                            var limit: Int?
                            for (ek, ev) in entry {
                                switch ek {
                                case "key": secret = reader.string(ev).map(Secret.init)
                                case "name": name = reader.string(ev) ?? name
                                case "rate_limit": limit = reader.int(ev, range: 1...100_000_000)
                                default: break
                                }
                            }
                            if let secret {
                                if secret.value.count < 8 { reader.error(item, "API key '\(name)' is shorter than 8 characters") } else {
                                    security.apiKeys.append(.init(key: secret, name: name, requestsPerHour: limit))
                                }
                            } else {
                                reader.error(item, "an API key entry needs key")
                            }
                        }
                    default: break
                    }
                }
            case "rate_limiting":
                guard let items = reader.mapping(value, allowed: ["enabled", "default_limit", "by_ip", "by_api_key"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "enabled": security.rateLimitingEnabled = reader.bool(v) ?? security.rateLimitingEnabled
                    case "default_limit": security.defaultRequestsPerHour = reader.int(v, range: 1...100_000_000)
                    case "by_ip": security.rateLimitByIP = reader.bool(v) ?? security.rateLimitByIP
                    case "by_api_key": security.rateLimitByAPIKey = reader.bool(v) ?? security.rateLimitByAPIKey
                    default: break
                    }
                }
            case "cors":
                guard let items = reader.mapping(value, allowed: ["enabled", "allowed_origins"]) else { continue }
                for (k, v) in items {
                    switch k {
                    case "enabled": security.corsEnabled = reader.bool(v) ?? security.corsEnabled
                    case "allowed_origins": security.corsAllowedOrigins = reader.stringList(v) ?? []
                    default: break
                    }
                }
            default: break
            }
        }
        if security.authEnabled && security.apiKeys.isEmpty {
            reader.warning(field, "auth is enabled but no api_keys are listed: every request will get 401 until keys are added")
        }
    }
}
