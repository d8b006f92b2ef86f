//! NATS subject patterns (`*` one token, `>` the rest), for client-side filtering.

/// Whether `subject` matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards() {
        assert!(matches("update.>", "update.rolled_back"));
        assert!(matches("update.*", "update.started"));
        assert!(matches("*.failed", "backup.failed"));
        assert!(matches("image.updated", "image.updated"));
        assert!(!matches("update.>", "update"));
        assert!(!matches("update.*", "backup.done"));
        assert!(!matches("image", "image.updated"));
        assert!(!matches("image.updated.x", "image.updated"));
    }
}
