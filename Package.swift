// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "aimesh",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "aimesh", targets: ["aimesh"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    ],
    targets: [
        // C libraries, each behind one small Swift wrapper module.
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),

        // Pure vocabulary: JSON, SSE, durations, prices, routes. Imports nothing.
        .target(name: "MeshCore", swiftSettings: swiftSettings),
        .target(name: "Sodium", dependencies: ["CSodium"], swiftSettings: swiftSettings),
        .target(
            name: "CurlHTTP",
            dependencies: ["CCurl", "MeshCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "NodeConfig",
            dependencies: ["MeshCore", .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        .target(name: "Routing", dependencies: ["MeshCore"], swiftSettings: swiftSettings),
        // The mesh: wire codec, pure SWIM + Lifeguard, signed record table and trust, simulator.
        .target(name: "Wire", dependencies: ["MeshCore", "Sodium"], swiftSettings: swiftSettings),
        .target(name: "Membership", dependencies: ["MeshCore", "Wire"], swiftSettings: swiftSettings),
        .target(name: "MeshState", dependencies: ["MeshCore", "Wire", "Sodium"], swiftSettings: swiftSettings),
        .target(name: "MeshSim", dependencies: ["MeshCore", "Wire", "Membership", "MeshState"], swiftSettings: swiftSettings),
        .target(
            name: "Transport",
            dependencies: [
                "MeshCore", "Wire", "Membership", "MeshState", "Sodium", "Ledger",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Providers",
            dependencies: ["MeshCore", "CurlHTTP", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Ledger",
            dependencies: ["MeshCore", "CSQLite", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Gateway",
            dependencies: [
                "MeshCore", "NodeConfig", "Routing", "Providers", "Ledger", "CurlHTTP", "Sodium",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "MockUpstream",
            dependencies: [
                "MeshCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Node",
            dependencies: [
                "MeshCore", "NodeConfig", "Gateway", "Ledger", "Providers", "Routing", "CurlHTTP", "Sodium",
                "Wire", "Membership", "MeshState", "Transport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // libFuzzer target for every parser of untrusted input (scripts/fuzz); a corpus replayer otherwise.
        .executableTarget(name: "FuzzWire", dependencies: ["MeshCore", "Wire", "MeshState", "Sodium", "NodeConfig", "Providers"], swiftSettings: swiftSettings),
        // The gateway's own work per request, in process and without sockets (scripts/bench-gateway).
        .executableTarget(
            name: "GatewayBench",
            dependencies: [
                "Gateway", "Providers", "Routing", "NodeConfig", "Ledger", "CurlHTTP", "MeshCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "aimesh",
            dependencies: [
                "Node", "Gateway", "NodeConfig", "MockUpstream", "CurlHTTP", "MeshCore", "MeshState", "Sodium", "MeshSim", "Membership",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings + [.swiftLanguageMode(.v5)]
        ),
        .testTarget(
            name: "AimeshTests",
            dependencies: [
                "MeshCore", "Sodium", "CurlHTTP", "NodeConfig", "Routing", "Providers", "Ledger", "Gateway",
                "MockUpstream", "Node", "Wire", "Membership", "MeshState", "MeshSim", "Transport",
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
