//! The stable error codes of the platform, from the signaling wire (`NodeEvent.code`,
//! `Delivery.error.code`) to the pages (`error.code` in WebSocket frames). One enum,
//! so a code is spelled in exactly one place.

use serde::{Deserialize, Serialize};

/// Why a client's request failed. Serialized as `snake_case` (e.g. `rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    BadJson,
    /// `type` missing or unknown.
    UnknownType,
    /// A known type with missing or invalid fields.
    BadRequest,
    /// Frame over the size limit.
    TooLarge,
    /// Too many frames; slow down.
    RateLimited,
    /// Unknown stream or peer.
    NotFound,
    /// Needs an access token: none was given, or it is expired or forged.
    Unauthenticated,
    /// Not allowed (e.g. signaling an unrelated peer, or a token without the grant).
    Forbidden,
    /// Conflicts with current state (e.g. already live).
    Conflict,
    /// A capacity limit is reached (e.g. the stream has its maximum of watchers, the relay its
    /// maximum of subscribers): it may pass.
    Full,
    /// A limit of the caller's own is reached (e.g. its live streams per subject, its creates per
    /// minute): retrying changes nothing until it ends something or the minute passes.
    Limited,
    /// A backend is unavailable; retry.
    Unavailable,
    /// The client's network cannot carry even the lowest quality of the stream: the relay stopped
    /// sending it (a better network, then a new watch, helps).
    TooSlow,
}

impl ErrorCode {
    const ALL: [Self; 13] = [
        Self::BadJson,
        Self::UnknownType,
        Self::BadRequest,
        Self::TooLarge,
        Self::RateLimited,
        Self::NotFound,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::Conflict,
        Self::Full,
        Self::Limited,
        Self::Unavailable,
        Self::TooSlow,
    ];

    /// The wire spelling, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Conflict => "conflict",
            Self::Full => "full",
            Self::Limited => "limited",
            Self::Unavailable => "unavailable",
            Self::TooSlow => "too_slow",
        }
    }

    /// The HTTP status that says the same (WHIP/WHEP answers): 400, 401, 403, 404, 409, 413, 429
    /// (`rate_limited`, `limited`: no `Retry-After`, waiting alone does not help), 503.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadJson | Self::UnknownType | Self::BadRequest => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::RateLimited | Self::Limited => 429,
            Self::Full | Self::Unavailable | Self::TooSlow => 503,
        }
    }

    /// Parses a wire code; an unknown one (a newer peer) reads as `unavailable`.
    pub fn from_wire(code: &str) -> Self {
        Self::ALL.into_iter().find(|c| c.as_str() == code).unwrap_or(Self::Unavailable)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn wire_spelling_matches_serde_and_round_trips() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.as_str()));
            assert_eq!(ErrorCode::from_wire(c.as_str()), c);
        }
        assert_eq!(ErrorCode::from_wire("something_new"), ErrorCode::Unavailable);
    }

    #[test]
    fn codes_map_to_http() {
        let status = |c: &str| ErrorCode::from_wire(c).http_status();
        assert_eq!(
            ["bad_request", "unauthenticated", "forbidden", "not_found", "conflict", "full", "limited", "unavailable"]
                .map(status),
            [400, 401, 403, 404, 409, 503, 429, 503]
        );
    }
}
