//! The OpenAPI tags that group the routes. A leaf: each handler names its tag, and the
//! document describes them, without the handlers' modules and the document's importing each
//! other.

/// The tag of the routes that create, list, read, cancel and watch orders.
pub(crate) const ORDERS: &str = "orders";
/// The tag of the routes that measure the system and say whether it can serve.
pub(crate) const MONITORING: &str = "monitoring";
/// The tag of the route that serves the OpenAPI document.
pub(crate) const DOCUMENTATION: &str = "documentation";
/// The tag of the routes that serve the dashboard page.
pub(crate) const DASHBOARD: &str = "dashboard";
