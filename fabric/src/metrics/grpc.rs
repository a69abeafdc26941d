//! Request latency by RPC and gRPC status code: a middleware on the node's gRPC routes.
//!
//! ```text
//!   request ──► track ──► tonic service ──► response headers (grpc-status on errors)
//!                                            body ──► Metered ──► trailers (grpc-status)
//!                                                        └─ end or drop: observe(rpc, code, elapsed)
//! ```
//!
//! The time is taken when the response body ends (its trailers are sent), so a streaming
//! RPC counts its whole life, as other gRPC servers' handling-time histograms do. A body the
//! client drops before its status is counted as `CANCELLED`.
//!
//! Label values are bounded: `rpc` is a request path only when its service is one the node
//! serves and the call was not answered `UNIMPLEMENTED` (an unknown method), and at most
//! [`MAX_RPCS`] paths are kept; anything else is `rpc="other"`. `code` is one of the 17
//! gRPC code names.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;

use super::histogram::{Histogram, LATENCY_BUCKETS_S};
use super::text::{Kind, Text};

/// Most distinct RPC paths labelled; more share `rpc="other"`.
pub const MAX_RPCS: usize = 128;
/// Longest path kept as a label.
const MAX_PATH_BYTES: usize = 128;

/// The gRPC status codes' names, by number (the names the gRPC specification uses).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;
const UNIMPLEMENTED: usize = 12;

/// One histogram per code, made on first use.
#[derive(Debug, Default)]
struct PerCode([OnceLock<Histogram>; 17]);

impl PerCode {
    fn observe(&self, code: usize, elapsed: Duration) {
        self.0[code].get_or_init(|| Histogram::new(LATENCY_BUCKETS_S)).observe(elapsed);
    }
}

/// Latency histograms by RPC path and code.
#[derive(Debug)]
pub struct Rpcs {
    /// Services whose paths may be labels (`weft.fabric.v1.State`, ...).
    services: Vec<&'static str>,
    paths: RwLock<HashMap<String, Arc<PerCode>>>,
    other: Arc<PerCode>,
}

impl Rpcs {
    /// Histograms for the RPCs of `services` (gRPC service names).
    pub fn new(services: Vec<&'static str>) -> Self {
        Self { services, paths: RwLock::default(), other: Arc::default() }
    }

    fn known(&self, path: &str) -> Option<Arc<PerCode>> {
        self.paths.read().unwrap_or_else(|p| p.into_inner()).get(path).cloned()
    }

    /// The series of `path`, made if the path may be a label and there is room.
    fn series(&self, path: &str) -> Arc<PerCode> {
        let service = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|(s, _)| s);
        if path.len() > MAX_PATH_BYTES || !service.is_some_and(|s| self.services.contains(&s)) {
            return self.other.clone();
        }
        let mut paths = self.paths.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = paths.get(path) {
            return s.clone();
        }
        if paths.len() >= MAX_RPCS {
            return self.other.clone();
        }
        paths.entry(path.to_owned()).or_default().clone()
    }

    /// Writes the family.
    pub fn render(&self, t: &mut Text, node: &str) {
        let name = "weft_grpc_server_handling_seconds";
        t.family(
            name,
            "gRPC requests this node served, by method (rpc) and status code, from request to trailers.",
            Kind::Histogram,
        );
        let mut paths: Vec<(String, Arc<PerCode>)> = self
            .paths
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        paths.push(("other".into(), self.other.clone()));
        for (rpc, per_code) in &paths {
            for (code, h) in per_code.0.iter().enumerate() {
                if let Some(h) = h.get() {
                    t.histogram(
                        name,
                        &[("node", node), ("rpc", rpc), ("code", CODE_NAMES[code])],
                        &h.snapshot(),
                    );
                }
            }
        }
    }
}

fn code_of(value: Option<&axum::http::HeaderValue>) -> Option<usize> {
    let code: usize = value?.to_str().ok()?.parse().ok()?;
    Some(if code < CODE_NAMES.len() { code } else { UNKNOWN })
}

/// The middleware: times each request until its response body ends.
pub async fn track(State(rpcs): State<Arc<Rpcs>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Looked up before the call, so a known path costs no allocation.
    let series = match rpcs.known(req.uri().path()) {
        Some(s) => Series::Known(s),
        None => Series::Path(req.uri().path().to_owned()),
    };
    let response = next.run(req).await;
    let code = code_of(response.headers().get("grpc-status"))
        .or_else(|| (!response.status().is_success()).then_some(UNKNOWN));
    let (parts, body) = response.into_parts();
    let metered = Metered { inner: body, code, pending: Some(Pending { rpcs, series, start }) };
    Response::from_parts(parts, Body::new(metered))
}

enum Series {
    Known(Arc<PerCode>),
    Path(String),
}

struct Pending {
    rpcs: Arc<Rpcs>,
    series: Series,
    start: Instant,
}

impl Pending {
    fn observe(self, code: usize) {
        let elapsed = self.start.elapsed();
        let series = match (code, self.series) {
            (UNIMPLEMENTED, _) => self.rpcs.other.clone(),
            (_, Series::Known(s)) => s,
            (_, Series::Path(path)) => self.rpcs.series(&path),
        };
        series.observe(code, elapsed);
    }
}

/// A response body that records its request when it ends or is dropped.
struct Metered {
    inner: Body,
    /// The status, once headers or trailers have told it.
    code: Option<usize>,
    pending: Option<Pending>,
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| code_of(t.get("grpc-status"))) {
                    self.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(UNKNOWN),
            Poll::Ready(None) => self.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Metered {
    /// Records the request once: with the status seen, else with `fallback`.
    fn finish(&mut self, fallback: usize) {
        if let Some(p) = self.pending.take() {
            p.observe(self.code.unwrap_or(fallback));
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // A body dropped before its status was sent: the client went away.
        self.finish(CANCELLED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let rpcs = Rpcs::new(vec!["weft.fabric.v1.State"]);
        let put = rpcs.series("/weft.fabric.v1.State/Put");
        assert!(Arc::ptr_eq(&put, &rpcs.series("/weft.fabric.v1.State/Put")));
        assert!(Arc::ptr_eq(&rpcs.series("/other.Service/Put"), &rpcs.other));
        assert!(Arc::ptr_eq(&rpcs.series("/weft.fabric.v1.State"), &rpcs.other));
        for i in 0..2 * MAX_RPCS {
            rpcs.series(&format!("/weft.fabric.v1.State/M{i}"));
        }
        assert_eq!(rpcs.paths.read().unwrap().len(), MAX_RPCS);
        assert!(Arc::ptr_eq(&rpcs.series("/weft.fabric.v1.State/Late"), &rpcs.other));
    }
}
