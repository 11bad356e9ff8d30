import MeshCore
import Testing

@Suite struct SSEParserTests {
    @Test func feed_eventsSplitAcrossChunks_areReassembled() throws {
        var parser = SSEParser()
        let wire = "event: message_start\ndata: {\"a\":1}\n\ndata: line1\ndata: line2\n\n: comment\ndata: [DONE]\n\n"
        var events: [SSEEvent] = []
        for byte in Array(wire.utf8) { events += try parser.feed([byte]) }
        #expect(events.count == 3)
        #expect(events[0].event == "message_start")
        #expect(events[0].dataString == "{\"a\":1}")
        #expect(events[1].dataString == "line1\nline2")
        #expect(events[2].isDone)
    }

    @Test func feed_crlfAndCRLineEnds_areAccepted() throws {
        var parser = SSEParser()
        let events = try parser.feed(Array("data: a\r\n\r\ndata: b\r\rdata:c\n\n".utf8))
        #expect(events.map(\.dataString) == ["a", "b", "c"])
    }

    @Test func finish_deliversATrailingEventWithoutBlankLine() throws {
        var parser = SSEParser()
        #expect(try parser.feed(Array("data: tail".utf8)).isEmpty)
        #expect(parser.finish()?.dataString == "tail")
    }

    @Test func feed_oversizedEvent_throws() {
        var parser = SSEParser(maxEventBytes: 16)
        #expect(throws: SSEParser.TooLarge.self) { try parser.feed(Array("data: \(String(repeating: "x", count: 64))".utf8)) }
    }

    @Test func encode_multiLineData_roundTrips() throws {
        let event = SSEEvent(event: "x", data: Array("one\ntwo".utf8))
        var parser = SSEParser()
        #expect(try parser.feed(event.encoded()) == [event])
    }
}
