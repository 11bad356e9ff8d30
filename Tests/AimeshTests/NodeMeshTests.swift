import Foundation
import MeshCore
import MeshState
@testable import Node
import NodeConfig
import Sodium
import Logging
import Testing

/// Whole nodes (gateway + mesh) in this process, gossiping over 127.0.0.1.
@Suite(.timeLimit(.minutes(1)), .serialized)
struct NodeMeshTests {
    static let fastMesh = "probe_interval: 200ms, probe_timeout: 80ms, gossip_interval: 50ms, push_pull_interval: 2s"


    @Test func twoNodes_shareModelsPricesAndGPUs_neverSecrets() async throws {
        // A fake nvidia-smi (not by changing PATH: setenv while another thread starts a process can crash it).
        let bin = temporaryDirectory("fake-gpu")
        let script = bin + "/nvidia-smi"
        try "#!/bin/sh\necho 'NVIDIA GeForce RTX 4090, 24564, 1234, 37'\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        GPUProbe.command.withLock { $0 = script }
        defer { GPUProbe.command.withLock { $0 = "nvidia-smi" } }  // other tests' nodes see no fake GPU

        try await withMocks([.init(name: "gpu")]) { mocks in
            let a = try await TestNode.start(yaml: """
            providers:
              local: { type: local, base_url: \(mocks[0].baseURL)/v1, models: [ { name: llama-3.1-8b, context_window: 131072 } ] }
              groq:  { type: groq, api_key: sk-very-secret-123, models: [ { name: llama-3.1-8b, input_cost_per_1m: 0.05, output_cost_per_1m: 0.08 } ] }
            """, name: "alpha", nodeExtra: "region: eu-west, type: gpu, mesh: { enabled: true, listen_addr: \"127.0.0.1:0\", \(Self.fastMesh) }")
            let gossipA = try #require(a.runtime.mesh?.boundPort)
            let b = try await TestNode.start(yaml: "", name: "beta",
                                             nodeExtra: "mesh: { enabled: true, listen_addr: \"127.0.0.1:0\", peers: [\"127.0.0.1:\(gossipA)\"], \(Self.fastMesh) }")
            defer { Task { await a.stop(); await b.stop() } }

            #expect(try await eventually {
                let status = try await b.get("/aiproxy/mesh/status").json
                return status["peers"]?.arrayValue?.first?["status"]?.stringValue == "healthy"
                    && status["peers"]?.arrayValue?.first?["models_available"]?.arrayValue?.isEmpty == false
                    && status["peers"]?.arrayValue?.first?["latency_ms"]?.doubleValue != nil
            }, "beta sees alpha healthy, with its models")
            let status = try await b.get("/aiproxy/mesh/status").json
            let peer = try #require(status["peers"]?[0])
            #expect(peer["id"]?.stringValue == "alpha")
            #expect(peer["models_available"]?.arrayValue?.compactMap(\.stringValue) == ["llama-3.1-8b"])
            #expect(peer["latency_ms"]?.doubleValue != nil)
            #expect(peer["load"]?.doubleValue == 0)

            // GPUs are probed off the event loop and advertised with the next re-advertise (≤ ~1 s).
            #expect(try await eventually {
                let table = try await b.get("/aiproxy/mesh/table").json
                return table["records"]?.arrayValue?.first { $0["name"]?.stringValue == "alpha" }?["gpus"]?.arrayValue?.isEmpty == false
            })
            let table = try await b.get("/aiproxy/mesh/table")
            #expect(table.status == 200)
            #expect(!table.text.contains("sk-very-secret"), "credentials never leave their node")
            let alpha = try #require(table.json["records"]?.arrayValue?.first { $0["name"]?.stringValue == "alpha" })
            #expect(alpha["region"]?.stringValue == "eu-west" && alpha["type"]?.stringValue == "gpu")
            let models = alpha["models"]?.arrayValue ?? []
            #expect(models.contains { $0["provider_kind"]?.stringValue == "local" && $0["local"]?.boolValue == true && $0["context_window"]?.intValue == 131072 })
            #expect(models.contains { $0["provider_kind"]?.stringValue == "groq" && $0["output_cost_per_1m"]?.doubleValue == 0.08 })
            #expect(alpha["gpus"]?[0]?["name"]?.stringValue == "NVIDIA GeForce RTX 4090")
            #expect(alpha["gpus"]?[0]?["memory_total_mb"]?.intValue == 24564)
            #expect(alpha["providers"]?.arrayValue?.map { $0["name"]?.stringValue } == ["local", "groq"])
            #expect(alpha["observed"]?["status"]?.stringValue == "healthy")
            #expect(try await a.get("/aiproxy/mesh/table").json["records"]?.arrayValue?.count == 2)

            let metrics = try await b.get("/metrics").text
            #expect(metrics.contains("aimesh_mesh_events_total"))
            // Gossip traffic is counted by transport and direction: b has sent and received UDP by now.
            func value(_ name: String, _ labels: String) -> Double {
                metrics.split(separator: "\n").first { $0.hasPrefix(name + "{") && $0.contains(labels) }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            }
            #expect(value("aimesh_gossip_packets_total", #"transport="udp",direction="received""#) > 0)
            #expect(value("aimesh_gossip_bytes_total", #"transport="udp",direction="sent""#) > value("aimesh_gossip_packets_total", #"transport="udp",direction="sent""#) * 100,
                    "bytes, not packets: a signed packet is over 100 bytes")
        }
    }

    @Test func gpuProbe_parsesNvidiaSmi_andToleratesItsAbsence() {
        let gpus = GPUProbe.parse("NVIDIA A100-SXM4-80GB, 81920, 100, 5\nbroken line\nNVIDIA L4, 23034, 22000, 99\n")
        #expect(gpus.count == 2)
        #expect(gpus[1].name == "NVIDIA L4" && gpus[1].memoryUsedMB == 22000 && gpus[1].utilizationPercent == 99)
        #expect(GPUProbe.parse("").isEmpty)
    }

    @Test func meshWithoutANodeFlag_isOff() async throws {
        let node = try await TestNode.start(yaml: "", name: "solo")
        defer { Task { await node.stop() } }
        #expect(node.runtime.mesh == nil)
        let table = try await node.get("/aiproxy/mesh/table")
        #expect(table.status == 404)
        #expect(table.json["error"]?["code"]?.stringValue == "mesh_disabled")
    }

    @Test func caMode_withoutAGoodCertificate_refusesToStart_sayingWhatToDo() throws {
        let dir = temporaryDirectory("ca-start")
        let admin = Ed25519.KeyPair.generate()
        var logger = Logging.Logger(label: "t")
        logger.logLevel = .critical
        /// Why the loader or the node refuses this trust section ("" when it starts).
        func refusal(_ extra: String) -> String {
            let yaml = "node: { id: n, data_dir: \"\(dir)\", mesh: { enabled: true, listen_addr: \"127.0.0.1:0\", trust: { mode: ca\(extra) } } }\n"
            let outcome = ConfigLoader.parse(yaml: yaml, file: "t.yaml", environment: [:])
            guard let configuration = outcome.configuration else { return outcome.diagnostics.map(\.description).joined(separator: "\n") }
            do {
                _ = try NodeRuntime(configuration: configuration, logger: logger)
                return ""
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal("").contains("admin_public_key"))
        let noCertificate = refusal(", admin_public_key: \"\(admin.nodeID.hex)\"")
        #expect(noCertificate.contains("certificate"), "\(noCertificate)")
        // A certificate for another node.
        let other = Ed25519.KeyPair.generate()
        let certificate = Certificate.issue(node: other.nodeID, name: "x", issuedAtMillis: 0, expiresAtMillis: Int64.max / 2, admin: admin)
        try certificate.fileText.write(toFile: dir + "/node.cert", atomically: true, encoding: .utf8)
        let wrongNode = refusal(", admin_public_key: \"\(admin.nodeID.hex)\", certificate: \"\(dir)/node.cert\"")
        #expect(wrongNode.contains("is for node"), "\(wrongNode)")
        // The right node's certificate starts.
        let mine = try KeyFile.load(path: dir + "/node.key", kind: "node")
        try Certificate.issue(node: mine.nodeID, name: "n", issuedAtMillis: 0, expiresAtMillis: Int64.max / 2, admin: admin).fileText
            .write(toFile: dir + "/node.cert", atomically: true, encoding: .utf8)
        #expect(refusal(", admin_public_key: \"\(admin.nodeID.hex)\", certificate: \"\(dir)/node.cert\"") == "")
    }
}
