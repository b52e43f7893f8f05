//! One lifecycle for request, repair and heal: each step records how to undo its own work, and
//! a failure unwinds what the steps before it did, in reverse (the shape of NSM sdk's chain
//! elements, where each element closes what it opened when the next one fails).
//!
//! | step            | request | repair | heal | undone by                                 |
//! |-----------------|---------|--------|------|-------------------------------------------|
//! | plan and claim  | commit  |        | claim| forgetting it, claims given back          |
//! | record          | new     | up     | new  | deleting the record (a new one only)      |
//! | onward leg      | yes     |        | yes  | closing it                                |
//! | wire (a delta)  | yes     | yes    | yes  | a removal delta                           |
//! | record up, emit | yes     | yes    | yes  | (last: nothing after it can fail)         |
//!
//! A record the store will not delete stops the unwinding there: the connection stays in
//! memory as an abandoned `programming` one, with its claims, and the reconcile loop undoes it
//! later. Nothing is ever forgotten that the store still holds.

use meshwire_models::{Connection, ConnectionState};

use crate::controller::{connection_key, Controller};
use crate::driver::DriverError;
use crate::error::ControllerError;
use crate::store::Expect;

/// What one step did, and so what undoing it means.
pub(crate) enum Done {
    /// A planned connection committed in memory with its claims: forgotten, claims given back.
    Committed(String),
    /// Claims taken for a replacement not committed (a heal): given back.
    Claimed(Box<Connection>),
    /// The record of a new connection: deleted.
    Recorded(String),
    /// An onward leg composed for `of`: closed.
    Onward { of: String, onward: String },
    /// The subject's wiring handed to the data plane (possibly half done): removed.
    Wired,
}

/// The steps done so far. Dropping it keeps everything ([`Steps::hold`] says so out loud);
/// [`Controller::unwind`] undoes it.
#[derive(Default)]
pub(crate) struct Steps {
    done: Vec<Done>,
}

impl Steps {
    pub(crate) fn did(&mut self, d: Done) {
        self.done.push(d);
    }

    /// Every step held: nothing will be undone.
    pub(crate) fn hold(self) {}

    /// The steps that made `c` what it is, to undo all of it (an abandoned request).
    pub(crate) fn all_of(c: &Connection) -> Steps {
        let mut s = Steps::default();
        s.did(Done::Committed(c.id.clone()));
        s.did(Done::Recorded(c.id.clone()));
        if let Some(b) = &c.chain.onward {
            s.did(Done::Onward {
                of: c.id.clone(),
                onward: b.clone(),
            });
        }
        s.did(Done::Wired);
        s
    }
}

impl Controller {
    /// Undoes `steps`, last first; `subject` is the connection they set up (its wiring is what
    /// [`Done::Wired`] removes). `false` when the store would not delete a record: the
    /// connection then stays as an abandoned `programming` one (with `why`) for reconcile.
    pub(crate) async fn unwind(&self, steps: Steps, subject: &Connection, why: &str) -> bool {
        for d in steps.done.into_iter().rev() {
            match d {
                Done::Wired => {
                    let c = subject;
                    if let Err(e) = self.unwire(c).await {
                        tracing::warn!(connection = %c.id, error = %e, "undoing the wiring failed; the next full set removes what is left");
                    }
                }
                Done::Onward { of, onward } => self.close_onward(&of, Some(&onward)).await,
                Done::Recorded(id) => {
                    if let Err(e) = self
                        .inner
                        .store
                        .delete(&connection_key(&id), Expect::Any)
                        .await
                    {
                        tracing::warn!(connection = %id, error = %e, "deleting the record of an undone connection failed; reconcile will retry");
                        self.state().update(&id, |c| {
                            c.state = ConnectionState::Programming;
                            c.last_error = Some(format!("undoing: {why}"));
                        });
                        return false;
                    }
                }
                Done::Committed(id) => {
                    self.state().remove_connection(&id);
                }
                Done::Claimed(c) => self.state().unclaim(&c),
            }
        }
        true
    }

    /// Step: hand the data plane `c` (the subject). Recorded before the call: a failure may
    /// leave half of it.
    pub(crate) async fn wire_step(
        &self,
        steps: &mut Steps,
        c: &Connection,
    ) -> Result<(), DriverError> {
        steps.did(Done::Wired);
        self.wire(c).await.inspect_err(|_| self.driver_failed())
    }

    /// Step: the record of a new connection.
    pub(crate) async fn record_step(
        &self,
        steps: &mut Steps,
        c: &Connection,
    ) -> Result<(), ControllerError> {
        self.persist(c).await?;
        steps.did(Done::Recorded(c.id.clone()));
        Ok(())
    }

    /// Step: the onward leg of a chain element (none for other endpoints).
    pub(crate) async fn onward_step(
        &self,
        steps: &mut Steps,
        c: &Connection,
    ) -> Result<Option<Connection>, ControllerError> {
        let onward = self.compose_onward(c).await?;
        if let Some(b) = &onward {
            steps.did(Done::Onward {
                of: c.id.clone(),
                onward: b.id.clone(),
            });
        }
        Ok(onward)
    }

    /// Undoes a connection nobody was told about, all of it (see [`Steps::all_of`]).
    pub(crate) async fn undo(&self, conn: &Connection, why: &str) -> bool {
        self.unwind(Steps::all_of(conn), conn, why).await
    }
}
