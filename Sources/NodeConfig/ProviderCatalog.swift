import MeshCore

/// What each provider `type` means: its wire format, default base URL and whether it is a local server.
public enum ProviderCatalog {
    public struct Entry: Sendable {
        public var wireFormat: WireFormat
        public var defaultBaseURL: String?
        public var isLocal: Bool
        public var vendor: String
        /// Needs an API key to work.
        public var needsKey: Bool
    }

    static let entries: [String: Entry] = [
        // Inference servers on this machine or LAN: OpenAI-style, no key, price 0.
        "local": Entry(wireFormat: .openAICompatible, defaultBaseURL: nil, isLocal: true, vendor: "local", needsKey: false),
        "vllm": Entry(wireFormat: .openAICompatible, defaultBaseURL: "http://127.0.0.1:8000/v1", isLocal: true, vendor: "vllm", needsKey: false),
        "ollama": Entry(wireFormat: .openAICompatible, defaultBaseURL: "http://127.0.0.1:11434/v1", isLocal: true, vendor: "ollama", needsKey: false),
        "llamacpp": Entry(wireFormat: .openAICompatible, defaultBaseURL: "http://127.0.0.1:8080/v1", isLocal: true, vendor: "llamacpp", needsKey: false),
        "lmstudio": Entry(wireFormat: .openAICompatible, defaultBaseURL: "http://127.0.0.1:1234/v1", isLocal: true, vendor: "lmstudio", needsKey: false),
        "localai": Entry(wireFormat: .openAICompatible, defaultBaseURL: "http://127.0.0.1:8080/v1", isLocal: true, vendor: "localai", needsKey: false),
        "tgi": Entry(wireFormat: .openAICompatible, defaultBaseURL: "http://127.0.0.1:8080/v1", isLocal: true, vendor: "tgi", needsKey: false),
        // Clouds with OpenAI-style APIs.
        "openai_compatible": Entry(wireFormat: .openAICompatible, defaultBaseURL: nil, isLocal: false, vendor: "openai_compatible", needsKey: false),
        "openai": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.openai.com/v1", isLocal: false, vendor: "openai", needsKey: true),
        "groq": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.groq.com/openai/v1", isLocal: false, vendor: "groq", needsKey: true),
        "together": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.together.xyz/v1", isLocal: false, vendor: "together", needsKey: true),
        "openrouter": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://openrouter.ai/api/v1", isLocal: false, vendor: "openrouter", needsKey: true),
        "fireworks": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.fireworks.ai/inference/v1", isLocal: false, vendor: "fireworks", needsKey: true),
        "deepseek": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.deepseek.com/v1", isLocal: false, vendor: "deepseek", needsKey: true),
        "mistral": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.mistral.ai/v1", isLocal: false, vendor: "mistral", needsKey: true),
        "xai": Entry(wireFormat: .openAICompatible, defaultBaseURL: "https://api.x.ai/v1", isLocal: false, vendor: "xai", needsKey: true),
        // Their own formats.
        "anthropic": Entry(wireFormat: .anthropic, defaultBaseURL: "https://api.anthropic.com", isLocal: false, vendor: "anthropic", needsKey: true),
        "gemini": Entry(wireFormat: .gemini, defaultBaseURL: "https://generativelanguage.googleapis.com", isLocal: false, vendor: "gemini", needsKey: true),
        "cloudflare": Entry(wireFormat: .cloudflare, defaultBaseURL: "https://api.cloudflare.com/client/v4", isLocal: false, vendor: "cloudflare", needsKey: true),
    ]

    static let aliases: [String: String] = [
        "openai-compatible": "openai_compatible", "openai_compat": "openai_compatible", "openai-compat": "openai_compatible",
        "llama.cpp": "llamacpp", "llama_cpp": "llamacpp", "llama-cpp": "llamacpp", "llama-server": "llamacpp",
        "lm_studio": "lmstudio", "lm-studio": "lmstudio", "local_ai": "localai",
        "google": "gemini", "vertex_gemini": "gemini", "workers_ai": "cloudflare", "workers-ai": "cloudflare",
        "cloudflare_workers_ai": "cloudflare", "claude": "anthropic",
    ]

    public static func entry(for type: String) -> (canonical: String, entry: Entry)? {
        let lower = type.lowercased()
        let canonical = aliases[lower] ?? lower
        guard let entry = entries[canonical] else { return nil }
        return (canonical, entry)
    }

    public static var knownTypes: [String] { entries.keys.sorted() }
}
