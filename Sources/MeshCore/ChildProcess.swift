#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A program run as a child process with `posix_spawn`, its output read through a pipe.
///
/// Not Foundation's `Process`: on Linux its `run()` (Swift 6.3) walks `/proc/self/fd` and copies each
/// `dirent`'s whole 256-byte name field, reading past glibc's buffer now and then (SIGSEGV,
/// swift-corelibs-foundation#5472), and the more descriptors are open the likelier it is. A node with many
/// connections re-probing its GPUs every 15 s could crash that way; the test suite did. Here the child
/// gets descriptors 0–2 and nothing else (glibc's `posix_spawn_file_actions_addclosefrom_np`, one
/// `close_range` in the child), default signal handlers and an empty signal mask.
public final class ChildProcess: Sendable {
    /// Where the child's standard output or error goes. `.pipe` for both: one pipe, in the order written.
    public enum Stream: Sendable {
        case inherit, discard, pipe
    }

    public enum Status: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signalled(Int32)

        public var description: String {
            switch self {
            case .exited(let code): "exited with \(code)"
            case .signalled(let signal): "killed by signal \(signal)"
            }
        }
    }

    public struct SpawnError: Error, Sendable, CustomStringConvertible {
        public var program: String
        public var errno: Int32
        public var description: String { "could not start \(program): \(String(cString: strerror(errno)))" }
    }

    public let pid: pid_t
    /// The read end of the output pipe (-1: none, or read and closed).
    private let output: Mutex<Int32>
    /// Set once the child is reaped; signals are only sent before, so a reused pid is never signalled.
    private let status = Mutex<Status?>(nil)

    /// Starts `program` (looked up on PATH unless it contains a `/`) with `arguments`, and `environment`
    /// instead of this process's when given.
    public init(program: String, arguments: [String], environment: [String: String]? = nil,
                stdout: Stream = .inherit, stderr: Stream = .inherit) throws(SpawnError) {
        var pipeFDs: [Int32] = [-1, -1]
        if stdout == .pipe || stderr == .pipe {
            guard pipe(&pipeFDs) == 0 else { throw SpawnError(program: program, errno: errno) }
            // Not inherited by children spawned meanwhile (`pipe2` is not imported into Swift).
            _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (fd, stream) in [(Int32(1), stdout), (Int32(2), stderr)] {
            switch stream {
            case .inherit: break
            case .discard: posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_WRONLY, 0)
            case .pipe: posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], fd)
            }
        }
        if let closeFrom = ChildProcess.addCloseFrom { _ = closeFrom(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        var none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer {
            argv.forEach { free($0) }
            envp?.forEach { free($0) }
        }
        var child = pid_t()
        let result = argv.withUnsafeBufferPointer { argv -> Int32 in
            func spawn(_ environment: UnsafePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
                program.contains("/")
                    ? posix_spawn(&child, program, &actions, &attributes, argv.baseAddress!, environment)
                    : posix_spawnp(&child, program, &actions, &attributes, argv.baseAddress!, environment)
            }
            guard let envp else { return spawn(environ) }
            return envp.withUnsafeBufferPointer { spawn($0.baseAddress!) }
        }
        if pipeFDs[1] >= 0 { close(pipeFDs[1]) }
        guard result == 0 else {
            if pipeFDs[0] >= 0 { close(pipeFDs[0]) }
            throw SpawnError(program: program, errno: result)
        }
        pid = child
        output = Mutex(pipeFDs[0])
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later; not imported into Swift).
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32)? = {
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32).self)
    }()

    deinit {
        let fd = output.withLock { $0 }
        if fd >= 0 { close(fd) }
    }

    /// Everything the child writes to the pipe, until it closes it (exits), at most `limit` bytes (the rest
    /// is read and dropped). Empty without a pipe, or the second time.
    public func readOutput(limit: Int = 16 << 20) -> [UInt8] {
        let fd = output.withLock { fd in defer { fd = -1 }; return fd }
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return bytes }
            if bytes.count < limit { bytes.append(contentsOf: chunk[0..<min(count, limit - bytes.count)]) }
        }
    }

    /// Waits for the child to end (at once if it has) and says how.
    @discardableResult
    public func wait() -> Status {
        if let done = status.withLock({ $0 }) { return done }
        // Wait without reaping, so the pid stays the child's while `signal` may still use it; reap under the lock.
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
        return status.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            let ended: Status = raw & 0x7f == 0 ? .exited((raw >> 8) & 0xff) : .signalled(raw & 0x7f)
            status = ended
            return ended
        }
    }

    /// Sends `signal` unless the child has been reaped.
    public func signal(_ signal: Int32) {
        status.withLock { status in
            if status == nil { _ = kill(pid, signal) }
        }
    }
}
