import MeshCore
import Sodium

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct IdentityError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A key file: one line, `aimesh-KIND-key-v1 HEXSEED`, mode 0600. Node keys live in `data_dir/node.key`,
/// the mesh admin key wherever `aimesh mesh init --out` put it.
public enum KeyFile {
    /// Loads the key at `path`, or creates it (mode 0600, in a directory created 0700) when absent.
    /// Refuses a file that others can read.
    public static func loadOrCreate(path: String, kind: String) throws(IdentityError) -> (Ed25519.KeyPair, created: Bool) {
        if access(path, F_OK) == 0 { return (try load(path: path, kind: kind), false) }
        let pair = Ed25519.KeyPair.generate()
        try write(pair, path: path, kind: kind)
        return (pair, true)
    }

    public static func load(path: String, kind: String) throws(IdentityError) -> Ed25519.KeyPair {
        var info = stat()
        guard stat(path, &info) == 0 else { throw IdentityError("\(path): cannot read the \(kind) key (\(String(cString: strerror(errno))))") }
        guard info.st_mode & 0o077 == 0 else {
            throw IdentityError("\(path): the \(kind) key is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); run: chmod 600 \(path)")
        }
        guard let text = readSmallFile(path) else { throw IdentityError("\(path): cannot read the \(kind) key") }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        guard parts.count == 2, parts[0] == "aimesh-\(kind)-key-v1", let seed = ByteEncoding.fromHex(String(parts[1])), seed.count == Ed25519.seedBytes,
              let pair = Ed25519.KeyPair(seed: seed)
        else { throw IdentityError("\(path): not an aimesh \(kind) key file") }
        return pair
    }

    public static func write(_ pair: Ed25519.KeyPair, path: String, kind: String) throws(IdentityError) {
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty { makeDirectories(directory) }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw IdentityError("\(path): cannot create the \(kind) key (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        let line = pair.exportSeed().withBytes { "aimesh-\(kind)-key-v1 \(ByteEncoding.hex($0))\n" }
        let ok = line.utf8CString.withUnsafeBufferPointer { buffer in Glibc.write(fd, buffer.baseAddress, buffer.count - 1) == buffer.count - 1 }
        guard ok, fsync(fd) == 0 else { throw IdentityError("\(path): cannot write the \(kind) key") }
    }
}

extension Ed25519.KeyPair {
    public var nodeID: NodeID { NodeID(bytes: publicKey)! }
}
