@testable import Gateway
import HTTPTypes
import Testing

/// The request's `x-aiproxy-*` headers are read in one pass; they must say what `HTTPFields`' own
/// lookups said: names in any case, repeated fields joined with ", ", other headers ignored.
@Suite struct RequestHeadersTests {
    @Test func aiproxyHeaders_readInOnePass_matchTheFieldsLookups() throws {
        var fields = HTTPFields()
        fields.append(HTTPField(name: try #require(HTTPField.Name("Content-Type")), value: "application/json"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("X-AIProxy-Strategy")), value: "latency_optimized"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("x-aiproxy-provider")), value: "groq"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("x-aiproxy-metadata")), value: #"{"a":1}"#))
        fields.append(HTTPField(name: try #require(HTTPField.Name("x-aiproxy-provider")), value: "local"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("x-aiproxy-unknown")), value: "ignored"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("x-aiproxy-cache-ttl")), value: "10m"))
        let headers = AIProxyRequestHeaders(fields)
        #expect(headers.strategy == "latency_optimized")
        #expect(headers.provider == "groq, local")
        #expect(headers.provider == fields[.aiproxyPinnedProvider])
        #expect(headers.metadata == #"{"a":1}"#)
        #expect(headers.cacheTTL == "10m")
        #expect(headers.maxCost == nil && headers.localOnly == nil && headers.timeout == nil && headers.hop == nil)
        // Each field the one-pass reader found is what a lookup by name finds.
        for (name, value) in [(HTTPField.Name.aiproxyStrategy, headers.strategy), (.aiproxyMaxCost, headers.maxCost), (.aiproxyLocalOnly, headers.localOnly),
                              (.aiproxyTimeout, headers.timeout), (.aiproxyMetadata, headers.metadata), (.aiproxyCacheTTL, headers.cacheTTL),
                              (.aiproxyHop, headers.hop)] {
            #expect(value == fields[name], "\(name)")
        }
    }

    @Test func firstField_isTheFirstOfItsName() throws {
        var fields = HTTPFields()
        fields.append(HTTPField(name: .contentLength, value: "12"))
        fields.append(HTTPField(name: try #require(HTTPField.Name("Authorization")), value: "Bearer a"))
        fields.append(HTTPField(name: .authorization, value: "Bearer b"))
        #expect(fields.first(.contentLength) == "12")
        #expect(fields.first(.authorization) == "Bearer a")
        #expect(fields.first(.aiproxyHop) == nil)
    }
}
