import MeshCore
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The mesh's UDP socket: a plain POSIX datagram socket with one receiving thread.
///
/// NIO's datagram channel closes itself on any send error it does not know as recoverable — `EPERM`
/// from a local firewall rule, `ENETUNREACH` or `ECONNREFUSED` from an unreachable peer — which would
/// silence a node's gossip for good the first time one peer could not be reached (the chaos partition
/// scenario found it). Here a failed send is counted and dropped, like a lost datagram, and the socket
/// keeps serving everyone else. Gossip is a few hundred packets a second at most; one thread is plenty.
final class DatagramSocket: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let stopped = Atomic<Bool>(false)
    private let thread = Mutex<pthread_t?>(nil)
    let sendFailures = Atomic<Int>(0)

    struct BindError: Error, CustomStringConvertible {
        var description: String
    }

    init(host: String, port: Int) throws {
        let address: SocketAddress
        do { address = try SocketAddress(ipAddress: host, port: port) } catch {
            throw BindError(description: "cannot listen for gossip on \(host):\(port): not an IP address")
        }
        let family = address.protocol.rawValue
        #if canImport(Glibc)
        let descriptor = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let descriptor = socket(family, SOCK_DGRAM, 0)
        #endif
        guard descriptor >= 0 else { throw BindError(description: "cannot open a UDP socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var buffer: Int32 = 4 << 20
        setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &buffer, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockAddr { pointer, length in bind(descriptor, pointer, socklen_t(length)) }
        guard bound == 0 else {
            let code = errno
            Self.closeDescriptor(descriptor)
            throw BindError(description: "cannot listen for gossip on \(host):\(port) (UDP): \(String(cString: strerror(code)))")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        self.fd = descriptor
        self.port = Int(Self.peer(from: storage)?.port ?? UInt16(port))
    }

    /// Starts the receiving thread; `receive` is called on it for every datagram.
    func start(_ receive: @escaping @Sendable ([UInt8], PeerAddress) -> Void) {
        final class Box {
            let socket: DatagramSocket
            let receive: @Sendable ([UInt8], PeerAddress) -> Void
            init(_ socket: DatagramSocket, _ receive: @escaping @Sendable ([UInt8], PeerAddress) -> Void) { self.socket = socket; self.receive = receive }
        }
        let box = Unmanaged.passRetained(Box(self, receive)).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            box.socket.receiveLoop(box.receive)
            return nil
        }, box)
        precondition(result == 0, "could not start the gossip receiver thread")
        thread.withLock { $0 = handle }
    }

    private func receiveLoop(_ receive: @Sendable ([UInt8], PeerAddress) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            // Blocks until a datagram arrives or `close()` shuts the socket down (then it returns 0).
            let count = buffer.withUnsafeMutableBytes { bytes in
                withUnsafeMutablePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, bytes.baseAddress, bytes.count, 0, $0, &length) }
                }
            }
            if stopped.load(ordering: .relaxed) { return }
            // Errors (ECONNREFUSED from an earlier send, EAGAIN, …) concern one datagram, never the socket.
            guard count > 0, let source = Self.peer(from: storage) else { continue }
            receive(Array(buffer[0..<count]), source)
        }
    }

    /// Sends one datagram; false when the kernel refused it (counted, and otherwise treated as lost).
    @discardableResult
    func send(_ bytes: [UInt8], to address: SocketAddress) -> Bool {
        guard !stopped.load(ordering: .relaxed) else { return false }
        let sent = bytes.withUnsafeBytes { payload in
            address.withSockAddr { pointer, length in sendto(fd, payload.baseAddress, payload.count, Int32(MSG_DONTWAIT), pointer, socklen_t(length)) }
        }
        if sent < 0 { sendFailures.add(1, ordering: .relaxed) }
        return sent >= 0
    }

    func close() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        // Wakes the receiving thread out of recvfrom (Linux does this for datagram sockets too).
        _ = shutdown(fd, Int32(SHUT_RDWR))
        if let handle = thread.withLock({ $0 }) { pthread_join(handle, nil) }
        Self.closeDescriptor(fd)
    }

    private static func closeDescriptor(_ descriptor: Int32) {
        #if canImport(Glibc)
        _ = Glibc.close(descriptor)
        #else
        _ = Darwin.close(descriptor)
        #endif
    }

    static func peer(from storage: sockaddr_storage) -> PeerAddress? {
        withUnsafeBytes(of: storage) { bytes -> SocketAddress? in
            switch Int32(storage.ss_family) {
            case AF_INET: return SocketAddress(bytes.load(as: sockaddr_in.self))
            case AF_INET6: return SocketAddress(bytes.load(as: sockaddr_in6.self))
            default: return nil
            }
        }?.peerAddress
    }
}
