//! Client-side encryption with [age](https://age-encryption.org): components are encrypted
//! to the operator's recipients (public keys) after compression, so the store never sees
//! plaintext; verify and restore need a matching identity (private key).
//!
//! Invariants: a component is encrypted to every configured recipient or not stored at all
//! (an encryption error fails the upload, never truncates it silently); what is read back
//! through [`decrypting`] ends with an error, not a clean end, when the ciphertext was
//! cut short or altered (age authenticates every 64 KiB chunk and the last one).

use std::fmt;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use steward_agekeys::{Identity, Recipient};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio_util::compat::{FuturesAsyncReadCompatExt as _, TokioAsyncReadCompatExt as _};

/// age recipients (public keys) new backups are encrypted to; unset: not encrypted.
pub const ENV_AGE_RECIPIENTS: &str = "STEWARD_BACKUP_AGE_RECIPIENTS";
/// age identities (private keys) that verify and restore encrypted backups; best given as
/// [`ENV_AGE_IDENTITY_FILE`].
pub const ENV_AGE_IDENTITY: &str = "STEWARD_BACKUP_AGE_IDENTITY";
/// The file variant of [`ENV_AGE_IDENTITY`] (an `age-keygen` key file).
pub const ENV_AGE_IDENTITY_FILE: &str = "STEWARD_BACKUP_AGE_IDENTITY_FILE";

/// The encoding of a component compressed and then encrypted.
pub const ZSTD_AGE: &str = "zstd+age";
/// The encoding of a component only compressed.
pub const ZSTD: &str = "zstd";

/// The operator's keys: recipients to encrypt new backups to, identities to read them.
#[derive(Clone, Default)]
pub struct Keys {
    recipients: Vec<Recipient>,
    identities: Vec<Identity>,
}

impl fmt::Debug for Keys {
    // Never the identities: they are private keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("recipients", &self.recipients)
            .field("identities", &self.identities.len())
            .finish()
    }
}

pub use steward_agekeys::{parse_identities, parse_recipients};

impl Keys {
    /// Reads [`ENV_AGE_RECIPIENTS`] and [`ENV_AGE_IDENTITY`]; each error names its own
    /// variable and never shows an identity's value. Errors go to `env`.
    pub fn read(env: &mut steward_runtime::Env) -> Self {
        let text = env.string(ENV_AGE_RECIPIENTS, "");
        let recipients = parse_recipients(&text).unwrap_or_else(|reason| {
            env.error(ENV_AGE_RECIPIENTS, &text, reason);
            vec![]
        });
        parse_identities(&env.string(ENV_AGE_IDENTITY, ""))
            .and_then(|identities| Self::matched(recipients, identities))
            .unwrap_or_else(|reason| {
                env.error(ENV_AGE_IDENTITY, "(not shown)", reason);
                Self::default()
            })
    }

    /// Parses recipients (`age1…`) and identities (`AGE-SECRET-KEY-1…`); either may be
    /// empty. Identities that match none of the recipients are refused: every backup
    /// taken would fail its verification.
    pub fn parse(recipients: &str, identities: &str) -> Result<Self, String> {
        Self::matched(parse_recipients(recipients)?, parse_identities(identities)?)
    }

    /// Keys whose identities include one of the recipients' (when both are given).
    pub fn matched(recipients: Vec<Recipient>, identities: Vec<Identity>) -> Result<Self, String> {
        if !recipients.is_empty()
            && !identities.is_empty()
            && !identities.iter().any(|i| recipients.contains(&i.to_public()))
        {
            return Err("no identity belongs to any of the recipients: new backups could not be verified or restored here".into());
        }
        Ok(Self { recipients, identities })
    }

    /// Keys from existing values (tests).
    pub fn new(recipients: Vec<Recipient>, identities: Vec<Identity>) -> Self {
        Self { recipients, identities }
    }

    /// Whether new backups are encrypted.
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// Whether an identity is configured (this installation reads encrypted backups).
    pub fn reads_encrypted(&self) -> bool {
        !self.identities.is_empty()
    }

    /// The encoding new components get.
    pub fn encoding(&self) -> &'static str {
        if self.encrypts() {
            ZSTD_AGE
        } else {
            ZSTD
        }
    }

    /// Encrypts what is read through `inner` when there are recipients; passes it through
    /// otherwise.
    pub fn seal<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        inner: R,
    ) -> io::Result<Pin<Box<dyn AsyncRead + Send + Unpin>>> {
        if !self.encrypts() {
            return Ok(Box::pin(inner));
        }
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(io::Error::other)?;
        let out = Sink::default();
        let writer = encryptor.wrap_output(out.clone())?;
        Ok(Box::pin(Encrypting {
            inner,
            writer: Some(writer),
            out,
            buf: vec![0; 64 << 10].into_boxed_slice(),
        }))
    }

    /// Reads an age-encrypted stream with the configured identities.
    pub async fn decrypting<R>(&self, inner: R) -> Result<impl AsyncRead + Send + Unpin, String>
    where
        R: AsyncBufRead + Send + Unpin,
    {
        if self.identities.is_empty() {
            return Err(format!(
                "it is encrypted with age and this service has no identity ({})",
                ENV_AGE_IDENTITY_FILE
            ));
        }
        let decryptor = age::Decryptor::new_async_buffered(inner.compat())
            .await
            .map_err(|e| format!("not a readable age file: {e}"))?;
        let reader = decryptor
            .decrypt_async(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| format!("cannot decrypt it with the configured identities: {e}"))?;
        Ok(reader.compat())
    }
}

impl Keys {
    /// The recipients, sorted, one a line: what a chunk id's key depends on (chunks sealed to
    /// other recipients are not shared).
    pub fn recipients_text(&self) -> String {
        let mut words: Vec<String> = self.recipients.iter().map(|r| r.to_string()).collect();
        words.sort();
        words.join("\n")
    }

    /// `plain` sealed to the recipients in memory (one chunk; [`Keys::seal`] for streams);
    /// `plain` itself, not copied, without recipients (a chunk in flight holds one copy).
    pub fn seal_bytes(&self, plain: Vec<u8>) -> io::Result<Vec<u8>> {
        if !self.encrypts() {
            return Ok(plain);
        }
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(plain.len().saturating_add(1024));
        let mut writer = encryptor.wrap_output(&mut out)?;
        writer.write_all(&plain)?;
        writer.finish()?;
        Ok(out)
    }

    /// What [`Keys::seal_bytes`] sealed, opened as it is read: a read fails if the bytes were
    /// altered or cut short. An error if it is not age or not for these identities.
    pub fn open_reader<'a, R: io::Read + 'a>(
        &self,
        sealed: R,
    ) -> Result<impl io::Read + 'a, String> {
        if self.identities.is_empty() {
            return Err(format!(
                "it is encrypted with age and this service has no identity ({})",
                ENV_AGE_IDENTITY_FILE
            ));
        }
        let decryptor =
            age::Decryptor::new(sealed).map_err(|e| format!("not a readable age file: {e}"))?;
        decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| format!("cannot decrypt it with the configured identities: {e}"))
    }
}

/// Where the encryptor writes; drained by [`Encrypting::poll_read`].
#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An [`AsyncRead`] of the age encryption of what `inner` yields. Encrypting in the
/// reader's own task (ChaCha20-Poly1305 runs at GB/s) keeps errors in the stream: there
/// is no second task whose failure could look like a clean end.
struct Encrypting<R> {
    inner: R,
    /// `None` once the input ended and the last chunk was written.
    writer: Option<age::stream::StreamWriter<Sink>>,
    out: Sink,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Encrypting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            {
                let mut out = this.out.0.lock().unwrap_or_else(|p| p.into_inner());
                if !out.is_empty() {
                    let n = out.len().min(dst.remaining());
                    dst.put_slice(&out[..n]);
                    out.drain(..n);
                    return Poll::Ready(Ok(()));
                }
            }
            let Some(writer) = this.writer.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if let Some(writer) = this.writer.take() {
                    writer.finish()?;
                }
            } else {
                writer.write_all(read.filled())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, BufReader};

    fn keys() -> (Keys, Identity) {
        let identity = Identity::generate();
        (Keys::new(vec![identity.to_public()], vec![identity.clone()]), identity)
    }

    async fn seal(keys: &Keys, plain: &[u8]) -> Vec<u8> {
        let mut sealed = vec![];
        keys.seal(std::io::Cursor::new(plain.to_vec()))
            .expect("encryptor")
            .read_to_end(&mut sealed)
            .await
            .expect("encrypt");
        sealed
    }

    async fn open(keys: &Keys, sealed: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut reader = keys.decrypting(BufReader::new(std::io::Cursor::new(sealed))).await?;
        let mut plain = vec![];
        reader.read_to_end(&mut plain).await.map_err(|e| e.to_string())?;
        Ok(plain)
    }

    #[tokio::test]
    async fn a_sealed_stream_opens_to_the_same_bytes_and_hides_them() {
        let (keys, _) = keys();
        // Several age chunks (64 KiB) and a ragged end.
        let plain: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&keys, &plain).await;
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        assert!(!sealed.windows(64).any(|w| w == &plain[1000..1064]), "plaintext leaked");
        assert_eq!(open(&keys, sealed).await.expect("decrypt"), plain);
    }

    #[tokio::test]
    async fn truncated_altered_or_foreign_ciphertext_is_an_error_not_a_short_read() {
        let (keys, _) = keys();
        let plain = vec![7u8; 200_000];
        let sealed = seal(&keys, &plain).await;
        let cut = sealed[..sealed.len() - 70_000].to_vec();
        assert!(open(&keys, cut).await.is_err(), "a truncated file decrypted");
        let mut flipped = sealed.clone();
        let at = flipped.len() - 10;
        flipped[at] ^= 1;
        assert!(open(&keys, flipped).await.is_err(), "an altered file decrypted");
        let (stranger, _) = self::keys();
        let err = open(&stranger, sealed.clone()).await.expect_err("a foreign key decrypted");
        assert!(err.contains("identities"), "{err}");
        let no_identity = Keys::new(keys.recipients.clone(), vec![]);
        let err = open(&no_identity, sealed).await.expect_err("decrypted without identity");
        assert!(err.contains(ENV_AGE_IDENTITY_FILE), "{err}");
    }

    #[test]
    fn keys_parse_from_keygen_files_and_lists_and_mismatches_are_refused() {
        let a = Identity::generate();
        let b = Identity::generate();
        let identity_file = format!(
            "# created: 2026-11-23\n# public key: {}\n{}\n",
            a.to_public(),
            secrecy_free(&a)
        );
        let recipients = format!("{} , {}\n# old key\n", a.to_public(), b.to_public());
        let keys = Keys::parse(&recipients, &identity_file).expect("parse");
        assert_eq!(keys.recipients.len(), 2);
        assert_eq!(keys.identities.len(), 1);
        assert_eq!(keys.encoding(), ZSTD_AGE);
        assert!(!format!("{keys:?}").contains("AGE-SECRET-KEY"), "{keys:?}");

        let err = Keys::parse(&b.to_public().to_string(), &identity_file).expect_err("mismatch");
        assert!(err.contains("no identity belongs"), "{err}");
        let err = Keys::parse("age1nope", "").expect_err("bad recipient");
        assert!(err.contains("age1nope"), "{err}");
        let err = Keys::parse("", "AGE-SECRET-KEY-1NOPE").expect_err("bad identity");
        assert!(!err.contains("NOPE"), "the secret was echoed: {err}");
        assert_eq!(Keys::parse("", "").expect("empty").encoding(), ZSTD);
    }

    fn secrecy_free(identity: &Identity) -> String {
        use age::secrecy::ExposeSecret as _;
        identity.to_string().expose_secret().to_owned()
    }
}
