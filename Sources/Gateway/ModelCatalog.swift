import CurlHTTP
import MeshCore
import NodeConfig
import Providers
import Routing

/// The models this node's own providers serve, and the route to each.
public struct ModelCatalog: Sendable {
    public struct Entry: Sendable {
        public var provider: ProviderConfig
        public var model: ModelConfig
        public var route: ExecutableRoute
    }

    /// Model name → routes, in configuration order.
    public private(set) var entries: [String: [Entry]] = [:]
    /// Every provider, enabled or not, for status pages.
    public private(set) var providers: [ProviderConfig] = []
    /// Model name → its routes (the `route` of each entry), built once: a request copies an array, it
    /// does not map a new one.
    private var routesByModel: [String: [ExecutableRoute]] = [:]
    /// Model name → the longest `cache_ttl` among its providers' models, for those that set one.
    public private(set) var cacheTTLs: [String: Duration] = [:]

    public init(configuration: NodeConfiguration, client: CurlClient) {
        providers = configuration.providers
        var order = 0
        for provider in configuration.providers where provider.enabled {
            let adapter = ProviderFactory.make(ProviderSpec(
                name: provider.name, wireFormat: provider.wireFormat, baseURL: provider.baseURL,
                apiKey: provider.credentials.bearer?.value, accountID: provider.credentials.accountID, headers: provider.headers,
                cloudflareAPI: provider.cloudflareAPI, anthropicVersion: provider.anthropicVersion), client: client)
            for model in provider.models {
                let candidate = RouteCandidate(
                    id: "provider/\(provider.name)", kind: provider.isLocal ? .localServer : .cloud, name: provider.name,
                    upstreamModel: model.upstreamModel, price: model.price, priority: provider.priority, weight: provider.weight,
                    order: order, capabilities: ModelCatalog.capabilities(of: model), capacity: provider.maxConcurrency)
                let route = ExecutableRoute(candidate: candidate, adapter: adapter, connectTimeout: provider.connectTimeout,
                                            firstByteTimeout: provider.firstByteTimeout, idleTimeout: provider.idleTimeout,
                                            defaultMaxTokens: model.maxOutputTokens ?? 4096, pathSuffix: [provider.name])
                entries[model.name, default: []].append(Entry(provider: provider, model: model, route: route))
                routesByModel[model.name, default: []].append(route)
                if let ttl = model.cacheTTL { cacheTTLs[model.name] = max(cacheTTLs[model.name] ?? ttl, ttl) }
                order += 1
            }
        }
    }

    /// Capabilities as configured; a model named like an embedding model also gets `embeddings`.
    static func capabilities(of model: ModelConfig) -> [String] {
        var capabilities = model.capabilities
        let lower = model.name.lowercased() + " " + model.upstreamModel.lowercased()
        if (lower.contains("embed") || lower.contains("bge-")) && !capabilities.contains(Capability.embeddings) {
            capabilities.append(Capability.embeddings)
        }
        return capabilities
    }

    public var modelNames: [String] { entries.keys.sorted() }

    public func routes(for model: String) -> [ExecutableRoute] { routesByModel[model] ?? [] }
}
