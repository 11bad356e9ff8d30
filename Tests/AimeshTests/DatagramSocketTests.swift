import MeshCore
import NIOCore
import Synchronization
import Testing
@testable import Transport

/// The mesh's UDP socket on 127.0.0.1.
@Suite(.timeLimit(.minutes(1)))
struct DatagramSocketTests {
    /// A send the kernel refuses (a broadcast address without SO_BROADCAST, as a firewall rule or a
    /// missing route would) is counted and dropped; the socket goes on sending and receiving.
    @Test func refusedSend_isCounted_andTheSocketKeepsWorking() async throws {
        let a = try DatagramSocket(host: "127.0.0.1", port: 0)
        let b = try DatagramSocket(host: "127.0.0.1", port: 0)
        let received = Mutex<[([UInt8], PeerAddress)]>([])
        b.start { bytes, source in received.withLock { $0.append((bytes, source)) } }
        defer { a.close(); b.close() }

        #expect(!a.send([1, 2, 3], to: try SocketAddress(ipAddress: "255.255.255.255", port: 9)))
        #expect(a.sendFailures.load(ordering: .relaxed) == 1)
        #expect(a.send([4, 5, 6], to: try SocketAddress(ipAddress: "127.0.0.1", port: b.port)))
        #expect(await eventually { received.withLock { $0.count } == 1 })
        let (bytes, source) = try #require(received.withLock { $0.first })
        #expect(bytes == [4, 5, 6])
        #expect(source == PeerAddress(host: "127.0.0.1", port: UInt16(a.port)))
    }

    /// `close()` wakes the receiving thread at once (no polling) and later sends are refused.
    @Test func close_stopsTheReceiver() throws {
        let socket = try DatagramSocket(host: "127.0.0.1", port: 0)
        socket.start { _, _ in }
        socket.close()
        #expect(!socket.send([1], to: try SocketAddress(ipAddress: "127.0.0.1", port: 9)))
    }
}
