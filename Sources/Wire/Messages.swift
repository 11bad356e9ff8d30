import MeshCore

/// Limits on everything a packet may hold (PROTOCOL.md §3). Decoding refuses anything larger.
public enum WireLimits {
    /// Largest UDP datagram a node sends or accepts (memberlist's default, safe under common MTUs).
    public static let maxUDPPacket = 1400
    /// Largest TCP frame.
    public static let maxTCPFrame = 4 << 20
    public static let maxMessagesPerPacket = 64
    public static let maxHostBytes = 255
    public static let maxCertificateBytes = 512
    /// A signed capability record.
    public static let maxRecordBytes = 256 * 1024
    public static let maxDigestEntries = 4096
    public static let maxMembersPerFrame = 4096
    public static let maxRecordsPerFrame = 4096
}

/// Membership status as gossiped.
public enum MemberStatus: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case alive = 0
    case suspect = 1
    case dead = 2
    /// Left on purpose (graceful leave); treated as dead but never as a failure.
    case left = 3

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .left: "left"
        }
    }
}

/// "I am alive at this address with this incarnation" — issued by the node itself, relayed by others.
public struct Alive: Sendable, Equatable {
    public var node: NodeID
    public var incarnation: UInt64
    public var address: PeerAddress
    /// The node's certificate (trust mode `ca`), so that receivers can admit it; empty in `open` mode.
    public var certificate: [UInt8]

    public init(node: NodeID, incarnation: UInt64, address: PeerAddress, certificate: [UInt8] = []) {
        self.node = node
        self.incarnation = incarnation
        self.address = address
        self.certificate = certificate
    }
}

/// "`from` suspects / declares dead `node` at `incarnation`". `from == node` with `.dead` is a leave.
public struct Accusation: Sendable, Equatable {
    public var node: NodeID
    public var incarnation: UInt64
    public var from: NodeID

    public init(node: NodeID, incarnation: UInt64, from: NodeID) {
        self.node = node
        self.incarnation = incarnation
        self.from = from
    }
}

public struct DigestEntry: Sendable, Equatable {
    public var origin: NodeID
    public var version: UInt64
    public init(origin: NodeID, version: UInt64) {
        self.origin = origin
        self.version = version
    }
}

/// One member's state as exchanged in push-pull.
public struct MemberState: Sendable, Equatable {
    public var alive: Alive
    public var status: MemberStatus
    public init(alive: Alive, status: MemberStatus) {
        self.alive = alive
        self.status = status
    }
}

/// Every message of the protocol. Codes are part of the wire format (PROTOCOL.md §4).
public enum MeshMessage: Sendable, Equatable {
    /// Direct probe. `target` guards against a reused address answering for someone else.
    case ping(seq: UInt32, target: NodeID)
    case ack(seq: UInt32)
    /// Ask the receiver to probe `target` at `address` and relay the ack back (indirect probe).
    case pingReq(seq: UInt32, target: NodeID, address: PeerAddress)
    /// Lifeguard: the intermediary of an indirect probe got no ack in time.
    case nack(seq: UInt32)
    case alive(Alive)
    case suspect(Accusation)
    case dead(Accusation)
    /// A signed capability record, relayed byte for byte.
    case record([UInt8])
    /// An admin-signed revocation, relayed byte for byte.
    case revocation([UInt8])
    /// Scuttlebutt digest: the newest record version this node holds per origin.
    case digest([DigestEntry])
    /// Push-pull (TCP only): full membership state.
    case members([MemberState])
    /// An admin-signed API key record (only the key's hash), relayed byte for byte.
    case apiKey([UInt8])

    public var code: UInt8 {
        switch self {
        case .ping: 1
        case .ack: 2
        case .pingReq: 3
        case .nack: 4
        case .alive: 5
        case .suspect: 6
        case .dead: 7
        case .record: 8
        case .revocation: 9
        case .digest: 10
        case .members: 11
        case .apiKey: 12
        }
    }

    public var name: String {
        switch self {
        case .ping: "ping"
        case .ack: "ack"
        case .pingReq: "ping_req"
        case .nack: "nack"
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .record: "record"
        case .revocation: "revocation"
        case .digest: "digest"
        case .members: "members"
        case .apiKey: "api_key"
        }
    }
}

extension ByteWriter {
    public mutating func nodeID(_ id: NodeID) { raw(id.bytes) }

    public mutating func address(_ address: PeerAddress) {
        string8(address.host)
        u16(address.port)
    }

    mutating func alive(_ alive: Alive) {
        nodeID(alive.node)
        u64(alive.incarnation)
        address(alive.address)
        blob16(alive.certificate)
    }

    mutating func accusation(_ accusation: Accusation) {
        nodeID(accusation.node)
        u64(accusation.incarnation)
        nodeID(accusation.from)
    }

    /// One message as type, u32 length, body (the length lets a reader skip what it cannot use).
    public mutating func message(_ message: MeshMessage) {
        u8(message.code)
        let lengthAt = bytes.count
        u32(0)
        let start = bytes.count
        switch message {
        case .ping(let seq, let target):
            u32(seq)
            nodeID(target)
        case .ack(let seq), .nack(let seq):
            u32(seq)
        case .pingReq(let seq, let target, let address):
            u32(seq)
            nodeID(target)
            self.address(address)
        case .alive(let value):
            alive(value)
        case .suspect(let value), .dead(let value):
            accusation(value)
        case .record(let bytes), .revocation(let bytes), .apiKey(let bytes):
            raw(bytes)
        case .digest(let entries):
            u16(UInt16(entries.count))
            for entry in entries {
                nodeID(entry.origin)
                u64(entry.version)
            }
        case .members(let members):
            u16(UInt16(members.count))
            for member in members {
                alive(member.alive)
                u8(member.status.rawValue)
            }
        }
        patchU32(at: lengthAt, UInt32(bytes.count - start))
    }
}

extension ByteReader {
    public mutating func nodeID() throws(WireError) -> NodeID {
        let bytes = try raw(NodeID.byteCount)
        return NodeID(bytes: bytes)!
    }

    public mutating func address() throws(WireError) -> PeerAddress {
        let host = try string8(max: WireLimits.maxHostBytes, what: "host")
        guard !host.isEmpty else { throw .malformed("empty host") }
        let port = try u16()
        guard port != 0 else { throw .malformed("port 0") }
        return PeerAddress(host: host, port: port)
    }

    mutating func alive() throws(WireError) -> Alive {
        let node = try nodeID()
        let incarnation = try u64()
        let address = try address()
        let certificate = try blob16(max: WireLimits.maxCertificateBytes, what: "certificate")
        return Alive(node: node, incarnation: incarnation, address: address, certificate: certificate)
    }

    mutating func accusation() throws(WireError) -> Accusation {
        Accusation(node: try nodeID(), incarnation: try u64(), from: try nodeID())
    }

    /// One message; the body must use exactly its declared length.
    public mutating func message(maxBody: Int) throws(WireError) -> MeshMessage {
        let code = try u8()
        let length = Int(try u32())
        guard length <= maxBody else { throw .oversized("message body") }
        guard length <= remaining else { throw .truncated }
        var body = ByteReader(bytes, offset: offset, end: offset + length)
        try skip(length)
        let message: MeshMessage
        switch code {
        case 1: message = .ping(seq: try body.u32(), target: try body.nodeID())
        case 2: message = .ack(seq: try body.u32())
        case 3: message = .pingReq(seq: try body.u32(), target: try body.nodeID(), address: try body.address())
        case 4: message = .nack(seq: try body.u32())
        case 5: message = .alive(try body.alive())
        case 6: message = .suspect(try body.accusation())
        case 7: message = .dead(try body.accusation())
        case 8, 9:
            guard length <= WireLimits.maxRecordBytes else { throw .oversized("record") }
            guard length > 0 else { throw .malformed("empty record") }
            let bytes = try body.raw(length)
            message = code == 8 ? .record(bytes) : .revocation(bytes)
        case 10:
            let count = try body.count16(max: WireLimits.maxDigestEntries, what: "digest")
            guard body.remaining == count * 40 else { throw body.remaining < count * 40 ? .truncated : .trailingBytes(body.remaining - count * 40) }
            var entries: [DigestEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count { entries.append(DigestEntry(origin: try body.nodeID(), version: try body.u64())) }
            message = .digest(entries)
        case 11:
            let count = try body.count16(max: WireLimits.maxMembersPerFrame, what: "member list")
            var members: [MemberState] = []
            members.reserveCapacity(min(count, 256))
            for _ in 0..<count {
                let alive = try body.alive()
                guard let status = MemberStatus(rawValue: try body.u8()) else { throw .malformed("member status") }
                members.append(MemberState(alive: alive, status: status))
            }
            message = .members(members)
        case 12:
            guard length > 0, length <= 8192 else { throw length == 0 ? .malformed("empty key record") : .oversized("key record") }
            message = .apiKey(try body.raw(length))
        default:
            throw .unknownType(code)
        }
        try body.expectEnd()
        return message
    }
}

extension MeshMessage {
    /// Encoded size in a packet (type + length + body).
    public var encodedSize: Int {
        var writer = ByteWriter(capacity: 64)
        writer.message(self)
        return writer.bytes.count
    }
}
