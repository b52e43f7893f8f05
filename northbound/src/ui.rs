//! The operator's view at `/ui`: a static page (HTML, CSS, our script and the vendored
//! cytoscape.js) built into the binary, so nothing is fetched from the network at run time. The
//! page holds no data: it reads the API with the operator's token like any other client, so the
//! assets are served without one and the API's own checks decide what the page may see.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use meshwire_controller::Controller;

/// The cytoscape.js release vendored under `ui/vendor/` (MIT; its licence is beside it).
pub const CYTOSCAPE_VERSION: &str = "3.35.0";

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const CYTOSCAPE: &str = include_str!("../ui/vendor/cytoscape-3.35.0.min.js");
const CYTOSCAPE_LICENSE: &str = include_str!("../ui/vendor/LICENSE.cytoscape");

/// Scripts and styles from this origin only, no frames, no plugins; the page talks to this
/// controller alone.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// Whether `path` is one of the page's assets (served without a token).
pub fn is_asset(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Adds the page's routes to `router`.
pub fn routes(router: Router<Controller>) -> Router<Controller> {
    let index = || async { asset("text/html; charset=utf-8", INDEX) };
    router
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/vendor/cytoscape-3.35.0.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", CYTOSCAPE) }),
        )
        .route(
            "/ui/vendor/LICENSE.cytoscape",
            get(|| async { asset("text/plain; charset=utf-8", CYTOSCAPE_LICENSE) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_what_is_built_in() {
        // Every script and stylesheet the page names is served here; none comes from elsewhere.
        for src in [
            "/ui/app.css",
            "/ui/vendor/cytoscape-3.35.0.min.js",
            "/ui/app.js",
        ] {
            assert!(INDEX.contains(src), "{src}");
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(CYTOSCAPE.contains(CYTOSCAPE_VERSION));
        assert!(
            CYTOSCAPE_LICENSE.contains("MIT")
                || CYTOSCAPE_LICENSE.contains("Permission is hereby granted")
        );
        // The script only reads.
        for verb in ["method:", "\"POST\"", "\"PUT\"", "\"DELETE\"", "\"PATCH\""] {
            assert!(!APP_JS.contains(verb), "the page must not write ({verb})");
        }
    }
}
