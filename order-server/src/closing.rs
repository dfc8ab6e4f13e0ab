//! [`Closing`]: how a server ends its long-lived streams when it begins to shut down.

use tokio_util::sync::CancellationToken;

/// Ends the event streams a [`router`](crate::router) serves (`GET /orders/{id}/events` and
/// `GET /metrics/stream`): each would otherwise hold its connection, and a graceful drain,
/// open until the client leaves. Give one to [`RouterOptions::closing`](crate::RouterOptions)
/// and [`close`](Closing::close) it when shutting down, before draining connections; the
/// binary does so on SIGTERM. Clones share one state.
///
/// ```
/// let closing = order_server::Closing::new();
/// let mut options = order_server::RouterOptions::default();
/// options.closing = closing.clone();
/// // ... serve order_server::router(processor, &options) ...
/// closing.close();
/// assert!(closing.is_closed());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Closing(CancellationToken);

impl Closing {
    /// Streams that stay open until [`close`](Self::close).
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every stream of the routers given this one, open now or opened later.
    pub fn close(&self) {
        self.0.cancel();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once [`close`](Self::close) is called.
    pub(crate) async fn closed(&self) {
        self.0.cancelled().await;
    }
}
