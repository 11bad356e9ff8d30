import CurlHTTP
import MeshCore

/// What the factory needs to know of a configured provider (kept free of the config module).
public struct ProviderSpec: Sendable {
    public var name: String
    public var wireFormat: WireFormat
    public var baseURL: String
    public var apiKey: String?
    public var accountID: String?
    public var headers: [(name: String, value: String)]
    public var cloudflareAPI: String
    public var anthropicVersion: String

    public init(name: String, wireFormat: WireFormat, baseURL: String, apiKey: String?, accountID: String? = nil,
                headers: [(name: String, value: String)] = [], cloudflareAPI: String = "native", anthropicVersion: String = "2023-06-01") {
        self.name = name
        self.wireFormat = wireFormat
        self.baseURL = baseURL
        self.apiKey = apiKey
        self.accountID = accountID
        self.headers = headers
        self.cloudflareAPI = cloudflareAPI
        self.anthropicVersion = anthropicVersion
    }
}

public enum ProviderFactory {
    public static func make(_ spec: ProviderSpec, client: CurlClient) -> any ProviderAdapter {
        switch spec.wireFormat {
        case .openAICompatible:
            OpenAIAdapter(name: spec.name, baseURL: spec.baseURL, apiKey: spec.apiKey, headers: spec.headers, client: client)
        case .anthropic:
            AnthropicAdapter(name: spec.name, baseURL: spec.baseURL, apiKey: spec.apiKey, version: spec.anthropicVersion, headers: spec.headers, client: client)
        case .gemini:
            GeminiAdapter(name: spec.name, baseURL: spec.baseURL, apiKey: spec.apiKey, headers: spec.headers, client: client)
        case .cloudflare:
            CloudflareAdapter(name: spec.name, baseURL: spec.baseURL, accountID: spec.accountID, apiToken: spec.apiKey, api: spec.cloudflareAPI, headers: spec.headers, client: client)
        }
    }
}
