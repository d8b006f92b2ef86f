//! steward-agekeys: age keys as the operator writes them, one parser for the backup service
//! (backups encrypted to `STEWARD_BACKUP_AGE_RECIPIENTS`) and the CLI (`steward kit`).
//!
//! Invariants: pure parsing, no I/O; an error never shows an identity (a private key).

use std::str::FromStr;

pub use age::x25519::{Identity, Recipient};

/// Age keys, one per line or separated by commas or spaces; `#` starts a comment (the
/// format `age-keygen` writes).
fn key_words(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|w| !w.is_empty())
}

/// Recipients (`age1…`). An error shows the word only when it looks like a recipient: an
/// identity pasted in the wrong place is named by its position, never echoed.
pub fn parse_recipients(text: &str) -> Result<Vec<Recipient>, String> {
    key_words(text)
        .enumerate()
        .map(|(i, w)| {
            Recipient::from_str(w).map_err(|e| match w.starts_with("age1") {
                true => format!("{w:?} is not an age recipient: {e}"),
                false => format!("recipient {} is not an age recipient (age1...): {e}", i + 1),
            })
        })
        .collect()
}

/// Identities (`AGE-SECRET-KEY-1…`); errors never show the key.
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, String> {
    key_words(text)
        .enumerate()
        .map(|(i, w)| {
            Identity::from_str(w)
                .map_err(|e| format!("identity {} is not an age identity: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_age_keygen_writes_them() {
        let id = Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_owned();
        let file = format!("# created: now\n# public key: {}\n{secret}\n", id.to_public());
        let ids = parse_identities(&file).unwrap_or_default();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].to_public(), id.to_public());
        let two = format!("{}, {}", id.to_public(), Identity::generate().to_public());
        assert_eq!(parse_recipients(&two).map(|r| r.len()), Ok(2));
        let e = parse_identities("AGE-SECRET-KEY-1NOTAKEY").err().unwrap_or_default();
        assert!(e.starts_with("identity 1 ") && !e.contains("NOTAKEY"), "{e}");
        let pasted = format!("{}, {secret}", id.to_public());
        let e = parse_recipients(&pasted).err().unwrap_or_default();
        assert!(e.starts_with("recipient 2 ") && !e.contains(&secret[16..]), "{e}");
    }
}
