//! Page sizes and opaque page tokens (a hex-encoded keyset cursor).

use crate::error::RegistryError;
use crate::store::Cursor;

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: usize = 100;

/// Validates a requested page size.
pub fn page_size(requested: u32) -> Result<usize, RegistryError> {
    match usize::try_from(requested).unwrap_or(usize::MAX) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(RegistryError::InvalidArgument(format!("page_size {n} is over the maximum of {MAX_PAGE_SIZE}"))),
    }
}

/// Encodes a cursor as an opaque token.
pub fn encode(cursor: &Cursor) -> String {
    hex::encode(format!("v1:{}:{}", cursor.started_at, cursor.id))
}

/// Decodes a token from a previous response; empty means the first page.
pub fn decode(token: &str) -> Result<Option<Cursor>, RegistryError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || RegistryError::InvalidArgument("page_token is not a token this server issued".to_owned());
    let raw = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ':');
    let (Some("v1"), Some(ts), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let started_at = ts.parse().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok(Some(Cursor { started_at, id: id.to_owned() }))
}

/// Splits `items` (fetched with `limit + 1`) into a page and the next token.
pub fn paginate<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> Cursor) -> (Vec<T>, String) {
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(|t| encode(&key(t))).unwrap_or_default();
        (items, next)
    } else {
        (items, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn every_cursor_round_trips_through_its_token(started_at in proptest::num::i64::ANY, id in ".{1,80}") {
            let c = Cursor { started_at, id };
            let token = encode(&c);
            proptest::prop_assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "opaque and URL-safe");
            proptest::prop_assert_eq!(decode(&token).unwrap(), Some(c));
        }

        #[test]
        fn any_token_decodes_or_is_refused_without_panicking(token in ".{0,200}") {
            if let Ok(Some(c)) = decode(&token) {
                proptest::prop_assert!(!c.id.is_empty());
                proptest::prop_assert_eq!(encode(&c), token.to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn token_round_trips() {
        let c = Cursor { started_at: 1_700_000_000_123, id: "abc:def".to_owned() };
        assert_eq!(decode(&encode(&c)).ok().flatten(), Some(c));
        assert_eq!(decode("").ok().flatten(), None);
    }

    #[test]
    fn rejects_foreign_tokens() {
        for t in ["zz", "00", &hex::encode("v2:1:a"), &hex::encode("v1:x:a"), &hex::encode("v1:1:")] {
            assert!(matches!(decode(t), Err(RegistryError::InvalidArgument(_))), "{t}");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).ok(), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(100).ok(), Some(100));
        assert!(page_size(101).is_err());
    }
}
