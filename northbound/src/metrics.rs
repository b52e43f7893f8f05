//! `GET /metrics`: Prometheus text format. Connections by state and endpoints by health are
//! read from the controller at scrape time; REST request latency is a histogram per method,
//! route (ids collapsed) and status class; data-plane failures are the controller's counter.
//! What the northbound cannot see (the eNSMs' device sessions) comes from a hook the binary
//! provides, already in the text format.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use meshwire_controller::{ConnectionFilter, Controller};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Extra metric lines (text format) appended to every scrape.
pub type Extra = Arc<dyn Fn() -> String + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    connections: Family<Labels, Gauge>,
    endpoints: Family<Labels, Gauge>,
    driver_errors: Counter,
    latency: Family<Labels, Histogram>,
    extra: Option<Extra>,
}

impl Metrics {
    pub fn new(extra: Option<Extra>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let connections = Family::<Labels, Gauge>::default();
        registry.register(
            "meshwire_connections",
            "Connections by state",
            connections.clone(),
        );
        let endpoints = Family::<Labels, Gauge>::default();
        registry.register(
            "meshwire_endpoints",
            "Registered endpoints, up or withdrawn (down)",
            endpoints.clone(),
        );
        let driver_errors = Counter::default();
        registry.register(
            "meshwire_driver_errors",
            "Data-plane operations that failed (apply, remove, repair, heal)",
            driver_errors.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "meshwire_http_request_duration_seconds",
            "REST request latency",
            latency.clone(),
        );
        Arc::new(Metrics {
            registry,
            connections,
            endpoints,
            driver_errors,
            latency,
            extra,
        })
    }

    /// The scrape: current values from `ctl`, then everything in text format.
    pub fn render(&self, ctl: &Controller) -> String {
        for s in [
            "requested",
            "programming",
            "up",
            "healing",
            "closed",
            "failed",
        ] {
            self.connections
                .get_or_create(&vec![("state".to_string(), s.to_string())])
                .set(0);
        }
        for c in ctl.connections(&ConnectionFilter::default()) {
            let state = serde_json::to_value(c.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.connections
                .get_or_create(&vec![("state".to_string(), state)])
                .inc();
        }
        let eps = ctl.endpoints();
        let down = eps.iter().filter(|e| e.down).count() as i64;
        self.endpoints
            .get_or_create(&vec![("state".to_string(), "up".to_string())])
            .set(eps.len() as i64 - down);
        self.endpoints
            .get_or_create(&vec![("state".to_string(), "down".to_string())])
            .set(down);
        let seen = self.driver_errors.get();
        let now = ctl.driver_errors();
        if now > seen {
            self.driver_errors.inc_by(now - seen);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        if let Some(extra) = &self.extra {
            // Before the closing `# EOF` of the OpenMetrics text.
            let body = out
                .trim_end()
                .strip_suffix("# EOF")
                .unwrap_or(&out)
                .to_string();
            out = format!("{body}{}# EOF\n", extra());
        }
        out
    }

    fn observe(&self, method: &str, route: String, status: u16, secs: f64) {
        self.latency
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("route".to_string(), route),
                ("status".to_string(), format!("{}xx", status / 100)),
            ])
            .observe(secs);
    }
}

/// The label of a request: the template of the route that matched (`/api/v1/connections/{id}`),
/// never the raw path, so what a caller types cannot add series. Paths no route matched share
/// one label, and so do requests that no route could take at all.
fn route(req: &Request) -> String {
    match req.extensions().get::<axum::extract::MatchedPath>() {
        Some(m) => m.as_str().to_string(),
        None => "unmatched".to_string(),
    }
}

/// Methods outside the ones the API serves share one label too.
fn method(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware timing every request.
pub async fn timed(
    axum::extract::State(m): axum::extract::State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let verb = method(req.method());
    let path = route(&req);
    let t = Instant::now();
    let resp = next.run(req).await;
    m.observe(
        verb,
        path,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use std::sync::Arc;
    use tower::ServiceExt;

    /// Input: 3,000 requests to random paths, before and without authentication. Output:
    /// `/metrics` holds one `unmatched` series for them, and ids are route templates.
    #[tokio::test]
    async fn nb_random_paths_add_no_series() {
        let ctl = meshwire_controller::Controller::start(
            Arc::new(meshwire_controller::store::memory::MemoryStore::default()),
            Arc::new(meshwire_controller::NullDriver),
            Arc::new(meshwire_controller::SystemClock),
            meshwire_controller::Config::default(),
        )
        .await
        .unwrap();
        let app = crate::router(ctl);
        let get = |uri: String| {
            let app = app.clone();
            async move {
                app.oneshot(Request::get(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap()
            }
        };
        for i in 0..3000 {
            get(format!("/x{i}/y")).await;
        }
        get("/api/v1/connections/abc".into()).await;
        get("/api/v1/connections/def".into()).await;
        let resp = get("/metrics".into()).await;
        let text = String::from_utf8(
            axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(!text.contains("/x1"), "raw paths in labels");
        assert!(text.contains(r#"route="unmatched""#));
        assert!(
            text.contains(r#"route="/api/v1/connections/{id}""#),
            "{text}"
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("meshwire_http_request_duration_seconds_count"))
            .count();
        assert!(series <= 4, "{series} series:\n{text}");
    }
}
