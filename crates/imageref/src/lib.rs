//! Image references read the way Docker reads them: `nginx` is
//! `docker.io/library/nginx:latest`, `localhost:5000/x` is on registry `localhost:5000`,
//! `x:1.0@sha256:…` is pinned by its digest.
//!
//! [`ImageRef`] is the one parser of image references in Steward: the watcher, the updater,
//! the engine crate (pull credentials) and the backup service all read references through it,
//! so they agree on what a reference names. It wraps `oci_spec::distribution::Reference` (the
//! type `oci_client::Reference` re-exports), a port of Docker's own grammar and normalisation,
//! and adds bounds and clear errors for hostile input.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::{ParseError, Reference};

/// Docker Hub's registry name after normalisation (`index.docker.io` becomes this too).
pub const DOCKER_HUB: &str = "docker.io";

/// The key `docker login` stores Docker Hub credentials under in `config.json`.
pub const DOCKER_HUB_CREDENTIAL_KEY: &str = "https://index.docker.io/v1/";

/// The longest reference accepted: a 255-character name (Docker's limit), a 128-character tag
/// and a sha512 digest, with their separators. Longer input is refused before any parsing.
pub const MAX_LEN: usize = 255 + 1 + 128 + 1 + 7 + 128;

/// An image reference, normalised: registry, repository, tag and/or digest.
///
/// Invariant: only made by [`ImageRef::parse`] (or [`ImageRef::with_tag`], which parses), so
/// every part is valid by Docker's grammar, the registry is never empty, and a reference with
/// neither tag nor digest has the tag `latest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef(Reference);

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {input:?} is invalid: {reason}")]
pub struct ImageRefError {
    /// The input, cut to its first 80 characters (it may be hostile).
    pub input: String,
    /// What is wrong with it.
    pub reason: Reason,
}

/// What is wrong with a would-be image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Nothing at all.
    #[error("it is empty")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("it is {0} characters long; at most {MAX_LEN} are allowed")]
    TooLong(usize),
    /// A character no reference has (space, control, non-ASCII, punctuation).
    #[error("it contains {0:?}")]
    Character(char),
    /// A registry, path component, tag or digest is missing (`/x`, `a//b`, `x:`, `x@`).
    #[error("it has an empty part")]
    EmptyPart,
    /// `..` or another run of separators.
    #[error("it has \"..\" or consecutive separators")]
    Separators,
    /// The repository has upper-case letters (tags and registry hosts may).
    #[error("the repository must be lowercase")]
    Uppercase,
    /// The repository is longer than 255 characters.
    #[error("the repository name is longer than 255 characters")]
    NameTooLong,
    /// The digest is not `sha256:` + 64 hex (or sha384/sha512 of their lengths).
    #[error("the digest is malformed or of an unsupported algorithm")]
    Digest,
    /// Anything else Docker's grammar refuses.
    #[error("it is not of the form [registry/]repository[:tag][@digest]")]
    Format,
}

impl ImageRef {
    /// Parses `s` as Docker does (`docker pull s`), normalising Docker Hub references.
    pub fn parse(s: &str) -> Result<Self, ImageRefError> {
        let fail = |reason| Err(ImageRefError { input: s.chars().take(80).collect(), reason });
        if s.is_empty() {
            return fail(Reason::Empty);
        }
        // Bounded before the regex sees it; characters first, for a precise message.
        if s.len() > MAX_LEN {
            return fail(Reason::TooLong(s.len()));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
        }) {
            return fail(Reason::Character(c));
        }
        match Reference::try_from(s) {
            Ok(r) => Ok(Self(r)),
            Err(e) => fail(diagnose(s, e)),
        }
    }

    /// The registry host, normalised: `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `localhost`.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository within the registry: `library/nginx`, `gitea/gitea`, `org/app`.
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    /// The tag: as written, `latest` when neither tag nor digest was given, `None` for a
    /// reference by digest only.
    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The digest (`sha256:…`), if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// Pinned: the reference names one digest (with or without a tag beside it; Docker then
    /// ignores the tag), so there is nothing newer to run under it.
    pub fn is_pinned(&self) -> bool {
        self.digest().is_some()
    }

    /// On Docker Hub (written `nginx`, `docker.io/…` or `index.docker.io/…`).
    pub fn is_docker_hub(&self) -> bool {
        self.registry() == DOCKER_HUB
    }

    /// The key of this registry's credentials in Docker's `config.json` (what `docker login`
    /// wrote): `https://index.docker.io/v1/` for Docker Hub, else the registry host.
    pub fn credential_key(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_CREDENTIAL_KEY
        } else {
            self.registry()
        }
    }

    /// The repository the way Docker prints it (its "familiar" name): `nginx`, `gitea/gitea`,
    /// `ghcr.io/org/app`, `127.0.0.1:5000/app`. Docker reads it back as the same repository.
    pub fn familiar_name(&self) -> String {
        if self.is_docker_hub() {
            let repo = self.repository();
            match repo.strip_prefix("library/") {
                Some(official) if !official.contains('/') => official.to_owned(),
                _ => repo.to_owned(),
            }
        } else {
            format!("{}/{}", self.registry(), self.repository())
        }
    }

    /// Registry and repository, normalised: `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// Same registry and repository (tags and digests aside).
    pub fn same_repository(&self, other: &ImageRef) -> bool {
        self.registry() == other.registry() && self.repository() == other.repository()
    }

    /// The same repository under tag `tag` (no digest); an invalid tag is an error.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ImageRefError> {
        Self::parse(&format!("{}:{tag}", self.name()))
    }

    /// The same reference as `oci_client::Reference` / `oci_spec::distribution::Reference`,
    /// for the registry client.
    pub fn as_oci(&self) -> &Reference {
        &self.0
    }
}

/// A precise reason for a string Docker's grammar refused (only on the error path).
fn diagnose(s: &str, e: ParseError) -> Reason {
    match e {
        ParseError::NameEmpty => Reason::Empty,
        ParseError::NameTooLong => Reason::NameTooLong,
        ParseError::NameContainsUppercase => Reason::Uppercase,
        ParseError::DigestInvalidFormat
        | ParseError::DigestInvalidLength
        | ParseError::DigestUnsupported => Reason::Digest,
        ParseError::ReferenceInvalidFormat | ParseError::TagInvalidFormat => {
            if s.split(['/', ':', '@']).any(str::is_empty) {
                Reason::EmptyPart
            } else if ["..", "._", "_.", ".-", "-.", "___"].iter().any(|run| s.contains(run)) {
                Reason::Separators
            } else if s.split_once('@').is_some_and(|(name, _)| Reference::try_from(name).is_ok()) {
                Reason::Digest
            } else if Reference::try_from(s.to_ascii_lowercase().as_str()).is_ok() {
                Reason::Uppercase
            } else {
                Reason::Format
            }
        }
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ImageRef {
    /// The normalised reference: `docker.io/library/nginx:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({self})")
    }
}

#[cfg(test)]
mod tests;
