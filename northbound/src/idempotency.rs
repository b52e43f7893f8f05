//! Idempotent creates: a `POST` carrying `Idempotency-Key` is done once; a retry with the same
//! key and body gets the first answer again (with `Idempotent-Replayed: true`), a retry while the
//! first is still running gets 409, and the same key with a different body gets 422.
//!
//! Keys are remembered for [`TTL`], at most [`CAPACITY`] of them and [`MAX_BYTES`] of answers
//! (the oldest go first), per caller (the `Authorization` header) and path. Answers of 5xx are not remembered, so a retry
//! after a server error runs again. This memory is the controller process's: a restart forgets
//! it. A connection request's key is also stored with the connection it made
//! (`Controller::request_once`), so the same request after a restart or a failover gets that
//! connection again (`200`, `Idempotent-Replayed: true`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use meshwire_models::document::fnv1a64 as hash;

use crate::Problem;

pub const HEADER: &str = "idempotency-key";
pub const TTL: Duration = Duration::from_secs(24 * 3600);
pub const CAPACITY: usize = 10_000;
/// Bytes of remembered answers, over all keys: the oldest go first past it.
pub const MAX_BYTES: usize = 32 * 1024 * 1024;
/// An answer larger than this is not kept (the key is forgotten, as after a 5xx).
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
enum Entry {
    Running,
    Done {
        body: u64,
        status: StatusCode,
        headers: HeaderMap,
        bytes: Bytes,
    },
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(u64, String), (Instant, Entry)>,
    order: VecDeque<(Instant, (u64, String))>,
    /// Bytes of the answers held (bodies and header values).
    bytes: usize,
}

fn size(e: &Entry) -> usize {
    match e {
        Entry::Running => 0,
        Entry::Done { headers, bytes, .. } => {
            bytes.len()
                + headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum::<usize>()
        }
    }
}

impl Inner {
    fn remove(&mut self, k: &(u64, String)) {
        if let Some((_, e)) = self.entries.remove(k) {
            self.bytes -= size(&e);
        }
    }
}

/// The remembered keys.
#[derive(Clone, Default)]
pub struct Keys(Arc<Mutex<Inner>>);

impl Keys {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(inner: &mut Inner, now: Instant) {
        while let Some((at, k)) = inner.order.front().cloned() {
            if now.duration_since(at) < TTL
                && inner.order.len() <= CAPACITY
                && inner.bytes <= MAX_BYTES
            {
                break;
            }
            inner.order.pop_front();
            if inner.entries.get(&k).is_some_and(|(t, _)| *t == at) {
                inner.remove(&k);
            }
        }
    }
}

fn problem(status: StatusCode, code: &str, detail: String) -> Response {
    let mut p = Problem::new(status, code, detail);
    p.field = Some("Idempotency-Key".into());
    p.into_response()
}

struct Running {
    keys: Keys,
    id: (u64, String),
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed {
            self.keys.lock().remove(&self.id);
        }
    }
}

/// The middleware.
pub async fn layer(State(keys): State<Keys>, req: Request, next: Next) -> Response {
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-header",
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
        }
    };
    let caller = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| hash(v.as_bytes()))
        .unwrap_or(0);
    let id = (caller, format!("{} {key}", req.uri().path()));
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, crate::BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("request body over {} bytes", crate::BODY_LIMIT),
            )
            .into_response()
        }
    };
    let body_hash = hash(&bytes);
    let now = Instant::now();
    {
        let mut inner = keys.lock();
        Keys::expire(&mut inner, now);
        match inner.entries.get(&id).map(|(_, e)| e.clone()) {
            Some(Entry::Running) => {
                return problem(
                    StatusCode::CONFLICT,
                    "idempotency-key-in-use",
                    format!(
                    "a request with Idempotency-Key {key:?} is still being processed; retry later"
                ),
                )
            }
            Some(Entry::Done { body, .. }) if body != body_hash => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    format!("Idempotency-Key {key:?} was used for a different request body"),
                )
            }
            Some(Entry::Done {
                status,
                headers,
                bytes,
                ..
            }) => {
                let mut resp = (status, bytes).into_response();
                *resp.headers_mut() = headers;
                resp.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return resp;
            }
            None => {
                inner.entries.insert(id.clone(), (now, Entry::Running));
                inner.order.push_back((now, id.clone()));
            }
        }
    }
    // A request cancelled mid-way (the client went away) must not hold its key forever.
    let mut guard = Running {
        keys: keys.clone(),
        id: id.clone(),
        armed: true,
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    guard.armed = false;
    let (parts, body) = resp.into_parts();
    let out = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    // (Our own handlers' answers: bounded by what they render, a page at most.)
    {
        let mut inner = keys.lock();
        let done = Entry::Done {
            body: body_hash,
            status: parts.status,
            headers: parts.headers.clone(),
            bytes: out.clone(),
        };
        let n = size(&done);
        if parts.status.is_server_error() || n > MAX_ENTRY_BYTES {
            inner.remove(&id);
        } else if let Some((_, e)) = inner.entries.get_mut(&id) {
            *e = done;
            inner.bytes += n;
            Keys::expire(&mut inner, Instant::now());
        }
    }
    Response::from_parts(parts, Body::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input: more remembered answers than the byte budget holds. Output: the oldest are
    /// dropped until the bytes fit; the count of bytes matches what is held.
    #[test]
    fn nb_answers_are_bounded_by_bytes() {
        let keys = Keys::default();
        let body = Bytes::from(vec![b'x'; 200 * 1024]);
        let now = Instant::now();
        {
            let mut inner = keys.lock();
            for i in 0..400u64 {
                let id = (0, format!("/p k{i}"));
                let e = Entry::Done {
                    body: 1,
                    status: StatusCode::CREATED,
                    headers: HeaderMap::new(),
                    bytes: body.clone(),
                };
                inner.bytes += size(&e);
                inner.entries.insert(id.clone(), (now, e));
                inner.order.push_back((now, id));
                Keys::expire(&mut inner, now);
            }
            assert!(inner.bytes <= MAX_BYTES, "{}", inner.bytes);
            let held: usize = inner.entries.values().map(|(_, e)| size(e)).sum();
            assert_eq!(held, inner.bytes);
            assert!(inner.entries.contains_key(&(0, "/p k399".to_string())));
            assert!(!inner.entries.contains_key(&(0, "/p k0".to_string())));
        }
    }
}
