import NIOCore

/// `server.write_timeout`: a client that stops reading its answer — the socket's buffers full and NIO's
/// queue past its high-water mark, so the channel reports itself unwritable — for this long is cut
/// off. Closing the connection ends the response, which cancels the upstream call behind it; a client
/// that reads, however slowly, is never cut (each time the channel drains the clock starts over).
final class WriteStallHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    let timeout: TimeAmount
    let onTimeout: @Sendable () -> Void
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount, onTimeout: @escaping @Sendable () -> Void) {
        self.timeout = timeout
        self.onTimeout = onTimeout
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            timer?.cancel()
            timer = nil
        } else if timer == nil {
            let onTimeout = self.onTimeout
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                onTimeout()
                context.close(promise: nil)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }
}
