//! `GET /api/v1/events`: the controller's connection, endpoint and object changes as
//! Server-Sent Events, each with an increasing id, resumable with `Last-Event-ID` (or
//! `?since=ID`) from a bounded in-memory log, so an OSS can follow the mesh without polling.
//! A client that asks for what the log no longer holds first gets an `event: reset` (re-list,
//! then follow), never a silent gap.
//!
//! Ids are unique across controller processes: each log starts its ids at the second it
//! started, shifted left 24 bits ([`id_base`]). A client resuming with an id of a controller
//! that restarted, or of the leader before a failover, is below the new log's first id, so it
//! gets a `reset` rather than other events under the same numbers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use meshwire_controller::{Controller, Event};
use tokio::sync::broadcast;

use crate::streams::Streams;

/// The last `cap` events with their ids.
pub struct EventLog {
    inner: Mutex<Log>,
    live: broadcast::Sender<(u64, Event)>,
}

struct Log {
    next: u64,
    buf: VecDeque<(u64, Event)>,
    cap: usize,
}

/// The first id of a log started now, less one: the Unix second shifted left 24 bits (room for
/// 16 million events per second of a process's life before ids could meet a later one's).
pub fn id_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() << 24)
        .unwrap_or(0)
}

impl EventLog {
    /// Starts recording `ctl`'s events, ids from [`id_base`] + 1.
    pub fn start(ctl: &Controller, cap: usize) -> Arc<EventLog> {
        Self::start_at(ctl, cap, id_base())
    }

    /// Starts recording `ctl`'s events, ids from `base` + 1.
    pub fn start_at(ctl: &Controller, cap: usize, base: u64) -> Arc<EventLog> {
        let (live, _) = broadcast::channel(1024);
        let log = Arc::new(EventLog {
            inner: Mutex::new(Log {
                next: base + 1,
                buf: VecDeque::with_capacity(cap.min(4096)),
                cap: cap.max(1),
            }),
            live,
        });
        let mut rx = ctl.subscribe();
        let weak = Arc::downgrade(&log);
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event log lagged behind the controller");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(log) = weak.upgrade() else { return };
                log.push(ev);
            }
        });
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, ev: Event) {
        let mut l = self.lock();
        let id = l.next;
        l.next += 1;
        if l.buf.len() == l.cap {
            l.buf.pop_front();
        }
        l.buf.push_back((id, ev.clone()));
        let _ = self.live.send((id, ev));
    }

    /// Events after `after`, and whether some were already dropped from the log.
    fn since(&self, after: u64) -> (Vec<(u64, Event)>, bool) {
        let l = self.lock();
        let oldest = l.buf.front().map(|(id, _)| *id).unwrap_or(l.next);
        let gap = after.saturating_add(1) < oldest && after < l.next - 1;
        (
            l.buf
                .iter()
                .filter(|(id, _)| *id > after)
                .cloned()
                .collect(),
            gap,
        )
    }

    /// The id the next event will get.
    fn next_id(&self) -> u64 {
        self.lock().next
    }
}

fn sse(id: u64, ev: &Event) -> SseEvent {
    let kind = match ev {
        Event::Connection { .. } => "connection",
        Event::Object { .. } => "object",
        Event::Endpoint { .. } => "endpoint",
        Event::DataPlane { .. } => "data-plane",
        Event::Link { .. } => "link",
    };
    SseEvent::default()
        .id(id.to_string())
        .event(kind)
        .json_data(ev)
        .unwrap_or_else(|_| SseEvent::default().id(id.to_string()).event(kind))
}

/// The stream for a client resuming after `after` (`None`: only what happens from now on), or
/// a 503 problem when [`Streams`] are all taken. The stream ends when the server shuts down.
pub fn stream(log: Arc<EventLog>, after: Option<u64>, streams: &Streams) -> Response {
    let Some(permit) = streams.admit() else {
        let mut r = crate::Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-streams",
            format!(
                "{} event streams are open, the most this controller serves; retry later",
                streams.max()
            ),
        )
        .into_response();
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("5"),
        );
        return r;
    };
    sse_stream(log, after, permit, streams).into_response()
}

fn sse_stream(
    log: Arc<EventLog>,
    after: Option<u64>,
    permit: tokio::sync::OwnedSemaphorePermit,
    streams: &Streams,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before reading the log, so nothing falls between replay and live.
    let live = log.live.subscribe();
    let newest = log.next_id() - 1;
    // An id this log never gave (another controller's, or one from before a restart): start
    // over from now, with a reset, rather than wait for ids that will never come.
    let ahead = after.is_some_and(|a| a > newest);
    let (replay, gap) = match after {
        Some(_) if ahead => (Vec::new(), true),
        Some(a) => log.since(a),
        None => (Vec::new(), false),
    };
    let last = replay.last().map(|(id, _)| *id).unwrap_or(if ahead {
        newest
    } else {
        after.unwrap_or(newest)
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    streams.spawn(permit, feed(tx, live, replay, gap, last));
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Replays, then follows the live events, until the client goes or falls behind.
async fn feed(
    tx: tokio::sync::mpsc::Sender<SseEvent>,
    mut live: broadcast::Receiver<(u64, Event)>,
    replay: Vec<(u64, Event)>,
    gap: bool,
    mut last: u64,
) {
    if gap {
        let reset = SseEvent::default()
            .event("reset")
            .data("events were dropped from the log; list the objects again, then follow");
        if tx.send(reset).await.is_err() {
            return;
        }
    }
    for (id, ev) in &replay {
        if tx.send(sse(*id, ev)).await.is_err() {
            return;
        }
    }
    loop {
        match live.recv().await {
            Ok((id, ev)) if id > last => {
                last = id;
                if tx.send(sse(id, &ev)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // A slow client: tell it to start over rather than skip silently.
                let _ = tx
                    .send(
                        SseEvent::default()
                            .event("reset")
                            .data("this stream fell behind"),
                    )
                    .await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwire_controller::store::memory::MemoryStore;
    use meshwire_controller::{Config, NullDriver, SystemClock};

    async fn controller() -> Controller {
        Controller::start(
            Arc::new(MemoryStore::default()),
            Arc::new(NullDriver),
            Arc::new(SystemClock),
            Config::default(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_log_replays_after_an_id_and_reports_what_it_dropped() {
        let ctl = controller().await;
        let log = EventLog::start_at(&ctl, 3, 0);
        for i in 0..5 {
            log.push(Event::Object {
                key: format!("Node/n{i}"),
                change: "created".into(),
            });
        }
        let ids = |v: Vec<(u64, Event)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let (v, gap) = log.since(0);
        assert_eq!((ids(v), gap), (vec![3, 4, 5], true), "1 and 2 were dropped");
        let (v, gap) = log.since(2);
        assert_eq!((ids(v), gap), (vec![3, 4, 5], false));
        let (v, gap) = log.since(4);
        assert_eq!((ids(v), gap), (vec![5], false));
        let (v, gap) = log.since(9);
        assert_eq!((ids(v), gap), (vec![], false), "ahead: nothing, no reset");
        assert_eq!(log.next_id(), 6);

        // Another process's log (a restart, a new leader) starts above every id of this one:
        // a client resuming from this one's ids there gets a reset, not other events.
        let later = EventLog::start_at(&ctl, 3, 1 << 24);
        later.push(Event::Object {
            key: "Node/x".into(),
            change: "created".into(),
        });
        let (v, gap) = later.since(5);
        assert_eq!((ids(v), gap), (vec![(1 << 24) + 1], true));
        assert!(id_base() > 1 << 50, "ids from the clock");
    }

    /// Input: a resume from the largest id there is (an overflow before), and more streams than
    /// the bound, then the server's shutdown. Output: the first stream opens with a `reset` (an
    /// id this log never gave); the one past the bound is a 503 problem with Retry-After; the
    /// shutdown ends the open stream.
    #[tokio::test]
    async fn nb_streams_are_bounded_resume_from_any_id_and_end_at_shutdown() {
        use futures::StreamExt;
        let ctl = controller().await;
        let log = EventLog::start(&ctl, 16);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let streams = Streams::new(1, Some(stop_rx));
        let first = stream(log.clone(), Some(u64::MAX), &streams);
        assert_eq!(first.status(), StatusCode::OK);
        let mut body = first.into_body().into_data_stream();
        let frame = body.next().await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&frame).into_owned();
        assert!(text.contains("event: reset"), "{text}");

        let second = stream(log.clone(), None, &streams);
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(second.headers().contains_key("retry-after"));

        stop.send(true).unwrap();
        while let Some(f) = body.next().await {
            f.unwrap();
        }
        // Its permit is back: a new stream opens.
        assert_eq!(stream(log, None, &streams).status(), StatusCode::OK);
    }
}
