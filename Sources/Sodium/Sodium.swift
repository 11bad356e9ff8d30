import CSodium

/// The one place aimesh talks to libsodium. Nothing outside this module touches an unsafe pointer to
/// key material; secret bytes live in `SecretBytes`, which zeroes them when dropped.
public enum Sodium {
    private static let initialized: Bool = sodium_init() >= 0

    /// Call before first use (idempotent, thread-safe). Every entry point below calls it too.
    @discardableResult
    public static func initialize() -> Bool { initialized }

    /// Cryptographically secure random bytes.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        precondition(initialize())
        var bytes = [UInt8](repeating: 0, count: count)
        if count > 0 { bytes.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) } }
        return bytes
    }

    /// A uniformly random integer below `upperBound`.
    public static func randomUniform(_ upperBound: UInt32) -> UInt32 {
        precondition(initialize())
        return randombytes_uniform(upperBound)
    }

    /// Constant-time comparison.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.isEmpty || a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in sodium_memcmp(pa.baseAddress!, pb.baseAddress!, a.count) == 0 } }
    }

    /// BLAKE2b (crypto_generichash) of `data`, optionally keyed.
    public static func hash(_ data: [UInt8], outputBytes: Int = 32, key: [UInt8] = []) -> [UInt8] {
        precondition(initialize())
        var out = [UInt8](repeating: 0, count: outputBytes)
        out.withUnsafeMutableBufferPointer { o in
            data.withUnsafeBufferPointer { d in
                key.withUnsafeBufferPointer { k in
                    _ = crypto_generichash(o.baseAddress!, outputBytes, d.baseAddress, UInt64(d.count), k.baseAddress, k.count)
                }
            }
        }
        return out
    }

    /// A 32-byte key derived from a secret: BLAKE2b-256 of `label ‖ secret ‖ context` (the copy holding the
    /// secret is zeroed).
    public static func deriveKey(label: [UInt8], secret: SecretBytes, context: [UInt8]) -> SecretBytes {
        var input = label
        secret.withBytes { input += $0 }
        input += context
        defer { input.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
        var key = hash(input, outputBytes: 32)
        defer { key.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
        return SecretBytes(key)
    }

    /// SHA-256 of `data`.
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        precondition(initialize())
        var out = [UInt8](repeating: 0, count: Int(crypto_hash_sha256_bytes()))
        out.withUnsafeMutableBufferPointer { o in
            data.withUnsafeBufferPointer { d in _ = crypto_hash_sha256(o.baseAddress!, d.baseAddress, UInt64(d.count)) }
        }
        return out
    }
}

/// Bytes that must not outlive their use: zeroed with `sodium_memzero` when the last reference goes.
public final class SecretBytes: @unchecked Sendable {
    private var storage: [UInt8]

    public init(_ bytes: [UInt8]) { self.storage = bytes }

    deinit {
        storage.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) }
    }

    public var count: Int { storage.count }

    /// Borrow the bytes; do not let them escape the closure.
    public func withBytes<R>(_ body: ([UInt8]) throws -> R) rethrows -> R { try body(storage) }
}

/// Ed25519 signatures (crypto_sign_*).
public enum Ed25519 {
    public static let publicKeyBytes = Int(crypto_sign_publickeybytes())
    public static let secretKeyBytes = Int(crypto_sign_secretkeybytes())
    public static let seedBytes = Int(crypto_sign_seedbytes())
    public static let signatureBytes = Int(crypto_sign_bytes())

    /// A signing key pair. The secret half stays in `SecretBytes`.
    public struct KeyPair: Sendable {
        public let publicKey: [UInt8]
        let secretKey: SecretBytes

        /// A new random key pair.
        public static func generate() -> KeyPair {
            precondition(Sodium.initialize())
            var pk = [UInt8](repeating: 0, count: publicKeyBytes)
            var sk = [UInt8](repeating: 0, count: secretKeyBytes)
            _ = crypto_sign_keypair(&pk, &sk)
            defer { sk.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
            return KeyPair(publicKey: pk, secretKey: SecretBytes(sk))
        }

        /// The key pair derived from a 32-byte seed (what aimesh stores on disk).
        public init?(seed: [UInt8]) {
            guard seed.count == seedBytes, Sodium.initialize() else { return nil }
            var pk = [UInt8](repeating: 0, count: publicKeyBytes)
            var sk = [UInt8](repeating: 0, count: secretKeyBytes)
            _ = crypto_sign_seed_keypair(&pk, &sk, seed)
            defer { sk.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
            self.init(publicKey: pk, secretKey: SecretBytes(sk))
        }

        init(publicKey: [UInt8], secretKey: SecretBytes) {
            self.publicKey = publicKey
            self.secretKey = secretKey
        }

        /// The 32-byte seed, for writing the key file. Handle with care.
        public func exportSeed() -> SecretBytes {
            secretKey.withBytes { sk in
                var seed = [UInt8](repeating: 0, count: seedBytes)
                _ = crypto_sign_ed25519_sk_to_seed(&seed, sk)
                defer { seed.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
                return SecretBytes(seed)
            }
        }

        /// A detached signature over `message`.
        public func sign(_ message: [UInt8]) -> [UInt8] {
            var signature = [UInt8](repeating: 0, count: signatureBytes)
            secretKey.withBytes { sk in
                _ = crypto_sign_detached(&signature, nil, message, UInt64(message.count), sk)
            }
            return signature
        }
    }

    /// Whether `signature` is `publicKey`'s signature over `message`.
    public static func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard signature.count == signatureBytes, publicKey.count == publicKeyBytes, Sodium.initialize() else { return false }
        return crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
    }
}

/// XChaCha20-Poly1305 (IETF) authenticated encryption, for sealing mesh packets with a shared secret.
public enum XChaCha20Poly1305 {
    public static let keyBytes = Int(crypto_aead_xchacha20poly1305_ietf_keybytes())
    public static let nonceBytes = Int(crypto_aead_xchacha20poly1305_ietf_npubbytes())
    public static let tagBytes = Int(crypto_aead_xchacha20poly1305_ietf_abytes())

    /// `nonce ‖ ciphertext ‖ tag` with a fresh random nonce.
    public static func seal(_ plaintext: [UInt8], additionalData: [UInt8] = [], key: SecretBytes) -> [UInt8] {
        precondition(key.count == keyBytes && Sodium.initialize())
        let nonce = Sodium.randomBytes(nonceBytes)
        var out = [UInt8](repeating: 0, count: nonceBytes + plaintext.count + tagBytes)
        var written: UInt64 = 0
        key.withBytes { k in
            out.withUnsafeMutableBufferPointer { o in
                for i in 0..<nonceBytes { o[i] = nonce[i] }
                _ = crypto_aead_xchacha20poly1305_ietf_encrypt(
                    o.baseAddress! + nonceBytes, &written, plaintext, UInt64(plaintext.count),
                    additionalData, UInt64(additionalData.count), nil, nonce, k)
            }
        }
        return out
    }

    /// The plaintext, or nil when the box was not made with this key (or was altered).
    public static func open(_ box: [UInt8], additionalData: [UInt8] = [], key: SecretBytes) -> [UInt8]? {
        guard box.count >= nonceBytes + tagBytes, key.count == keyBytes, Sodium.initialize() else { return nil }
        var out = [UInt8](repeating: 0, count: box.count - nonceBytes - tagBytes)
        var written: UInt64 = 0
        let status = key.withBytes { k in
            box.withUnsafeBufferPointer { b in
                crypto_aead_xchacha20poly1305_ietf_decrypt(
                    &out, &written, nil, b.baseAddress! + nonceBytes, UInt64(b.count - nonceBytes),
                    additionalData, UInt64(additionalData.count), b.baseAddress!, k)
            }
        }
        return status == 0 ? out : nil
    }
}

/// Anonymous sealed boxes (crypto_box_seal): anyone can seal to a Curve25519 public key; only its
/// holder opens. Used for handing a node its mesh secret without a shared channel.
public enum SealedBox {
    public static let publicKeyBytes = Int(crypto_box_publickeybytes())
    public static let secretKeyBytes = Int(crypto_box_secretkeybytes())
    public static let overheadBytes = Int(crypto_box_sealbytes())

    public struct KeyPair: Sendable {
        public let publicKey: [UInt8]
        let secretKey: SecretBytes

        public static func generate() -> KeyPair {
            precondition(Sodium.initialize())
            var pk = [UInt8](repeating: 0, count: publicKeyBytes)
            var sk = [UInt8](repeating: 0, count: secretKeyBytes)
            _ = crypto_box_keypair(&pk, &sk)
            defer { sk.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
            return KeyPair(publicKey: pk, secretKey: SecretBytes(sk))
        }

        /// The Curve25519 key pair that belongs to an Ed25519 signing key pair.
        public init(converting signing: Ed25519.KeyPair) {
            var pk = [UInt8](repeating: 0, count: publicKeyBytes)
            var sk = [UInt8](repeating: 0, count: secretKeyBytes)
            _ = crypto_sign_ed25519_pk_to_curve25519(&pk, signing.publicKey)
            signing.secretKey.withBytes { esk in _ = crypto_sign_ed25519_sk_to_curve25519(&sk, esk) }
            defer { sk.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
            self.init(publicKey: pk, secretKey: SecretBytes(sk))
        }

        init(publicKey: [UInt8], secretKey: SecretBytes) {
            self.publicKey = publicKey
            self.secretKey = secretKey
        }

        /// X25519: the secret this key pair shares with the holder of the Curve25519 `publicKey`; nil for
        /// a key that is not a point of the curve's main group (libsodium refuses low-order points).
        public func sharedSecret(with publicKey: [UInt8]) -> SecretBytes? {
            guard publicKey.count == publicKeyBytes else { return nil }
            var shared = [UInt8](repeating: 0, count: Int(crypto_scalarmult_bytes()))
            defer { shared.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) } }
            let status = secretKey.withBytes { sk in crypto_scalarmult(&shared, sk, publicKey) }
            return status == 0 ? SecretBytes(shared) : nil
        }

        public func open(_ box: [UInt8]) -> [UInt8]? {
            guard box.count >= overheadBytes else { return nil }
            var out = [UInt8](repeating: 0, count: box.count - overheadBytes)
            let status = secretKey.withBytes { sk in crypto_box_seal_open(&out, box, UInt64(box.count), publicKey, sk) }
            return status == 0 ? out : nil
        }
    }

    /// Converts an Ed25519 public key (a NodeID) to the Curve25519 key sealed boxes use.
    public static func curve25519PublicKey(fromEd25519 publicKey: [UInt8]) -> [UInt8]? {
        guard publicKey.count == Ed25519.publicKeyBytes, Sodium.initialize() else { return nil }
        var pk = [UInt8](repeating: 0, count: publicKeyBytes)
        return crypto_sign_ed25519_pk_to_curve25519(&pk, publicKey) == 0 ? pk : nil
    }

    public static func seal(_ message: [UInt8], to publicKey: [UInt8]) -> [UInt8]? {
        guard publicKey.count == publicKeyBytes, Sodium.initialize() else { return nil }
        var out = [UInt8](repeating: 0, count: message.count + overheadBytes)
        return crypto_box_seal(&out, message, UInt64(message.count), publicKey) == 0 ? out : nil
    }
}
