import MeshCore
import Testing

@Suite struct UnitsTests {
    @Test(arguments: [
        ("200ms", 200), ("1.5s", 1500), ("30s", 30000), ("5m", 300_000), ("2h", 7_200_000), ("1m30s", 90000), ("250us", 0), ("3", 3000), ("1e3", 1_000_000),
    ])
    func parseDuration_readsHumanSpellings(_ text: String, _ millis: Int64) {
        #expect(Units.parseDuration(text)?.milliseconds == millis)
    }

    // Values past what a Duration holds are refused, not trapped on: a config file or a client's
    // x-aiproxy-timeout / x-aiproxy-cache-ttl header reaches this (the config fuzzer found "1e30").
    @Test(arguments: ["", "ms", "5 parsecs", "-1s", "1x", "1e30", "333333333333333333333", "-1e30", "nan", "inf", "1e16", "9e18ns", "300000000000d"])
    func parseDuration_rejectsNonsense(_ text: String) {
        #expect(Units.parseDuration(text) == nil)
    }

    @Test func parseByteSize_usesPowersOf1024() {
        #expect(Units.parseByteSize("10MB") == 10 * 1024 * 1024)
        #expect(Units.parseByteSize("512KB") == 512 * 1024)
        #expect(Units.parseByteSize("2048") == 2048)
        #expect(Units.parseByteSize("1GiB") == 1 << 30)
        #expect(Units.parseByteSize("10 parsecs") == nil)
    }

    /// Against Python's `email.utils.formatdate(t, usegmt=True)`.
    @Test(arguments: [
        (Int64(0), "Thu, 01 Jan 1970 00:00:00 GMT"), (1_796_272_453, "Thu, 03 Dec 2026 04:34:13 GMT"),
        (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"), (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
    ])
    func httpDate_isIMFFixdate(_ seconds: Int64, _ expected: String) {
        #expect(httpDate(seconds: seconds) == expected)
    }
}

@Suite struct EventualTests {
    struct Boom: Error {}

    @Test func waitersGetTheFirstSettlement() async throws {
        let port = Eventual<Int>()
        #expect(port.current == nil)
        async let waited = port.value()
        port.settle(.success(7946))
        port.settle(.success(1))  // too late
        #expect(try await waited == 7946)
        #expect(port.current == 7946)
        #expect(try await port.value() == 7946)
    }

    @Test func aFailureReachesEveryWaiter() async {
        let port = Eventual<Int>()
        port.settle(.failure(Boom()))
        await #expect(throws: Boom.self) { _ = try await port.value() }
        #expect(port.current == nil)
    }
}
