import CoreMetrics
import Metrics
import Prometheus
import Synchronization

/// The node's metrics, through swift-metrics onto a Prometheus registry of its own (so several nodes
/// in one process, as in tests, keep separate figures). Handles are cached by their labels.
public final class NodeMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    private let counters = Mutex<[String: CoreMetrics.Counter]>([:])
    private let floatCounters = Mutex<[String: CoreMetrics.FloatingPointCounter]>([:])
    private let timers = Mutex<[String: CoreMetrics.Timer]>([:])
    private let gauges = Mutex<[String: CoreMetrics.Gauge]>([:])

    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let fine: [Duration] = [.microseconds(50), .microseconds(100), .microseconds(200), .microseconds(300), .microseconds(500),
                                .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50)]
        factory.durationHistogramBuckets = ["aimesh_gateway_overhead_seconds": fine]
        factory.defaultDurationHistogramBuckets = [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                                   .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
                                                   .seconds(10), .seconds(30), .seconds(60)]
        self.registry = registry
        self.factory = factory
    }

    private func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        var key = label
        for (name, value) in dimensions {
            key += "|\(name)=\(value)"
        }
        return key
    }

    public func counter(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Counter {
        let key = key(label, dimensions)
        return counters.withLock { cache in
            if let counter = cache[key] { return counter }
            let counter = CoreMetrics.Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = counter
            return counter
        }
    }

    public func floatCounter(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.FloatingPointCounter {
        let key = key(label, dimensions)
        return floatCounters.withLock { cache in
            if let counter = cache[key] { return counter }
            let counter = CoreMetrics.FloatingPointCounter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = counter
            return counter
        }
    }

    public func timer(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Timer {
        let key = key(label, dimensions)
        return timers.withLock { cache in
            if let timer = cache[key] { return timer }
            let timer = CoreMetrics.Timer(label: label, dimensions: dimensions, preferredDisplayUnit: .seconds, factory: factory)
            cache[key] = timer
            return timer
        }
    }

    public func gauge(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Gauge {
        let key = key(label, dimensions)
        return gauges.withLock { cache in
            if let gauge = cache[key] { return gauge }
            let gauge = CoreMetrics.Gauge(label: label, dimensions: dimensions, factory: factory)
            cache[key] = gauge
            return gauge
        }
    }

    /// The handles a served request updates, per endpoint and route, looked up once per request
    /// (instead of building eight label keys and taking eight locks).
    public final class ServedRequest: Sendable {
        public let requests: CoreMetrics.Counter
        public let attemptOK: CoreMetrics.Counter
        public let duration: CoreMetrics.Timer
        public let overhead: CoreMetrics.Timer
        public let promptTokens: CoreMetrics.Counter
        public let completionTokens: CoreMetrics.Counter
        public let cost: CoreMetrics.FloatingPointCounter

        init(_ metrics: NodeMetrics, endpoint: String, route: String) {
            requests = metrics.counter("aimesh_requests_total", [("endpoint", endpoint), ("route", route), ("status", "200")])
            attemptOK = metrics.counter("aimesh_route_attempts_total", [("route", route), ("outcome", "ok")])
            duration = metrics.timer("aimesh_request_duration_seconds", [("endpoint", endpoint)])
            overhead = metrics.timer("aimesh_gateway_overhead_seconds", [("endpoint", endpoint)])
            promptTokens = metrics.counter("aimesh_tokens_total", [("route", route), ("direction", "prompt")])
            completionTokens = metrics.counter("aimesh_tokens_total", [("route", route), ("direction", "completion")])
            cost = metrics.floatCounter("aimesh_cost_usd_total", [("route", route)])
        }
    }

    private struct ServedKey: Hashable {
        var endpoint: String
        var route: String
    }

    private let served = Mutex<[ServedKey: ServedRequest]>([:])

    public func served(endpoint: String, route: String) -> ServedRequest {
        let key = ServedKey(endpoint: endpoint, route: route)
        if let bundle = served.withLock({ $0[key] }) { return bundle }
        let bundle = ServedRequest(self, endpoint: endpoint, route: route)
        return served.withLock { cache in
            if let existing = cache[key] { return existing }
            cache[key] = bundle
            return bundle
        }
    }

    /// Prometheus text exposition.
    public func render() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(16 * 1024)
        registry.emit(into: &buffer)
        return buffer
    }
}
