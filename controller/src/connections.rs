//! Requesting and closing connections, with the store as the truth.
//!
//! The order every step keeps, so that what the store says is never less than what callers
//! were told, and a restart never brings back what was removed:
//! - **request**: plan and claim under the state mutex; record `programming` in the store
//!   *before* touching the data plane; wire; record `up`; only then answer. A failure after
//!   the first record undoes the wiring and deletes the record (store first, then memory).
//!   If the store cannot take the `up` record, the connection is undone and the request fails
//!   with a retryable error: it is never reported done unless stored as done.
//! - **a caller that goes away** (a client disconnecting, a short gRPC deadline): the request
//!   runs on in its own task, so it is never cut half-way, and once it has finished it is
//!   *undone on purpose* (closed), because nobody was told it exists. Retrying with the same
//!   `Idempotency-Key` is the way to get one connection exactly once.
//! - **a `programming` record no request owns** (the controller died mid-request): undone by
//!   the reconcile loop, for the same reason.
//! - **close**: unwire; delete the record; then forget it in memory and give back its claims.
//!   If the store cannot delete it, the connection stays (with the error) and the close fails
//!   retryably: a record that came back after a restart would resurrect it.

use meshwire_models::{Connection, ConnectionRequest, ConnectionState};

use crate::controller::{connection_key, Controller, Event};
use crate::error::ControllerError;
use crate::lifecycle::{Done, Steps};
use crate::state::Avoid;
use crate::store::Expect;

/// Marks a connection as being set up by a live request, for as long as it lives.
pub(crate) struct InFlight<'a> {
    ctl: &'a Controller,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ctl
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Controller {
    pub(crate) fn in_flight(&self, id: &str) -> InFlight<'_> {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        InFlight {
            ctl: self,
            id: id.to_string(),
        }
    }

    /// Whether a request is setting `id` up right now.
    pub(crate) fn is_in_flight(&self, id: &str) -> bool {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Requests a network service for a client: select, negotiate, claim, record, wire. The
    /// work runs to its end even if the caller stops waiting; then it is undone (see the
    /// module's doc).
    pub async fn request(&self, req: ConnectionRequest) -> Result<Connection, ControllerError> {
        self.request_once(req, None).await.map(|(c, _)| c)
    }

    /// [`Controller::request`] made at most once per `key` (an `Idempotency-Key` with a digest
    /// of the caller): the key is stored with the connection, so a retry with it, here or on
    /// the controller that leads after a failover, gets the same connection again (`true`: a
    /// replay). The same key for another service or client is refused.
    pub async fn request_once(
        &self,
        req: ConnectionRequest,
        key: Option<String>,
    ) -> Result<(Connection, bool), ControllerError> {
        req.validate().map_err(|e| ControllerError::Invalid {
            what: "connection request".into(),
            field: e.field,
            rule: e.rule,
        })?;
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let result = this.request_now(req, key).await;
            // A new vL3 member: the routers learn its route and name before it is answered.
            if matches!(&result, Ok((c, false)) if c.vl3.is_some()) {
                this.vl3_sync(false).await;
            }
            if let Err(Ok((conn, false))) = tx.send(result) {
                tracing::warn!(connection = %conn.id, "the requester went away before the answer; undoing the connection");
                if let Err(e) = this.close(&conn.id).await {
                    tracing::warn!(connection = %conn.id, error = %e, "undoing an unanswered connection failed; reconcile retries");
                }
            }
        });
        rx.await.map_err(|_| ControllerError::Cancelled)?
    }

    async fn request_now(
        &self,
        req: ConnectionRequest,
        key: Option<String>,
    ) -> Result<(Connection, bool), ControllerError> {
        let _guard = self
            .lock_key(req.client.workload(), &req.network_service)
            .await;
        // Under the client's lock: two requests with one key cannot both miss.
        if let Some(k) = &key {
            let found = self
                .state()
                .connections()
                .find(|c| c.request_key.as_deref() == Some(k.as_str()) && !c.state.is_final())
                .cloned();
            if let Some(c) = found {
                if c.network_service != req.network_service || c.client != req.client {
                    return Err(ControllerError::Invalid {
                        what: "connection request".into(),
                        field: "Idempotency-Key".into(),
                        rule: format!(
                            "already used for connection {} (service {}, client {}); give each request its own key",
                            c.id,
                            c.network_service,
                            c.client.workload()
                        ),
                    });
                }
                return Ok((c, true));
            }
        }
        self.request_leg(req, None, key, None)
            .await
            .map(|c| (c, false))
    }

    /// Plans, records and wires one leg; for a chain element, its onward leg first (see
    /// [`crate::chain`]). `previous`: the leg this one continues and the endpoints of its chain.
    /// Onward legs take no per-client lock: each belongs to its previous leg alone. The steps
    /// are [`crate::lifecycle`]'s: a failure undoes what was done, last first. `pinned`: only
    /// this endpoint may be selected (a vL3's peer leg).
    pub(crate) async fn request_leg(
        &self,
        req: ConnectionRequest,
        previous: Option<(String, Vec<String>)>,
        key: Option<String>,
        pinned: Option<String>,
    ) -> Result<Connection, ControllerError> {
        let id = uuid::Uuid::new_v4().to_string();
        let _flight = self.in_flight(&id);
        let now = self.now();
        let mut steps = Steps::default();
        let mut conn = {
            let mut s = self.state();
            let avoid = Avoid {
                chain: previous.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
                pinned,
                ..Default::default()
            };
            let mut c = s.plan(&req, &id, now, &avoid, None)?;
            c.state = ConnectionState::Programming;
            c.chain.previous = previous.map(|p| p.0);
            c.request_key = key;
            s.commit(c.clone());
            c
        };
        steps.did(Done::Committed(id.clone()));
        if let Err(e) = self.record_step(&mut steps, &conn).await {
            self.unwind(steps, &conn, "recording it failed").await;
            return Err(e);
        }
        // A chain element: its onward leg is up before this one is wired, and both are
        // recorded with the link between them.
        match self.onward_step(&mut steps, &conn).await {
            Ok(None) => {}
            Ok(Some(onward)) => {
                conn.chain.onward = Some(onward.id.clone());
                self.state()
                    .update(&id, |c| c.chain.onward = Some(onward.id.clone()));
                if let Err(e) = self.persist(&conn).await {
                    tracing::warn!(connection = %id, error = %e, "recording the onward leg failed; undoing");
                    self.unwind(
                        steps,
                        &conn,
                        &format!("recording the onward leg failed: {e}"),
                    )
                    .await;
                    return Err(e);
                }
            }
            Err(e) => {
                tracing::warn!(connection = %id, endpoint = %conn.network_service_endpoint_name, error = %e, "the onward leg failed; undoing");
                self.unwind(steps, &conn, &format!("the onward leg failed: {e}"))
                    .await;
                return Err(e);
            }
        }
        if let Err(e) = self.wire_step(&mut steps, &conn).await {
            tracing::warn!(connection = %id, endpoint = %conn.network_service_endpoint_name, error = %e, "wiring failed; undoing");
            self.unwind(steps, &conn, &format!("wiring failed: {e}"))
                .await;
            return Err(ControllerError::Driver {
                connection: id,
                source: Box::new(e),
            });
        }
        let _ = conn.transition(ConnectionState::Up, self.now());
        if let Err(e) = self.persist(&conn).await {
            // Live on the data plane but not stored as up: never report it done.
            tracing::warn!(connection = %id, error = %e, "recording the connection up failed; undoing it");
            self.unwind(steps, &conn, &format!("recording it up failed: {e}"))
                .await;
            return Err(e);
        }
        steps.hold();
        self.state().update(&id, |c| {
            c.state = ConnectionState::Up;
            c.updated_at_ms = conn.updated_at_ms;
        });
        tracing::info!(connection = %id, service = %conn.network_service, endpoint = %conn.network_service_endpoint_name,
            mechanism = %conn.mechanism().map(|m| m.summary()).unwrap_or_default(), "connection up");
        self.emit(Event::Connection {
            id: id.clone(),
            state: ConnectionState::Up,
            endpoint: conn.network_service_endpoint_name.clone(),
            detail: None,
        });
        Ok(conn)
    }

    /// Closes a connection: unwire, delete the record, give back claims; then its onward leg,
    /// if it is a chain element. An onward leg is closed with the leg it continues, never alone.
    pub async fn close(&self, id: &str) -> Result<Connection, ControllerError> {
        let held_by = {
            let s = self.state();
            let conn = s
                .connection(id)
                .ok_or_else(|| ControllerError::UnknownConnection { id: id.to_string() })?;
            conn.chain
                .previous
                .as_deref()
                .filter(|p| s.connection(p).is_some())
                .map(str::to_string)
        };
        if let Some(p) = held_by {
            return Err(ControllerError::InUse {
                object: format!("connection {id} (the onward leg of a service chain)"),
                count: 1,
                first: p,
            });
        }
        let closed = self.close_leg(id).await?;
        // A vL3 member gone: the routers forget its route and name.
        if closed.vl3.is_some() {
            self.vl3_sync(false).await;
        }
        Ok(closed)
    }

    /// [`close`](Self::close) without the onward-leg check (the controller closing a leg it
    /// composed).
    pub(crate) async fn close_leg(&self, id: &str) -> Result<Connection, ControllerError> {
        // Only the lock key is needed before the lock: no copy of the whole connection.
        let (workload, service) = self
            .state()
            .connection(id)
            .map(|c| (c.client.workload().to_string(), c.network_service.clone()))
            .ok_or_else(|| ControllerError::UnknownConnection { id: id.to_string() })?;
        let _guard = self.lock_key(&workload, &service).await;
        let conn = self
            .connection(id)
            .ok_or_else(|| ControllerError::UnknownConnection { id: id.to_string() })?;
        if let Err(e) = self.unwire(&conn).await {
            self.driver_failed();
            let msg = e.to_string();
            let updated = self
                .state()
                .update(id, |c| c.last_error = Some(format!("close: {msg}")));
            if let Some(c) = updated {
                let _ = self.persist(&c).await;
            }
            return Err(ControllerError::Driver {
                connection: id.to_string(),
                source: Box::new(e),
            });
        }
        // The store first: a record left behind would bring the connection back at restart.
        if let Err(e) = self
            .inner
            .store
            .delete(&connection_key(id), Expect::Any)
            .await
        {
            let msg = e.to_string();
            self.state().update(id, |c| {
                c.last_error = Some(format!("close: unwired, but {msg}"))
            });
            return Err(e.into());
        }
        let mut conn = self.state().remove_connection(id).unwrap_or(conn);
        let _ = conn.transition(ConnectionState::Closed, self.now());
        tracing::info!(connection = %id, "connection closed");
        self.close_onward(id, conn.chain.onward.as_deref()).await;
        self.emit(Event::Connection {
            id: id.to_string(),
            state: ConnectionState::Closed,
            endpoint: conn.network_service_endpoint_name.clone(),
            detail: None,
        });
        Ok(conn)
    }
}
