//! Signed manifests: the bucket is not trusted. Whoever can write to it could otherwise name a
//! backup in the future (always `latest`), point a restore at any container or path, or push
//! real backups out of retention. Each manifest is signed with an ed25519 key that never goes to
//! the bucket; only manifests signed by a trusted key are restorable, verified or counted.
//!
//! Placement: `<id>/manifest.json` stays the plain manifest (older readers still list it) and
//! `<id>/manifest.sig` beside it holds the signature over its exact bytes (a small JSON object:
//! algorithm, the signer's public key, the signature). A verification mark is signed the same
//! way (`verified.sig`). What is signed is a purpose line and then the bytes, so a signature
//! made for one purpose never passes for another.
//!
//! Keys: the private key is a PKCS#8 ed25519 key (`openssl genpkey -algorithm ed25519`; the PEM
//! or its one-line base64 body), given as a `_FILE` secret; public keys are the base64 SPKI line
//! `openssl pkey -pubout` prints (`MCowBQYDK2VwAyEA…`), in the configuration.
//!
//! Invariants: the private key is never shown (not in `Debug`, not in an error); a signature is
//! checked over the bytes as stored, before they are parsed.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use steward_settings::Env;

/// The signature of a backup's `manifest.json`, beside it.
pub const SIGNATURE: &str = "manifest.sig";
/// The signature of a backup's `verified.json`, beside it.
pub const VERIFIED_SIGNATURE: &str = "verified.sig";
/// Signature files are tiny; anything bigger is not one.
pub const MAX_SIGNATURE_BYTES: usize = 4 << 10;

/// The private key that signs new manifests (best given as `STEWARD_BACKUP_SIGNING_KEY_FILE`).
pub const ENV_SIGNING_KEY: &str = "STEWARD_BACKUP_SIGNING_KEY";
/// Public keys trusted besides the signing key's own (older keys after a rotation, the lost
/// host's key on a rebuilt one); what `steward backup list` checks with.
pub const ENV_TRUSTED_KEYS: &str = "STEWARD_BACKUP_TRUSTED_KEYS";

/// The only algorithm.
const ALGORITHM: &str = "ed25519";
/// DER of a PKCS#8 ed25519 private key before its 32-byte seed (RFC 8410).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER of an SPKI ed25519 public key before its 32 bytes (RFC 8410).
const SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// What a signature is for; part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A backup's manifest.
    Manifest,
    /// A backup's verification mark.
    Verified,
    /// A shipped WAL segment's record (`wal/<container>/<segment>.json`).
    Wal,
    /// The record that a restore ended a rebuilt host's backup pause
    /// (`journal/restored/<token>.json`).
    PauseEnded,
}

impl Purpose {
    fn context(self) -> &'static [u8] {
        match self {
            Purpose::Manifest => b"steward backup manifest v1\n",
            Purpose::Verified => b"steward backup verified v1\n",
            Purpose::Wal => b"steward wal segment v1\n",
            Purpose::PauseEnded => b"steward backup pause ended v1\n",
        }
    }

    fn message(self, bytes: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.context().len().saturating_add(bytes.len()));
        m.extend_from_slice(self.context());
        m.extend_from_slice(bytes);
        m
    }
}

/// The private key that signs manifests.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    // Never the key itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public())
    }
}

/// The signature file's content.
#[derive(Debug, Serialize, Deserialize)]
struct SignatureFile {
    algorithm: String,
    key: String,
    signature: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The base64 words of a key text: PEM armour lines and `#` comments left out.
fn key_words(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter(|line| !line.trim_start().starts_with("-----"))
        .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|w| !w.is_empty())
}

impl SigningKey {
    /// A PKCS#8 ed25519 key as `openssl genpkey -algorithm ed25519` writes it (PEM, or the
    /// base64 body alone). Errors never show the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let body: String = key_words(text).collect();
        let der = b64()
            .decode(body.as_bytes())
            .map_err(|_| "not a PEM or base64 PKCS#8 key".to_owned())?;
        let seed = der
            .strip_prefix(&PKCS8_PREFIX[..])
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .ok_or_else(|| {
            "not an ed25519 private key (make one with `openssl genpkey -algorithm ed25519`)"
                .to_owned()
        })?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A new random key.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key as a PKCS#8 PEM file (what `openssl genpkey` writes).
    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", b64().encode(der))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// A secret derived from this key for `context` (HMAC-SHA256 keyed by the private seed):
    /// e.g. the key of incremental backups' chunk ids, so no second secret is to be kept.
    pub fn derive(&self, context: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(context);
        mac.finalize().into_bytes().into()
    }

    /// The signature file for `bytes` signed for `purpose`.
    pub fn sign(&self, purpose: Purpose, bytes: &[u8]) -> Vec<u8> {
        let signature = self.0.sign(&purpose.message(bytes));
        let file = SignatureFile {
            algorithm: ALGORITHM.into(),
            key: self.public().to_string(),
            signature: b64().encode(signature.to_bytes()),
        };
        serde_json::to_vec(&file).unwrap_or_default()
    }
}

/// A public key, shown as the base64 SPKI line `openssl pkey -pubout` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.0.as_bytes());
        f.write_str(&b64().encode(der))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    /// One base64 SPKI ed25519 public key.
    pub fn parse(word: &str) -> Result<Self, String> {
        let der = b64().decode(word.as_bytes()).map_err(|_| format!("{word:?} is not base64"))?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .ok_or_else(|| format!("{word:?} is not an ed25519 public key (MCowBQYDK2VwAyEA…)"))?;
        VerifyingKey::from_bytes(&raw)
            .map(Self)
            .map_err(|_| format!("{word:?} is not a valid ed25519 public key"))
    }

    /// Public keys, comma- or line-separated, `#` comments and PEM armour allowed.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        key_words(text).map(Self::parse).collect()
    }
}

/// What a signature check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Signature {
    /// Signed by this trusted key.
    Signed {
        /// The key.
        key: String,
    },
    /// No signature: taken before signing existed, or forged.
    Unsigned,
    /// Signed, but no key is trusted here, so it was not checked (the CLI without
    /// `STEWARD_BACKUP_TRUSTED_KEYS`).
    Unchecked,
    /// A signature that does not hold.
    Bad {
        /// Why.
        reason: String,
    },
}

/// The public keys whose signatures are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    keys: Vec<PublicKey>,
    /// Under host routing, the host whose backups these are: a manifest naming another host
    /// is refused (a copy of another host's signed backup into this host's prefix).
    host: Option<String>,
}

impl Trust {
    /// This trust for `host`'s own backups only ([`Trust::host`]).
    pub fn for_host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    /// The host whose backups alone are usable, under host routing.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Trusting `keys`.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        let mut trust = Self::default();
        for k in keys {
            trust = trust.with(k);
        }
        trust
    }

    /// Also trusting `key`.
    pub fn with(mut self, key: PublicKey) -> Self {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        self
    }

    /// Reads [`ENV_TRUSTED_KEYS`]; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let text = env.string(ENV_TRUSTED_KEYS, "");
        match PublicKey::parse_list(&text) {
            Ok(keys) => Self::new(keys),
            Err(reason) => {
                env.error(ENV_TRUSTED_KEYS, &text, reason);
                Self::default()
            }
        }
    }

    /// Whether no key is trusted (nothing can be checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks `signature` (the signature file's bytes, if there is one) over `bytes`.
    pub fn check(&self, purpose: Purpose, bytes: &[u8], signature: Option<&[u8]>) -> Signature {
        let Some(signature) = signature else { return Signature::Unsigned };
        let bad = |reason: &str| Signature::Bad { reason: reason.to_owned() };
        let Ok(file) = serde_json::from_slice::<SignatureFile>(signature) else {
            return bad("the signature file is unreadable");
        };
        if file.algorithm != ALGORITHM {
            return bad("the signature is not ed25519");
        }
        if self.is_empty() {
            return Signature::Unchecked;
        }
        let Ok(key) = PublicKey::parse(&file.key) else {
            return bad("the signature names no valid public key");
        };
        if !self.keys.contains(&key) {
            return Signature::Bad {
                reason: format!("signed by a key that is not trusted here ({key})"),
            };
        }
        let Some(sig) = b64()
            .decode(file.signature.as_bytes())
            .ok()
            .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
        else {
            return bad("the signature is malformed");
        };
        match key.0.verify_strict(&purpose.message(bytes), &sig) {
            Ok(()) => Signature::Signed { key: key.to_string() },
            Err(_) => bad("the signature does not match: it was changed after it was signed"),
        }
    }
}

/// Reads the signing key ([`ENV_SIGNING_KEY`], required) and the trusted keys (its own and
/// [`ENV_TRUSTED_KEYS`]); errors go to `env`, never showing the private key.
pub fn read_keys(env: &mut Env) -> (Option<SigningKey>, Trust) {
    let trust = Trust::read(env);
    let key = match env.optional(ENV_SIGNING_KEY) {
        Some(text) if !text.trim().is_empty() => match SigningKey::parse(&text) {
            Ok(key) => Some(key),
            Err(reason) => {
                env.error(ENV_SIGNING_KEY, "(not shown)", reason);
                None
            }
        },
        _ => {
            env.error(
                ENV_SIGNING_KEY,
                "",
                "required: the ed25519 key that signs backup manifests (compose/init-secrets.sh makes one; or `openssl genpkey -algorithm ed25519`), given as STEWARD_BACKUP_SIGNING_KEY_FILE",
            );
            None
        }
    };
    let trust = match &key {
        Some(key) => trust.with(key.public()),
        None => trust,
    };
    (key, trust)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_its_bytes_purpose_and_trusted_key() {
        let key = SigningKey::generate();
        let trust = Trust::new(vec![key.public()]);
        let sig = key.sign(Purpose::Manifest, b"{\"a\":1}");
        assert!(matches!(
            trust.check(Purpose::Manifest, b"{\"a\":1}", Some(&sig)),
            Signature::Signed { .. }
        ));
        let edited = trust.check(Purpose::Manifest, b"{\"a\":2}", Some(&sig));
        assert!(matches!(&edited, Signature::Bad { reason } if reason.contains("changed")));
        let other = trust.check(Purpose::Verified, b"{\"a\":1}", Some(&sig));
        assert!(matches!(other, Signature::Bad { .. }), "{other:?}");
        let stranger = SigningKey::generate().sign(Purpose::Manifest, b"{\"a\":1}");
        let foreign = trust.check(Purpose::Manifest, b"{\"a\":1}", Some(&stranger));
        assert!(matches!(&foreign, Signature::Bad { reason } if reason.contains("not trusted")));
        assert_eq!(trust.check(Purpose::Manifest, b"x", None), Signature::Unsigned);
        assert_eq!(
            Trust::default().check(Purpose::Manifest, b"{\"a\":1}", Some(&sig)),
            Signature::Unchecked
        );
        assert!(matches!(
            trust.check(Purpose::Manifest, b"x", Some(b"garbage")),
            Signature::Bad { .. }
        ));
    }

    #[test]
    fn keys_read_as_openssl_writes_them() {
        // `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` of it.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEILQO7HRWomXUoWjFIrARGd7PXgHB3dLyage/VcKDv+fG\n-----END PRIVATE KEY-----\n";
        let key = SigningKey::parse(pem).unwrap_or_else(|e| panic!("{e}"));
        let again = SigningKey::parse(&key.to_pem()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public(), key.public());
        let public = key.public().to_string();
        assert_eq!(public, "MCowBQYDK2VwAyEAZUC4Et+P+5o88oWYRmXigOJnYq6uS/KZ+Ut50XL1ZvQ=");
        let listed = format!(
            "# old\n-----BEGIN PUBLIC KEY-----\n{public}\n-----END PUBLIC KEY-----\n, {}",
            SigningKey::generate().public()
        );
        assert_eq!(PublicKey::parse_list(&listed).map(|k| k.len()), Ok(2));
        assert!(!format!("{key:?}").contains("MC4CAQ"), "{key:?}");
        let err = SigningKey::parse("MC4CAQAwBQYDK2VwBCIEIBLZ").err().unwrap_or_default();
        assert!(!err.contains("MC4CAQ"), "the key was echoed: {err}");
        assert!(PublicKey::parse("MCowBQYDK2VwAyEA").is_err());
    }

    #[test]
    fn the_signing_key_is_required_and_never_shown() {
        let mut env = Env::from_pairs(Vec::<(String, String)>::new());
        let (key, _) = read_keys(&mut env);
        assert!(key.is_none());
        let e = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(ENV_SIGNING_KEY) && e.contains("openssl genpkey"), "{e}");

        let mut env = Env::from_pairs([(ENV_SIGNING_KEY, "MC4CAQAwBQYDK2VwBCIEIBLZsecret")]);
        let _ = read_keys(&mut env);
        let e = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(ENV_SIGNING_KEY) && !e.contains("secret"), "{e}");

        let signer = SigningKey::generate();
        let other = SigningKey::generate().public().to_string();
        let pem = signer.to_pem();
        let mut env =
            Env::from_pairs([(ENV_SIGNING_KEY, pem.as_str()), (ENV_TRUSTED_KEYS, &other)]);
        let (key, trust) = read_keys(&mut env);
        assert!(env.finish().is_ok());
        assert_eq!(key.map(|k| k.public()), Some(signer.public()));
        assert_eq!(trust.keys().len(), 2, "its own key and the configured one");
    }
}
