//! Which paths are special to the layers around the routes: the probes, and the dashboard
//! page. A leaf, so that the routes, the token check, the load shedding and the OpenAPI
//! document all read one list without importing each other.

/// The paths of the liveness and readiness probes: never behind a token (an orchestrator's
/// probe carries none) and never shed (a probe that fails under load gets a busy server
/// restarted).
pub(crate) const PROBE_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The paths the dashboard page is served at: open without a token.
pub(crate) const PAGE_PATHS: [&str; 2] = ["/", "/dashboard"];

/// Whether `path` is served without a token: the probes, and the dashboard page, which holds
/// no secret and asks for the token that the API needs.
pub(crate) fn is_open(path: &str) -> bool {
    PROBE_PATHS.contains(&path) || PAGE_PATHS.contains(&path)
}
