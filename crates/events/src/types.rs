//! Small value types shared by several payloads.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A content digest such as `sha256:4f1c…`, validated on construction and on decode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected ALGORITHM:HEX such as sha256:<64 hex digits>")]
pub struct DigestError(pub String);

impl Digest {
    /// Parses `algorithm:hex` (OCI image-spec digest grammar, sha256/sha512 lengths checked).
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let err = || DigestError(s.to_owned());
        let (algo, hex) = s.split_once(':').ok_or_else(err)?;
        let want = match algo {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(err()),
        };
        let lower_hex = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex.len() != want || !lower_hex {
            return Err(err());
        }
        Ok(Self(s.to_owned()))
    }

    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> &str {
        let hex = self.0.split_once(':').map_or(self.0.as_str(), |(_, h)| h);
        &hex[..hex.len().min(12)]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256_and_rejects_garbage() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert_eq!(Digest::parse(&good).map(|d| d.short().to_owned()), Ok("a1a1a1a1a1a1".into()));
        for bad in ["", "sha256:", "sha256:xyz", "md5:abcd", &format!("sha256:{}", "A1".repeat(32))]
        {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
