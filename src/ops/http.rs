//! Health and metrics over HTTP, served when `HTTP_PORT` is set:
//!
//! - `GET /health/live`: 200 while the process runs, 503 when a consumer loop has shown
//!   no progress for `HTTP_LIVENESS_STALL_SECONDS` (a call that never returns); a handler
//!   that fails otherwise exits by itself;
//! - `GET /health/ready`: 200 when the database, the Schema Registry and Kafka answered
//!   the latest probe and both consumers have their partitions from the group; 503
//!   otherwise and while stopping. The body says which check failed and why;
//! - `GET /metrics`: Prometheus metrics ([`crate::ops::metrics`]).
//!
//! A prober thread checks the dependencies every few seconds and the endpoint answers
//! from its latest results ([`crate::ops::readiness`]), so a probe never waits on a
//! dependency (Kubernetes gives a probe one second by default) and a busy probe
//! schedule adds no load to them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use log::{info, warn};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

pub(crate) use crate::ops::dependencies::{Dependencies, KafkaClients, PROBE_TIMEOUT};
use crate::ops::readiness::{self, Latest};
use crate::ops::scraped::Scraped;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The bound server; `address` has the actual port when `HTTP_PORT=0`.
pub struct HttpServer {
    server: Server,
    pub address: SocketAddr,
}

/// Binds the port now, so that a port in use stops start-up with a clear reason.
pub fn bind(address: SocketAddr) -> Result<HttpServer, String> {
    let server = Server::http(address)
        .map_err(|e| format!("cannot serve HTTP on {address} (HTTP_PORT): {e}"))?;
    let address = server.server_addr().to_ip().unwrap_or(address);
    Ok(HttpServer { server, address })
}

/// Serves until shutdown; runs the prober on a thread of its own.
pub fn serve(http: HttpServer, dependencies: Arc<Dependencies>) {
    let latest = Arc::new(Latest::default());
    let prober = {
        let (dependencies, latest) = (Arc::clone(&dependencies), Arc::clone(&latest));
        thread::Builder::new()
            .name("prober".into())
            .spawn(move || readiness::probe_until_shutdown(&dependencies, &latest))
    };
    let prober = prober
        .map_err(|error| {
            warn!("cannot start the readiness prober: {error}; /health/ready will answer 503")
        })
        .ok();
    info!(
        "serving health and metrics on http://{}/ (/health/live, /health/ready, /metrics)",
        http.address
    );
    while !dependencies.shutdown.load(Ordering::Acquire) {
        match http.server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => answer(request, &dependencies, &latest),
            Ok(None) => {}
            Err(error) => {
                warn!("HTTP server: {error}");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
    // The prober may hold a consumer; joined, it has let go before the process ends, so
    // the consumers leave their group on the main thread.
    if let Some(prober) = prober {
        let _ = prober.join();
    }
}

fn answer(request: Request, dependencies: &Dependencies, latest: &Latest) {
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let response = match (request.method(), path.as_str()) {
        (Method::Get | Method::Head, "/health/live") => match stalled_loop(dependencies) {
            None => json_response(200, &json!({"status": "up"})),
            Some(detail) => json_response(503, &json!({"status": "stuck", "detail": detail})),
        },
        (Method::Get | Method::Head, "/health/ready") => {
            let (ready, body) = readiness::answer(dependencies, latest);
            json_response(if ready { 200 } else { 503 }, &body)
        }
        (Method::Get | Method::Head, "/metrics") => {
            let now = Scraped::read(dependencies, latest);
            let text = dependencies.metrics.encode(now);
            Response::from_string(text).with_header(header("Content-Type", OPENMETRICS))
        }
        (Method::Get | Method::Head, _) => json_response(404, &json!({"error": "not found"})),
        _ => json_response(405, &json!({"error": "method not allowed"})),
    };
    // The client may have gone away; nothing to do about it.
    let _ = request.respond(response);
}

/// A consumer loop silent for longer than allowed, described; None when all progress.
fn stalled_loop(dependencies: &Dependencies) -> Option<String> {
    let clients = dependencies.clients.get()?;
    clients.heartbeats.iter().find_map(|(topic, heartbeat)| {
        let silent = heartbeat.silent_for();
        (silent > dependencies.liveness_stall).then(|| {
            format!(
                "the consumer loop of {topic} has shown no progress for {} s",
                silent.as_secs()
            )
        })
    })
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid static header")
}
