//! Typed identifiers. An id that exists has passed validation: 1..=64 characters
//! from `[A-Za-z0-9_.:-]`, so it is safe in Redis keys, file names and URLs.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("id must not be empty")]
    Empty,
    /// The string was longer than 64 characters.
    #[error("id is longer than 64 characters")]
    TooLong,
    /// The string had a character outside `[A-Za-z0-9_.:-]`.
    #[error("id has an invalid character {0:?}")]
    BadChar(char),
    /// The string was `.` or `..` (a path component, never an id).
    #[error("id must not be . or ..")]
    Dots,
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > 64 {
        return Err(IdError::TooLong);
    }
    if s == "." || s == ".." {
        return Err(IdError::Dots);
    }
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A fresh, time-ordered random id (UUID v7, simple form).
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().simple().to_string())
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                validate(s)?;
                Ok(Self(s.to_owned()))
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                validate(&s)?;
                Ok(Self(s))
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A stream (one broadcast).
    StreamId
);
id_type!(
    /// A connected peer (browser socket or recorder session), chosen by the server.
    PeerId
);
id_type!(
    /// A process that owns sockets: a gateway or recorder replica.
    NodeId
);
id_type!(
    /// A recording (one WebM file).
    RecordingId
);

/// What starts the id of a recorder's peer ([`PeerId::recorder`]); generated ids never do (hex).
const RECORDER_PREFIX: &str = "rec-";

impl PeerId {
    /// A fresh id for a recorder's peer: relays send such a subscriber a stream's top simulcast
    /// layer whatever its bandwidth estimate (a recording should be the best copy). Only the
    /// recorder makes these: browsers and WHIP/WHEP sessions get ids the server generates.
    pub fn recorder() -> Self {
        Self(format!("{RECORDER_PREFIX}{}", uuid::Uuid::now_v7().simple()))
    }

    /// Whether this is a recorder's peer ([`PeerId::recorder`]).
    pub fn is_recorder(&self) -> bool {
        self.0.starts_with(RECORDER_PREFIX)
    }
}

impl NodeId {
    /// The node's bus channel, `onair:node:{id}`: signaling publishes its deliveries there.
    pub fn channel(&self) -> String {
        format!("onair:node:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_unique() {
        let a = StreamId::generate();
        let b = StreamId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<StreamId>().as_ref(), Ok(&a));
    }

    #[test]
    fn recorder_peers_are_valid_ids_that_say_so_and_no_generated_one_does() {
        let r = PeerId::recorder();
        assert!(r.is_recorder());
        assert_eq!(r.as_str().parse::<PeerId>().as_ref(), Ok(&r));
        for _ in 0..100 {
            assert!(!PeerId::generate().is_recorder());
        }
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!("".parse::<PeerId>(), Err(IdError::Empty));
        assert_eq!("a".repeat(65).parse::<PeerId>(), Err(IdError::TooLong));
        assert_eq!("../etc".parse::<RecordingId>(), Err(IdError::BadChar('/')));
        assert_eq!("a b".parse::<NodeId>(), Err(IdError::BadChar(' ')));
        assert_eq!("..".parse::<RecordingId>(), Err(IdError::Dots));
        assert_eq!(".".parse::<StreamId>(), Err(IdError::Dots));
        assert!("gw-1:abc_DEF.9".parse::<NodeId>().is_ok());
    }

    /// The rule, restated independently of `validate`.
    fn is_valid_id(s: &str) -> bool {
        (1..=64).contains(&s.len())
            && s != "."
            && s != ".."
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_exactly_when_it_is_a_valid_id(s in ".{0,70}") {
            proptest::prop_assert_eq!(s.parse::<StreamId>().is_ok(), is_valid_id(&s));
        }

        #[test]
        fn valid_ids_round_trip_and_never_leave_a_directory(s in "[A-Za-z0-9_.:-]{1,64}") {
            proptest::prop_assume!(s != "." && s != "..");
            let id: RecordingId = s.parse().unwrap();
            proptest::prop_assert_eq!(id.to_string(), s.clone());
            let json = serde_json::to_string(&id).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<RecordingId>(&json).unwrap(), id);
            let path = std::path::Path::new(&s);
            proptest::prop_assert_eq!(path.components().count(), 1);
            proptest::prop_assert!(matches!(path.components().next(), Some(std::path::Component::Normal(_))));
        }
    }

    #[test]
    fn serde_validates() {
        let ok: Result<StreamId, _> = serde_json::from_str("\"abc\"");
        assert!(ok.is_ok());
        let bad: Result<StreamId, _> = serde_json::from_str("\"a/b\"");
        assert!(bad.is_err());
    }
}
