//! Channel and topic names, and the patterns tokens grant them with.

/// Longest channel or topic name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// True when `name` may be used as a channel or topic: 1 to 128 bytes of
/// `[A-Za-z0-9._:@-]` (ids are escaped into subject tokens by the bus crate, so
/// this is about keeping names readable, not about NATS safety).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// True when `pattern` grants `name`: `*` grants every name, `prefix*` every name
/// starting with `prefix`, anything else only itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("*", "anything"));
        assert!(matches("room.*", "room.1"));
        assert!(!matches("room.*", "rooms"));
        assert!(matches("news", "news"));
        assert!(!matches("news", "news2"));
        assert!(!matches("", "x"));
    }

    #[test]
    fn names() {
        assert!(valid_name("room.42:a@b_c-d"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a>b"));
        assert!(!valid_name("новости"));
        assert!(!valid_name(&"a".repeat(129)));
    }
}
