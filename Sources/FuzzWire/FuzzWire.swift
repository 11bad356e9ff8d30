import MeshCore
import MeshState
import NodeConfig
import Providers
import Sodium
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry: every parser of untrusted input must reject bad input without crashing — the mesh
/// decoders, the hop and admin headers, the JSON and SSE parsers, client request bodies (and their
/// translation for each vendor), upstream answers (bodies and streams of each vendor), the config loader.
/// Built with `scripts/fuzz` (`-sanitize=fuzzer,address -DFUZZING`); a normal build makes a replayer
/// that runs files (a corpus, a crash) through the same function.
///
/// `AIMESH_FUZZ_TARGET` (wire, hop, json, sse, request, upstream, config) sends every input to one parser; without it the
/// first byte picks the mesh decoder, so one corpus reaches all of them.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    switch FuzzTarget.chosen {
    case .wire: fuzzMeshDecoders(bytes)
    case .hop:
        let text = String(decoding: bytes, as: UTF8.self)
        if let header = try? HopHeader(value: text) { _ = header.isValid(key: FuzzKeys.hop) }
        _ = AdminSignature.verify(text, method: "GET", target: "/aiproxy/mesh/table", nowMillis: 0)
        // The other header values a client sends that are more than strings: x-aiproxy-timeout and
        // x-aiproxy-cache-ttl (a duration, bare numbers in ms or s), sizes and durations in config.
        _ = Units.parseDuration(text)
        _ = Units.parseDuration(text + "ms")
        _ = Units.parseByteSize(text)
    case .json:
        _ = try? JSONParser.parse(bytes)
        // Checking without building (`keeping`) must accept and refuse exactly what building does.
        let built = try? JSONParser.parseTopLevelObject(bytes)
        let checked = try? JSONParser.parseTopLevelObject(bytes, keeping: ["usage"])
        precondition((built == nil) == (checked == nil), "keeping: accepted \(checked != nil), building: \(built != nil)")
        if let built, let checked {
            precondition(built.valueRanges == checked.valueRanges && built.closingBrace == checked.closingBrace, "keeping: other ranges")
            precondition(built.object["usage"] == checked.object["usage"], "keeping: another value for a kept member")
        }
        // Nor may leaving the ranges out (a stream's events): same verdict, same members, same braces.
        let unranged = try? JSONParser.parseTopLevelObject(bytes, keeping: ["usage"], recordingRanges: false)
        precondition((built == nil) == (unranged == nil), "without ranges: accepted \(unranged != nil), building: \(built != nil)")
        if let checked, let unranged {
            precondition(unranged.valueRanges.isEmpty && unranged.object == checked.object && unranged.closingBrace == checked.closingBrace,
                         "without ranges: another object")
        }
    case .sse:
        // In two pieces, split where the first byte says: events straddle reads in real streams.
        var parser = SSEParser()
        let cut = Int(bytes[0]) % bytes.count
        _ = try? parser.feed(bytes[..<cut])
        _ = try? parser.feed(bytes[cut...])
    case .request: ParserExercise.clientRequest(bytes)
    case .upstream: ParserExercise.upstreamResponse(bytes)
    case .config:
        _ = ConfigLoader.parse(yaml: String(decoding: bytes, as: UTF8.self), file: "fuzz.yaml", environment: ["KEY": "value"])
    }
    return 0
}

enum FuzzTarget: String, CaseIterable {
    case wire, hop, json, sse, request, upstream, config
    static let chosen: FuzzTarget = getenv("AIMESH_FUZZ_TARGET").flatMap { FuzzTarget(rawValue: String(cString: $0)) } ?? .wire
}

func fuzzMeshDecoders(_ bytes: [UInt8]) {
    let body = Array(bytes.dropFirst())
    switch bytes[0] % 6 {
    case 0: _ = try? Packet.decode(body, meshKeys: [])
    case 1: _ = try? Packet.decode(body, meshKeys: [FuzzKeys.mesh])
    case 2:
        var reader = ByteReader(body)
        while !reader.isAtEnd { guard (try? reader.message(maxBody: WireLimits.maxTCPFrame)) != nil else { break } }
    case 3: _ = try? CapabilityRecord(signed: body)
    case 4:
        _ = try? Certificate(bytes: body)
        _ = try? Revocation(bytes: body)
    default:
        var buffer = body
        _ = try? Frame.split(&buffer)
    }
}

enum FuzzKeys {
    static let mesh = Packet.MeshKey([UInt8](repeating: 3, count: 32))!
    static let signer = Ed25519.KeyPair(seed: [UInt8](repeating: 4, count: 32))!
    static let hop = SecretBytes([UInt8](repeating: 5, count: 32))

    /// Valid encodings of every shape, as a starting corpus.
    static func corpus() -> [[UInt8]] {
        let n1 = NodeID(testNumber: 1), n2 = NodeID(testNumber: 2)
        let address = PeerAddress(host: "127.0.0.1", port: 7946)
        let messages: [MeshMessage] = [
            .ping(seq: 1, target: n1), .ack(seq: 2), .pingReq(seq: 3, target: n2, address: address), .nack(seq: 4),
            .alive(Alive(node: n1, incarnation: 5, address: address, certificate: [1, 2, 3])),
            .suspect(Accusation(node: n1, incarnation: 6, from: n2)), .dead(Accusation(node: n2, incarnation: 7, from: n2)),
            .record([9, 9]), .revocation([8]), .digest([DigestEntry(origin: n1, version: 9)]),
            .members([MemberState(alive: Alive(node: n2, incarnation: 1, address: address), status: .alive)]),
        ]
        var out: [[UInt8]] = []
        out.append([0] + Packet.encode(messages, signer: signer, meshKey: nil))
        out.append([1] + Packet.encode(messages, signer: signer, meshKey: mesh))
        var writer = ByteWriter()
        for message in messages { writer.message(message) }
        out.append([2] + writer.bytes)
        let record = CapabilityRecord(origin: signer.nodeID, version: 1, issuedAtMillis: 1, expiresAtMillis: 2, apiAddress: "http://x", gossipAddress: address,
                                      models: [.init(name: "m", provider: "p", providerKind: "local", local: true, inputPer1M: 0, outputPer1M: 0)],
                                      gpus: [.init(name: "g", memoryTotalMB: 1, memoryUsedMB: 1, utilizationPercent: 1)],
                                      providers: [.init(name: "p", kind: "k", up: true, errorRate: 0, latencyMillis: 1)])
        out.append([3] + record.signed(by: signer))
        out.append([4] + Certificate.issue(node: n1, name: "n", issuedAtMillis: 1, expiresAtMillis: 2, admin: signer).bytes)
        out.append([5] + Frame.wrap([1, 2, 3]))
        return out
    }
}

#if !FUZZING
@main
struct FuzzWireReplayer {
    /// `FuzzWire --write-corpus DIR` writes the mesh decoders' seed inputs; `FuzzWire FILE…` replays inputs
    /// (through the parser `AIMESH_FUZZ_TARGET` names).
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-corpus", arguments.count == 2 {
            mkdir(arguments[1], 0o755)
            for (index, input) in FuzzKeys.corpus().enumerated() {
                let path = "\(arguments[1])/seed-\(index)"
                guard let file = fopen(path, "wb") else { continue }
                _ = input.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, $0.count, file) }
                fclose(file)
            }
            return
        }
        for path in arguments {
            guard let bytes = readFileBytes(path) else { continue }
            _ = bytes.withUnsafeBufferPointer { fuzzWire($0.baseAddress, $0.count) }
        }
        print("replayed \(arguments.count) input(s) without a crash")
    }
}
#endif
