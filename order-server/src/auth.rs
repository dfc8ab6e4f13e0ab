//! Bearer tokens: with `API_TOKEN` set, every route but the health probes and the dashboard
//! page needs one.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::paths::is_open;

/// The tokens that may call the API; none: the API is open.
///
/// Only their SHA-256 digests are kept, and a presented token is compared with each of them in
/// constant time (digests of equal length, every token compared), so neither a token nor its
/// length can be learnt from response times. `Debug` shows how many there are, never a token.
///
/// ```
/// use order_server::ApiTokens;
///
/// let tokens: ApiTokens = "s3cret-one, s3cret-two".parse().unwrap();
/// assert_eq!(tokens.len(), 2);
/// assert_eq!(format!("{tokens:?}"), "ApiTokens(2 tokens)");
/// assert!("".parse::<ApiTokens>().is_err());
/// ```
#[derive(Clone, Default)]
pub struct ApiTokens(Arc<Vec<[u8; 32]>>);

/// `API_TOKEN` was set but names no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API_TOKEN names no token: give one or more, separated by commas, or leave it unset")]
pub struct NoTokens;

impl FromStr for ApiTokens {
    type Err = NoTokens;

    /// Comma-separated tokens; spaces around each are ignored.
    fn from_str(tokens: &str) -> Result<Self, NoTokens> {
        let tokens = Self::new(tokens.split(',').map(str::trim).filter(|t| !t.is_empty()));
        if tokens.is_empty() {
            Err(NoTokens)
        } else {
            Ok(tokens)
        }
    }
}

impl ApiTokens {
    /// These tokens; none leaves the API open.
    pub fn new<T: AsRef<str>>(tokens: impl IntoIterator<Item = T>) -> Self {
        Self(Arc::new(
            tokens
                .into_iter()
                .map(|token| digest(token.as_ref()))
                .collect(),
        ))
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No token: the API is open.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller that `presented` identifies, if it is one of the tokens.
    fn caller(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        // Every token is compared, matching or not, so the time taken says nothing.
        let mut matched = subtle::Choice::from(0);
        for token in self.0.iter() {
            matched |= token.ct_eq(&presented);
        }
        bool::from(matched).then(|| Caller::of(&presented))
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.0.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who made a request: the scope of its idempotency keys, so that two clients' keys never
/// meet. Derived from the token's digest, never the token itself; empty on an open API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) scope: String,
}

impl Caller {
    fn of(digest: &[u8; 32]) -> Self {
        let scope = digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Self { scope }
    }
}

/// Lets a request through with its [`Caller`], or answers `401` with `WWW-Authenticate`.
pub(crate) async fn require_token(
    State(tokens): State<ApiTokens>,
    mut request: Request,
    next: Next,
) -> Response {
    if tokens.is_empty() || is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let (message, challenge) = match presented.map(|token| tokens.caller(token)) {
        Some(Some(caller)) => {
            request.extensions_mut().insert(caller);
            return next.run(request).await;
        }
        Some(None) => (
            "the bearer token is not valid",
            r#"Bearer realm="order-server", error="invalid_token""#,
        ),
        None => (
            "a bearer token is required: Authorization: Bearer <token>",
            r#"Bearer realm="order-server""#,
        ),
    };
    let mut response = ApiError::Unauthorized(message.to_owned()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_and_callers_differ() {
        let tokens: ApiTokens = "alpha,beta".parse().unwrap();
        let alpha = tokens.caller("alpha").unwrap();
        let beta = tokens.caller("beta").unwrap();
        assert_ne!(alpha, beta);
        assert_eq!(alpha.scope.len(), 16);
        assert!(!alpha.scope.contains("alpha"));
        for wrong in ["", "alph", "alpha ", "ALPHA", "alphabeta", "alpha,beta"] {
            assert!(tokens.caller(wrong).is_none(), "{wrong:?}");
        }
        assert!(" , ,".parse::<ApiTokens>().is_err());
    }
}
