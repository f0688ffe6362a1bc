//! HTTP requests by route and status, and their latency.
//!
//! The route label is the template axum matched (`/{owner}/{name}/info/refs`),
//! never the raw path, and `unmatched` for every request no route took: the
//! label's values are the router's routes, however many paths clients try.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::Metrics;

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

/// Labels of the latency histogram (no status: fewer series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type Histograms = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Latency buckets, in seconds: 1 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

/// The HTTP families.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Histograms,
}

impl HttpMetrics {
    /// Register `http_*` into `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by matched route template and status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request to its response head, by matched route template (a git response body streams after it)",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let route = route.to_owned();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }
}

/// The route a response was answered by (set by [`tag_route`]).
#[derive(Clone)]
struct Route(Arc<str>);

/// Count every request of `router`: a route layer names the matched route
/// on the response; the outer layer counts and times every request.
pub fn instrument(router: Router, metrics: Arc<Metrics>) -> Router {
    router
        .route_layer(axum::middleware::from_fn(tag_route))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
}

async fn tag_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| Route(Arc::from(m.as_str())));
    let mut resp = next.run(req).await;
    if let Some(route) = route {
        resp.extensions_mut().insert(route);
    }
    resp
}

async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = resp.extensions().get::<Route>().map(|r| Arc::clone(&r.0));
    metrics.http.observe(
        route.as_deref().unwrap_or(UNMATCHED),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}
