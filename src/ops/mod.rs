//! Operating the handler: Prometheus metrics, liveness and readiness over HTTP, the
//! dependency probes they and `check` share, and the `check` and `health` commands.

pub mod check;
pub(crate) mod dependencies;
pub mod health_check;
pub(crate) mod heartbeat;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod probe;
pub(crate) mod readiness;
pub(crate) mod scraped;
pub(crate) mod stalls;
