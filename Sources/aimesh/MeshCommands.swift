import ArgumentParser
import CurlHTTP
import MeshCore
import MeshState
import Sodium

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct IDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "id",
        abstract: "Print this node's id (its public key), creating the key in the data directory if needed."
    )

    @Option(name: .long, help: "The node's data directory (node.data_dir).")
    var dataDir: String = "./data/aimesh-node"

    func run() throws {
        do {
            let (pair, created) = try KeyFile.loadOrCreate(path: "\(dataDir)/node.key", kind: "node")
            if created { printError("created \(dataDir)/node.key (mode 0600)") }
            print(pair.nodeID.hex)
        } catch {
            printError("aimesh: \(error.description)")
            throw ExitCode(1)
        }
    }
}

struct MeshCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh",
        abstract: "Administer a mesh: its admin key, node certificates, revocations and shared secrets.",
        subcommands: [Init.self, Admit.self, Revoke.self, Keygen.self]
    )

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a mesh admin key (keep admin.key offline; give admin.pub to every node).")

        @Option(name: .long, help: "Directory for admin.key and admin.pub.")
        var out: String

        func run() throws {
            let keyPath = "\(out)/admin.key"
            guard access(keyPath, F_OK) != 0 else {
                printError("aimesh: \(keyPath) exists already; refusing to replace a mesh admin key")
                throw ExitCode(1)
            }
            do {
                let (pair, _) = try KeyFile.loadOrCreate(path: keyPath, kind: "admin")
                _ = writeSmallFile("\(out)/admin.pub", pair.nodeID.hex + "\n")
                print(pair.nodeID.hex)
                printError("""
                    wrote \(keyPath) (mode 0600) and \(out)/admin.pub
                    every node's config:  node.mesh.trust: { mode: ca, admin_public_key: "\(pair.nodeID.hex)", certificate: ./node.cert }
                    admit a node:         aimesh mesh admit NODE_ID --name NAME --admin-key \(keyPath) --out node.cert
                    """)
            } catch {
                printError("aimesh: \(error.description)")
                throw ExitCode(1)
            }
        }
    }

    struct Admit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Sign a certificate admitting a node (by the id `aimesh id` printed).")

        @Argument(help: "The node's public key (64 hex digits).")
        var node: String

        @Option(name: .long, help: "A name for the node.")
        var name: String

        @Option(name: .long, help: "How long the certificate is valid: 90d, 12h, 30m.")
        var expires: String = "90d"

        @Option(name: .long, help: "The mesh admin key file.")
        var adminKey: String = "./mesh-admin/admin.key"

        @Option(name: .long, help: "Where to write the certificate.")
        var out: String = "./node.cert"

        func run() throws {
            guard let id = NodeID(hex: node) else { throw ValidationError("NODE_PUBKEY must be 64 hex digits, as `aimesh id` prints it") }
            guard let lifetime = parseLifetime(expires) else { throw ValidationError("--expires takes a duration such as 90d, 12h or 30m") }
            let admin = try loadKey(adminKey, kind: "admin")
            let now = wallClockMillis()
            let certificate = Certificate.issue(node: id, name: name, issuedAtMillis: now, expiresAtMillis: now + lifetime, admin: admin)
            guard writeSmallFile(out, certificate.fileText) else {
                printError("aimesh: cannot write \(out)")
                throw ExitCode(1)
            }
            print("admitted \(id.short) as \(name) until \(iso8601(millis: now + lifetime)); certificate in \(out)")
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Sign a revocation of a node; give it to any node (--node URL, or POST the file to /aiproxy/mesh/revocations) and it gossips to all.")

        @Argument(help: "The node's public key (64 hex digits).")
        var node: String

        @Option(name: .long, help: "The mesh admin key file.")
        var adminKey: String = "./mesh-admin/admin.key"

        @Option(name: .long, help: "Where to write the revocation.")
        var out: String = "./revocation"

        @Option(name: .customLong("node"), help: "Also hand it to this node's API (e.g. http://127.0.0.1:8080), which gossips it to the mesh.")
        var nodeURL: String?

        @Option(name: .long, help: "API key for --node (default: $AIMESH_API_KEY).")
        var apiKey: String?

        func run() async throws {
            guard let id = NodeID(hex: node) else { throw ValidationError("NODE_PUBKEY must be 64 hex digits") }
            let admin = try loadKey(adminKey, kind: "admin")
            let revocation = Revocation.issue(node: id, issuedAtMillis: wallClockMillis(), admin: admin)
            guard writeSmallFile(out, revocation.fileText) else {
                printError("aimesh: cannot write \(out)")
                throw ExitCode(1)
            }
            print("revoked \(id.short); revocation in \(out)")
            if let node = nodeURL {
                let (status, body) = try await postText(url: node + "/aiproxy/mesh/revocations", text: revocation.fileText, apiKey: apiKey)
                guard status == 200 else {
                    printError("aimesh: \(node) refused the revocation (\(status)): \(body)")
                    throw ExitCode(1)
                }
                print("\(node) accepted it; it now spreads through the mesh")
            }
        }
    }

    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a new random mesh secret for node.mesh.secret_keys (put the new one first to rotate).")
        func run() { print(ByteEncoding.hex(Sodium.randomBytes(32))) }
    }
}

/// POSTs text to a node's API and returns the status and body text.
func postText(url: String, text: String, apiKey: String?) async throws -> (Int, String) {
    let client = CurlClient()
    defer { client.shutdown() }
    var headers: [(name: String, value: String)] = [("Content-Type", "text/plain")]
    if let key = apiKey ?? getenv("AIMESH_API_KEY").map({ String(cString: $0) }) { headers.append(("Authorization", "Bearer \(key)")) }
    let (head, body) = try await client.send(.post(url, json: Array(text.utf8), headers: headers, timeouts: Timeouts(connect: .seconds(5), firstByte: .seconds(30))))
    return (head.status, String(decoding: body, as: UTF8.self))
}

/// A key file for a command, or a clear message and exit 1.
func loadKey(_ path: String, kind: String) throws -> Ed25519.KeyPair {
    do {
        return try KeyFile.load(path: path, kind: kind)
    } catch {
        printError("aimesh: \(error.description)")
        throw ExitCode(1)
    }
}

func parseLifetime(_ text: String) -> Int64? {
    guard let unit = text.last, let value = Int64(text.dropLast()), value > 0 else { return nil }
    switch unit {
    case "d": return value * 86_400_000
    case "h": return value * 3_600_000
    case "m": return value * 60_000
    case "s": return value * 1000
    default: return nil
    }
}


struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Mesh-wide API keys: signed by the mesh admin key, gossiped to every node (only their hashes travel).",
        subcommands: [Create.self, Revoke.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a key, hand its signed record to a node (it gossips to all) and print the key once.")

        @Option(name: .long, help: "A name for the key (shown in the ledger and usage reports).")
        var name: String

        @Option(name: .long, help: "Requests per minute (0: no limit).")
        var rpm: UInt32 = 0

        @Option(name: .long, help: "Tokens per minute (0: no limit).")
        var tpm: UInt32 = 0

        @Option(name: .long, help: "Daily budget in US dollars (0: none).")
        var budgetDaily: Double = 0

        @Option(name: .long, help: "Models the key may use, comma-separated (default: all).")
        var models: String?

        @Option(name: .long, help: "How long the key is valid: 90d, 12h (default: no expiry).")
        var expires: String?

        @Option(name: .long, help: "The mesh admin key file.")
        var adminKey: String = "./mesh-admin/admin.key"

        @Option(name: .customLong("node"), help: "A node's API (e.g. http://127.0.0.1:8080) to hand the record to.")
        var nodeURL: String?

        @Option(name: .long, help: "Also write the signed record here.")
        var out: String?

        func run() async throws {
            let admin = try loadKey(adminKey, kind: "admin")
            var lifetime: Int64 = 0
            if let expires {
                guard let parsed = parseLifetime(expires) else { throw ValidationError("--expires takes a duration such as 90d or 12h") }
                lifetime = parsed
            }
            let key = "sk-aimesh-" + ByteEncoding.hex(Sodium.randomBytes(24))
            let now = wallClockMillis()
            let record = KeyRecord(keyHash: Sodium.sha256(Array(key.utf8)), name: name, issuedAtMillis: now, expiresAtMillis: lifetime > 0 ? now + lifetime : 0,
                                   requestsPerMinute: rpm, tokensPerMinute: tpm, dailyBudget: budgetDaily,
                                   models: models?.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty } ?? [],
                                   admin: admin.nodeID).signed(by: admin)
            if let out, !writeSmallFile(out, record.fileText) { printError("aimesh: cannot write \(out)") }
            if let node = nodeURL {
                let (status, body) = try await postText(url: node + "/aiproxy/keys", text: record.fileText, apiKey: nil)
                guard status == 200 else {
                    printError("aimesh: \(node) refused the key record (\(status)): \(body)")
                    throw ExitCode(1)
                }
            }
            print(key)
            printError("key '\(name)' created\(nodeURL.map { "; \($0) gossips it to the mesh" } ?? ""). Store it now: only its hash is kept.")
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a mesh-wide key everywhere (give the key itself or its SHA-256).")

        @Option(name: .long, help: "The key to revoke.")
        var key: String?

        @Option(name: .long, help: "Or its SHA-256 in hex.")
        var hash: String?

        @Option(name: .long, help: "The key's name (for the record).")
        var name: String = "revoked"

        @Option(name: .long, help: "The mesh admin key file.")
        var adminKey: String = "./mesh-admin/admin.key"

        @Option(name: .customLong("node"), help: "A node's API to hand the revocation to.")
        var nodeURL: String

        func run() async throws {
            guard let digest = key.map({ Sodium.sha256(Array($0.utf8)) }) ?? hash.flatMap(ByteEncoding.fromHex), digest.count == 32 else {
                throw ValidationError("give --key KEY or --hash SHA256HEX")
            }
            let admin = try loadKey(adminKey, kind: "admin")
            let record = KeyRecord(keyHash: digest, name: name, issuedAtMillis: wallClockMillis(), revoked: true, admin: admin.nodeID).signed(by: admin)
            let (status, body) = try await postText(url: nodeURL + "/aiproxy/keys", text: record.fileText, apiKey: nil)
            guard status == 200 else {
                printError("aimesh: \(nodeURL) refused the revocation (\(status)): \(body)")
                throw ExitCode(1)
            }
            print("revoked; \(nodeURL) gossips it to the mesh")
        }
    }
}
