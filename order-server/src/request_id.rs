//! Request ids and the span of each request.
//!
//! Every request gets an `x-request-id`: the client's own when it sent a usable one (1 to 128
//! characters among ASCII letters, digits and `-_.:+/=@`), otherwise a fresh UUID. The
//! response carries it back, and every log line written while the request is served, order
//! acceptance included, is inside a `request` span that carries it with the method and route.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderName;
use tracing::Span;

/// The header that carries the id, both ways.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id taken from a client, in bytes: a UUID is 36, a W3C trace id 32.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes a client's `x-request-id` that is empty, longer than [`MAX_REQUEST_ID_LEN`], or
/// holds a character outside the allowed set, so that a fresh one is made in its place. The id
/// goes into every log line of the request: a client must not be able to bloat the logs or
/// forge their structure (quotes, spaces, newlines) with it.
pub(crate) async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .is_none_or(|id| is_usable(id.as_bytes()));
    if !usable {
        request.headers_mut().remove(&REQUEST_ID_HEADER);
    }
    request
}

fn is_usable(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

/// The span of one request: its id, method, route template (`unmatched` when no route
/// matched) and URI. At info level, so that the request id is on every info line logged
/// inside it.
pub(crate) fn request_span(request: &Request) -> Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        route,
        uri = %request.uri(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_length_and_characters() {
        assert!(is_usable(b"3f2a9c1e-0b7d-4c55-9a7e-2f1d8b6c4e10"));
        assert!(is_usable(b"trace:abc/123+x=y@edge_1.2"));
        assert!(is_usable(&[b'a'; MAX_REQUEST_ID_LEN]));
        assert!(!is_usable(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(!is_usable(b""));
        assert!(!is_usable(b"with space"));
        assert!(!is_usable(b"quote\"d"));
        assert!(!is_usable("caf\u{e9}".as_bytes()));
    }
}
