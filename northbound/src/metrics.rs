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

/// The route of `path` for labels: `/api/v1/<kind>` kept, anything after it `{id}...`.
fn route(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["api", "v1", kind] => format!("/api/v1/{kind}"),
        ["api", "v1", kind, _] => format!("/api/v1/{kind}/{{id}}"),
        ["api", "v1", kind, _, rest @ ..] => format!("/api/v1/{kind}/{{id}}/{}", rest.join("/")),
        [one] if ["healthz", "readyz", "metrics", "openapi.json"].contains(one) => {
            format!("/{one}")
        }
        _ => "other".to_string(),
    }
}

/// Middleware timing every request.
pub async fn timed(
    axum::extract::State(m): axum::extract::State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let path = route(req.uri().path());
    let t = Instant::now();
    let resp = next.run(req).await;
    m.observe(
        &method,
        path,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_collapse_ids() {
        assert_eq!(route("/api/v1/connections"), "/api/v1/connections");
        assert_eq!(
            route("/api/v1/connections/1a2b"),
            "/api/v1/connections/{id}"
        );
        assert_eq!(
            route("/api/v1/endpoints/fw1/status"),
            "/api/v1/endpoints/{id}/status"
        );
        assert_eq!(route("/metrics"), "/metrics");
        assert_eq!(route("/x/y/z/w"), "other");
    }
}
