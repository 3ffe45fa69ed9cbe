//! `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` is 200 while the process serves HTTP. `/readyz` says "this replica can do its
//! part", which is the same question for a leader and a follower, because every replica serves
//! the webhook (the Service in front of it sends requests to ready pods only):
//! - its webhook certificate is loaded, when the webhook is served;
//! - it has done its role's start-up: a follower has read the Lease and found it held (the API
//!   server answers it), the leader has rebuilt its port tables and its watches have listed
//!   what exists (it reconciles from a complete picture);
//! - it is not shutting down.
//!
//! Once ready, a follower that takes over stays ready while it loads: its webhook keeps serving,
//! and dropping it from the Service then would only refuse pods.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::Metrics;

/// What `/readyz` answers (see the module doc).
#[derive(Default)]
pub struct Readiness {
    started: AtomicBool,
    stopping: AtomicBool,
    webhook: OnceLock<Arc<crate::webhook::tls::CertSlot>>,
}

impl Readiness {
    /// This replica's role has started: a follower saw the Lease held, or the leader loaded.
    pub fn started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// The webhook serves from `slot`: ready only once a certificate is loaded there.
    pub fn webhook(&self, slot: Arc<crate::webhook::tls::CertSlot>) {
        let _ = self.webhook.set(slot);
    }

    /// The process is shutting down.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("shutting down");
        }
        if self.webhook.get().is_some_and(|slot| !slot.is_loaded()) {
            return Err("the webhook certificate is not loaded yet");
        }
        if !self.started.load(Ordering::SeqCst) {
            return Err("starting: waiting for the Lease, or, leading, for the port tables and watches to load");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

/// Serves the operator's HTTP endpoints until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<Readiness>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(s): State<AppState>| async move { s.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                match s.ready.check() {
                    Ok(()) => (StatusCode::OK, "ok"),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .with_state(AppState { metrics, ready });
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for /metrics and health checks: {e}; pick another --http-addr")
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_started_with_a_loaded_certificate_and_not_stopping() {
        let r = Readiness::default();
        assert!(r.check().unwrap_err().starts_with("starting"));
        r.started();
        assert_eq!(r.check(), Ok(()));
        let slot = Arc::new(crate::webhook::tls::CertSlot::default());
        r.webhook(slot);
        assert_eq!(r.check(), Err("the webhook certificate is not loaded yet"));
        let r = Readiness::default();
        r.started();
        r.stopping();
        assert_eq!(r.check(), Err("shutting down"));
    }
}
