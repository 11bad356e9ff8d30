import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Makes NIO's event loops Swift concurrency's global executor, the way
/// `NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()` does, with one
/// difference that matters per request: a job runs on the *generic* executor, not isolated to the event loop.
///
/// NIO's version runs every job with the loop as its serial executor. A task running there that calls a
/// nonisolated `async` function (which wants the generic executor) cannot continue inline: the runtime's
/// `swift_task_switch` sees two different executors, so it enqueues the task again (onto the same loop) and
/// it resumes on a later turn of the loop. Counted with uprobes on `swift_task_switch` and `swift_job_run`,
/// that was 36 trips through the loop's queue for a Hummingbird route answering canned text, and 84 for a
/// proxied chat request. A job run on the generic executor, as the default global executor runs them,
/// continues inline through every such call; the task still lives on the event loop that last resumed it,
/// because enqueueing picks the current loop when it is called on one (`EventLoopGroup.any()`).
enum EventLoopGlobalExecutor {
    private typealias EnqueueGlobalHook = @convention(thin) (UnownedJob, @convention(thin) (UnownedJob) -> Void) -> Void

    /// The runtime's generic executor, `SerialExecutorRef::generic()`: no identity, no implementation.
    /// There is no public initializer for it; its layout is the runtime's (two machine words).
    private static let generic: UnownedSerialExecutor = {
        precondition(MemoryLayout<UnownedSerialExecutor>.size == 2 * MemoryLayout<UInt>.size, "unexpected UnownedSerialExecutor layout")
        return unsafeBitCast((UInt(0), UInt(0)), to: UnownedSerialExecutor.self)
    }()

    /// Installs the hook; false when the runtime offers none or another one is installed already (then
    /// the default global executor stays). Call it once, before any Swift concurrency code runs.
    static func install() -> Bool {
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "swift_task_enqueueGlobal_hook") else { return false }
        let slot = symbol.assumingMemoryBound(to: UnsafeRawPointer?.self)
        guard slot.pointee == nil else { return false }
        _ = generic
        return withUnsafeTemporaryAllocation(of: EnqueueGlobalHook.self, capacity: 1) { hook in
            hook.baseAddress!.initialize(to: { job, _ in
                MultiThreadedEventLoopGroup.singleton.any().execute {
                    job.runSynchronously(on: EventLoopGlobalExecutor.generic)
                }
            })
            return hook.baseAddress!.withMemoryRebound(to: UnsafeRawPointer.self, capacity: 1) { function in
                slot.pointee = function.pointee
                return true
            }
        }
    }
}
