//! The HTTP endpoint (`[metrics] listen`, default `127.0.0.1:9477`):
//!
//! - `GET /metrics`: Prometheus / OpenMetrics text ([`super::telemetry`]);
//! - `GET /healthz`: 200 while the event loop runs, else 503 and why;
//! - `GET /readyz`: 200 once the programs are attached and a feed is armed,
//!   else 503 and why (the DaemonSet's readiness probe);
//! - `GET /status`: the whole snapshot as JSON (`torsensor status`).
//!
//! Read-only: nothing here changes the daemon. It runs as a task on the
//! daemon's runtime; the socket is bound before the kernel is touched, so
//! an address in use stops the start with one sentence.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use super::telemetry::Telemetry;

struct Shared {
    telemetry: Arc<Telemetry>,
    registry: Registry,
}

/// A bound, not yet serving, endpoint.
pub struct Endpoint {
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` (port 0: any free port; [`Endpoint::addr`] says which).
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        Ok(Endpoint { listener, addr })
    }

    /// Serves until the returned task is aborted.
    pub fn serve(self, telemetry: Arc<Telemetry>) -> tokio::task::JoinHandle<()> {
        let shared = Arc::new(Shared {
            registry: telemetry.registry(),
            telemetry,
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .with_state(shared);
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, app).await {
                tracing::error!("metrics endpoint {addr} stopped: {e}");
            }
        })
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn verdict(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    verdict(shared.telemetry.read().healthy())
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    verdict(shared.telemetry.read().ready())
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.telemetry.read()).into_response()
}
