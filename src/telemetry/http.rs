//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, and (given a store) the greylist
//! administration of [`crate::admin`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Metrics;

/// Readiness as the health endpoint reports it: rules loaded and upstream reachable.
#[derive(Debug, Default)]
pub struct Health {
    pub rules_loaded: AtomicBool,
    pub upstream_reachable: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.rules_loaded.load(Ordering::Relaxed) && self.upstream_reachable.load(Ordering::Relaxed)
    }
}

/// Failed accepts of the metrics listener: one line per interval.
static METRICS_ACCEPT_ERRORS: crate::log_limit::LogLimiter = crate::log_limit::LogLimiter::new(
    "metrics listener: accept failed",
    tracing::Level::WARN,
    1,
    std::time::Duration::from_secs(10),
);

/// Serves `/metrics`, `/healthz` and `/readyz` (and, given a store, the greylist admin
/// endpoints of [`crate::admin`]) until the task is dropped.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    admin: Option<Arc<dyn crate::store::Store>>,
) -> std::io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: wait and go on. Returning would close the endpoint
                // for good, hiding the very trouble it should show.
                if METRICS_ACCEPT_ERRORS.allow("metrics") {
                    tracing::warn!(error = %e, "metrics listener: accept failed; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let health = health.clone();
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(req, &metrics, &health, admin.as_deref()).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Admin request bodies are a key or a pattern: anything longer is refused.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn route(
    req: Request<hyper::body::Incoming>,
    metrics: &Metrics,
    health: &Health,
    admin: Option<&dyn crate::store::Store>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let (status, body) = match path.as_str() {
        "/metrics" => {
            return text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.encode(),
            );
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if health.ready() => (StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: rules_loaded={} upstream_reachable={}\n",
                health.rules_loaded.load(Ordering::Relaxed),
                health.upstream_reachable.load(Ordering::Relaxed)
            ),
        ),
        p if p.starts_with("/greylist") && admin.is_some() => {
            let method = req.method().clone();
            let body = match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => {
                    return text_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        "body too large\n".into(),
                    );
                }
            };
            match crate::admin::from_http(&method, &path, &body) {
                Some(cmd) => crate::admin::serve(admin.expect("checked above"), cmd).await,
                None => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    text_response(status, "text/plain", body)
}

fn text_response(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds the metrics listener (separate so the caller can report the bound address).
pub async fn bind_http(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
