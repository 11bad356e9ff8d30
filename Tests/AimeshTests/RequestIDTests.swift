@testable import Gateway
import MeshCore
import Testing

/// Request ids lead with the time, so one node's ids sort in the order they were made (the ledger's index
/// on them then grows at its end) while the random tail keeps them unique.
@Suite struct RequestIDTests {
    @Test func ids_haveTheTimeThenRandomHex_andSortByTime() {
        let early = Gateway.makeRequestID(nowMillis: 1_800_000_000_000)
        let later = Gateway.makeRequestID(nowMillis: 1_800_000_000_001)
        #expect(early.hasPrefix("req_"))
        #expect(early.utf8.count == 32)
        #expect(early.dropFirst(4).allSatisfy { "0123456789abcdef".contains($0) })
        // 1_800_000_000_000 ms is 0x1a3185c5000.
        #expect(early.dropFirst(4).prefix(12) == "01a3185c5000")
        #expect(early < later)
        // Within one millisecond the random part differs.
        let ids = (0..<1000).map { _ in Gateway.makeRequestID(nowMillis: 1_800_000_000_000) }
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy { $0.dropFirst(4).prefix(12) == "01a3185c5000" })
        // All 64 random bits are spelled: the first and the last four hex digits of the random part vary.
        #expect(Set(ids.map { $0.dropFirst(16).prefix(4) }).count > 900)
        #expect(Set(ids.map { $0.suffix(4) }).count > 900)
    }

    /// `FastRandom` never hands out the same number twice in a process, even to threads drawing at
    /// once (its counter is atomic, its output function a bijection), and its bits are spread: every
    /// one of the 64 bit positions is set in some draws and clear in others.
    @Test func fastRandom_neverRepeats_acrossThreads() async {
        let draws = await withTaskGroup(of: [UInt64].self) { group in
            for _ in 0..<4 {
                group.addTask {
                    var random = FastRandom()
                    return (0..<20_000).map { _ in random.next() }
                }
            }
            var all: [UInt64] = []
            for await part in group { all += part }
            return all
        }
        #expect(Set(draws).count == 80_000)
        let ors = draws.reduce(0, |), ands = draws.reduce(UInt64.max, &)
        #expect(ors == UInt64.max && ands == 0)
    }

    @Test func clockBeforeTheEpoch_orBeyond48Bits_stillGivesAWellFormedID() {
        #expect(Gateway.makeRequestID(nowMillis: -5).dropFirst(4).prefix(12) == "000000000000")
        #expect(Gateway.makeRequestID(nowMillis: Int64.max).utf8.count == 32)
    }
}
