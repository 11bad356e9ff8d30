import CurlHTTP
import Gateway
import MeshCore
import MeshState
import Membership
import Providers
import Routing
import Synchronization
import Transport
import Wire

/// Peers as routes (DESIGN.md §5): every live peer whose record advertises the model becomes a
/// candidate priced as it advertises, with latency = this node's RTT to it plus the peer's own provider
/// latency, and load = its advertised in-flight / capacity. Requests to it go over libcurl to its API
/// with a signed hop header.
final class MeshRoutes: RemoteRouteSource {
    let service: MeshService
    let client: CurlClient
    let maxHops: Int
    /// Forwarding timeouts (the executor narrows them to the request's deadline).
    let connectTimeout: Duration = .seconds(3)
    let firstByteTimeout: Duration = .seconds(120)
    let idleTimeout: Duration = .seconds(120)

    init(service: MeshService, client: CurlClient, maxHops: Int) {
        self.service = service
        self.client = client
        self.maxHops = maxHops
    }

    struct PeerOffer {
        var record: CapabilityRecord
        var models: [CapabilityRecord.Model]
        var rtt: Duration?
    }

    /// Live peers (alive members with a record) and what each offers of `model` (nil: every model)
    /// through a provider that is up.
    func offers(model: String?) -> [PeerOffer] {
        service.liveOffers(model: model).compactMap { offer in
            let record = offer.record
            let up = Set(record.providers.filter(\.up).map(\.name))
            let models = record.models.filter { (model == nil || $0.name == model) && (record.providers.isEmpty || up.contains($0.provider)) }
            guard !models.isEmpty else { return nil }
            return PeerOffer(record: record, models: models, rtt: offer.rtt)
        }
    }

    /// Peer routes built for a request that entered the mesh here (nothing visited yet), per model, with
    /// the digest of the offers they were built from (`MeshService.liveOffersDigest`): building them took
    /// 19 allocations and about 3 % of an entry node's CPU per request, and they change only when a
    /// peer's record, its liveness or its RTT does, which changes the digest.
    private let built = Mutex<[String: (digest: Int, routes: [ExecutableRoute])]>([:])
    private static let builtLimit = 256

    func routes(for model: String, visited: [String]) -> [ExecutableRoute] {
        // This node adds itself when forwarding; past max_hops only local routes remain.
        guard visited.count + 1 <= maxHops else { return [] }
        guard visited.isEmpty else { return buildRoutes(for: model, visited: visited) }
        let digest = service.liveOffersDigest(model: model)
        if let kept = built.withLock({ $0[model] }), kept.digest == digest { return kept.routes }
        let routes = buildRoutes(for: model, visited: [])
        built.withLock { built in
            // Any model name a client sends lands here: the cache stays bounded.
            if built.count >= Self.builtLimit && built[model] == nil { built.removeAll() }
            built[model] = (digest, routes)
        }
        return routes
    }

    private func buildRoutes(for model: String, visited: [String]) -> [ExecutableRoute] {
        let visitedIDs = visited.compactMap(NodeID.init(hex:))
        let excluded = Set(visitedIDs)
        let service = self.service
        return offers(model: model).enumerated().compactMap { index, offer -> ExecutableRoute? in
            let record = offer.record
            guard !excluded.contains(record.origin) else { return nil }
            // The peer picks its own best provider; it is offered at its cheapest and fastest.
            let cheapest = offer.models.min { $0.inputPer1M + $0.outputPer1M < $1.inputPer1M + $1.outputPer1M }!
            let providerLatency = record.providers.filter { p in offer.models.contains { $0.provider == p.name } && p.latencyMillis > 0 }.map(\.latencyMillis).min()
            var expected: Duration?
            if let rtt = offer.rtt { expected = rtt + .milliseconds(Int64(providerLatency ?? 0)) } else if let providerLatency { expected = .milliseconds(Int64(providerLatency)) }
            let errorRate = record.providers.filter { p in offer.models.contains { $0.provider == p.name } }.map(\.errorRate).min() ?? 0
            let capacity = record.maxConcurrency > 0 ? Int(record.maxConcurrency) : nil
            let load = capacity.map { min(1, Double(record.inFlight) / Double($0)) } ?? 0
            let name = record.name.isEmpty ? record.origin.short : record.name
            let capabilities = Array(Set(offer.models.flatMap(\.capabilities))).sorted()
            let candidate = RouteCandidate(
                id: "peer/\(name)", kind: .peer(nodeID: name), name: name, upstreamModel: model,
                price: Price(inputPer1M: cheapest.inputPer1M, outputPer1M: cheapest.outputPer1M), priority: 1000, weight: 1, order: 10_000 + index,
                capabilities: capabilities.isEmpty ? [Capability.textGeneration] : capabilities, expectedLatency: expected, capacity: capacity,
                advertisedLoad: load, errorRate: errorRate)
            let signer: OpenAIAdapter.BodySigner = { body, requestID in
                // A fresh id per attempt: a retry is not a replay.
                [(name: HopHeader.name, value: service.signHop(requestID: Self.attemptID(requestID), body: body, visited: visitedIDs, to: record.origin))]
            }
            let base = record.apiAddress.hasSuffix("/") ? String(record.apiAddress.dropLast()) : record.apiAddress
            let forwarding = OpenAIAdapter(name: name, baseURL: base + "/v1", apiKey: nil, client: client, requestStreamUsage: true, signer: signer)
            let adapter = PeerWatchedAdapter(inner: forwarding, peer: record.origin, peerName: name, service: service)
            return ExecutableRoute(candidate: candidate, adapter: adapter, connectTimeout: connectTimeout, firstByteTimeout: firstByteTimeout,
                                   idleTimeout: idleTimeout, defaultMaxTokens: 4096, pathSuffix: [name])
        }
    }

    /// The request id a forward is signed under: the request's own plus 32 random bits, so a retry of the
    /// same request to the same peer is a new hop, not a replay.
    static func attemptID(_ requestID: String) -> String {
        var random = FastRandom()
        return withUnsafeBytes(of: UInt32(truncatingIfNeeded: random.next()).bigEndian) { requestID + "." + ByteEncoding.hex($0) }
    }

    func remoteModels() -> [RemoteModel] {
        offers(model: nil).flatMap { offer in
            offer.models.map { model in
                RemoteModel(model: model.name, node: offer.record.name.isEmpty ? offer.record.origin.short : offer.record.name, providerKind: model.providerKind,
                            price: Price(inputPer1M: model.inputPer1M, outputPer1M: model.outputPer1M), available: true,
                            latency: offer.rtt)
            }
        }
    }

    func verifyForward(hop: String, body: [UInt8]) -> Result<ForwardedBy, APIError> {
        switch service.verifyHop(hop, body: body) {
        case .success(let verified):
            return .success(ForwardedBy(node: verified.fromName, visited: verified.visited.map(\.hex)))
        case .failure(let refusal):
            return .failure(APIError(status: 403, type: "permission_denied", code: "forward_refused", message: refusal.message))
        }
    }
}

/// A forward to a peer that gives up as soon as the mesh declares the peer dead (or it leaves): until the
/// answer's head arrives, the mesh's verdict (`MeshService.onGone`) aborts the transfer, so a request sent into a
/// partition or to a machine that vanished fails over within the failure-detection time instead of
/// waiting out its timeouts. Once a stream has started it runs to its end (a cut is reported in-stream).
struct PeerWatchedAdapter: ProviderAdapter {
    let inner: OpenAIAdapter
    let peer: NodeID
    let peerName: String
    let service: MeshService

    var name: String { inner.name }

    func chat(_ call: ChatCall) async throws -> ChatResult {
        var call = call
        call.abort = AbortSignal()
        return try await watched(call.abort!) { try await inner.chat(call) }
    }

    func embeddings(_ call: EmbeddingsCall) async throws -> CompletedResponse {
        var call = call
        call.abort = AbortSignal()
        return try await watched(call.abort!) { try await inner.embeddings(call) }
    }

    /// Until `operation` returns (the answer's head for a stream, the whole answer otherwise), the peer's
    /// death aborts its transfer, which fails with a connect error the executor fails over from. A callback
    /// the mesh calls, not a task racing the forward: no child tasks, no extra hops between threads.
    private func watched<T>(_ signal: AbortSignal, _ operation: () async throws -> T) async throws -> T {
        // The message is written only if the peer dies: most forwards never need it.
        let watch = service.onGone(peer) { [peerName] in signal.fire(PeerWatchedAdapter.goneMessage(peerName)) }
        defer { watch.cancel() }
        if signal.reason != nil { throw ProviderFailure(kind: .connect, message: PeerWatchedAdapter.goneMessage(peerName)) }
        return try await operation()
    }

    static func goneMessage(_ peerName: String) -> String {
        "\(peerName) became unreachable (the mesh declared it dead) before it answered"
    }
}
