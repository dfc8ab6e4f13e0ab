//! The dashboard: one HTML page, served at `/` and `/dashboard`, that shows the system live.
//!
//! The page is plain HTML, CSS and JavaScript compiled into the binary (`index.html`,
//! `dashboard.css` and `dashboard.js` in the `dashboard/` folder beside this file, joined
//! into one document at the first request): nothing is fetched from elsewhere, and it works
//! offline. It reads the API like
//! any client: `GET /metrics/stream` for the counts and charts, `GET /orders` for the table
//! (a page at a time, refreshed at most once a second and only when the counts move),
//! `GET /orders/{id}/events` for the order it shows, and `POST /orders/{id}/cancel`.
//!
//! The page holds no secret, so it is served without a token; when the API answers `401`, it
//! asks for one and keeps it in the tab's `sessionStorage`. Its `Content-Security-Policy`
//! allows its own inline script and style (by their SHA-256 digests) and requests to its own
//! origin, and nothing else.

use std::sync::{Arc, LazyLock};

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use utoipa::ToResponse;

use order_core::OrderProcessor;

use crate::history::History;
use crate::tags::DASHBOARD;

const TEMPLATE: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// The page as served, with the headers that depend on its content.
struct Page {
    html: String,
    etag: HeaderValue,
    csp: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = TEMPLATE
        .replacen("/* STYLE */", STYLE, 1)
        .replacen("/* SCRIPT */", SCRIPT, 1);
    let etag = format!("\"{}\"", hex(&Sha256::digest(html.as_bytes())[..12]));
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        base64(&Sha256::digest(SCRIPT.as_bytes())),
        base64(&Sha256::digest(STYLE.as_bytes())),
    );
    Page {
        html,
        // Both are made of hex, base64 and ASCII punctuation: always valid header values.
        etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
        csp: HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'none'")),
    }
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Standard base64 with padding, as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Show the dashboard.
///
/// The live dashboard page: counts by status, throughput and processing-time charts, the
/// queue, and the latest orders, which can be filtered, opened and cancelled. One HTML
/// document with its script and style inline; it asks for a token when the API needs one.
#[utoipa::path(
    get,
    path = "/dashboard",
    operation_id = "getDashboard",
    tag = DASHBOARD,
    responses(
        (status = 200, response = DashboardPage),
        (status = 304, response = PageNotModified),
    ),
)]
pub(crate) async fn dashboard(
    State(processor): State<OrderProcessor>,
    Extension(history): Extension<Arc<History>>,
    headers: HeaderMap,
) -> Response {
    history.start_sampling(&processor);
    page(&headers)
}

/// Show the dashboard.
///
/// The same page as `/dashboard`, at the root.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "getRoot",
    tag = DASHBOARD,
    responses(
        (status = 200, response = DashboardPage),
        (status = 304, response = PageNotModified),
    ),
)]
pub(crate) async fn root(
    processor: State<OrderProcessor>,
    history: Extension<Arc<History>>,
    headers: HeaderMap,
) -> Response {
    dashboard(processor, history, headers).await
}

/// The answer of both page routes.
#[derive(ToResponse)]
#[response(description = "The dashboard page.", content_type = "text/html")]
// Only its documentation is used: the page is answered by `page`.
#[allow(dead_code)]
pub(crate) struct DashboardPage(String);

/// A revalidation of an unchanged page.
#[derive(ToResponse)]
#[response(description = "The page has not changed since the `ETag` the client holds.")]
#[allow(dead_code)]
pub(crate) struct PageNotModified;

fn page(request: &HeaderMap) -> Response {
    let page = &*PAGE;
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == page.etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            page.html.clone(),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, page.etag.clone());
    // Revalidated on every load (a 304 costs nothing), so a new binary's page shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_one_document_with_its_style_and_script_inline() {
        assert!(PAGE.html.contains(STYLE));
        assert!(PAGE.html.contains(SCRIPT));
        assert!(!PAGE.html.contains("/* STYLE */"));
        assert!(!PAGE.html.contains("/* SCRIPT */"));
    }
}
