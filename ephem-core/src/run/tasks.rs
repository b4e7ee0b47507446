//! The tasks the dispatcher spawns, kept in one `JoinSet` so that the
//! dispatcher sees how every one of them ended: with its message, aborted by
//! the dispatcher, or by a panic (a bug, which must stop the run rather than
//! leave the dispatcher waiting forever for a message that never comes).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use ephem_fixtures::{EnvError, Environment};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};

use super::executor::Attempt;
use crate::test_list::TestIdx;

/// What a task reports when it ends normally.
pub(super) enum Msg {
    Prepared(Result<(), EnvError>),
    Provisioned(u32, Result<Environment, EnvError>),
    AttemptDone {
        shard: u32,
        test: TestIdx,
        attempt_no: u32,
        attempt: Attempt,
    },
    TornDown(u32, Result<(), EnvError>),
    /// A renewal of the run's expiry ended; the error, if it failed.
    Renewed(Option<String>),
}

/// What a task was doing, for the dispatcher to settle its state when the
/// task ends without a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Task {
    Prepare,
    Provision { shard: u32 },
    Attempt { shard: u32, test: TestIdx },
    Teardown { shard: u32 },
    Renew,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Prepare => write!(f, "the environment preparation"),
            Task::Provision { shard } => write!(f, "the provisioning of shard {shard}"),
            Task::Attempt { shard, .. } => write!(f, "a test attempt in shard {shard}"),
            Task::Teardown { shard } => write!(f, "the teardown of shard {shard}"),
            Task::Renew => write!(f, "the renewal of the run's expiry"),
        }
    }
}

/// How a task ended, as the dispatcher sees it.
pub(super) enum Ended {
    /// With its message.
    Done(Msg),
    /// Aborted by the dispatcher, which settled its state when it aborted.
    Aborted,
    /// It panicked; the text is the panic's message.
    Panicked(Task, String),
}

/// Every running task, with what it does.
#[derive(Default)]
pub(super) struct Tasks {
    set: JoinSet<Msg>,
    kinds: HashMap<Id, Task>,
}

impl Tasks {
    /// Spawns `future` as `task`; the handle aborts it.
    pub(super) fn spawn<F>(&mut self, task: Task, future: F) -> AbortHandle
    where
        F: Future<Output = Msg> + Send + 'static,
    {
        let handle = self.set.spawn(future);
        self.kinds.insert(handle.id(), task);
        handle
    }

    /// The next task to end; pending forever when there is none (so that a
    /// `select!` branch on it simply never fires).
    pub(super) async fn next(&mut self) -> Ended {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        match joined {
            Ok((id, msg)) => {
                self.kinds.remove(&id);
                Ended::Done(msg)
            }
            Err(err) => {
                let task = self.kinds.remove(&err.id()).unwrap_or(Task::Renew);
                if err.is_panic() {
                    Ended::Panicked(task, panic_message(err))
                } else {
                    Ended::Aborted
                }
            }
        }
    }

    /// Whether a task of this kind still runs.
    pub(super) fn any(&self, pred: impl Fn(&Task) -> bool) -> bool {
        self.kinds.values().any(pred)
    }

    /// Waits for every remaining task (renewals in flight at the end), so
    /// that none of them acts after the run is over.
    pub(super) async fn drain(&mut self) {
        while self.set.join_next().await.is_some() {}
        self.kinds.clear();
    }
}

fn panic_message(err: JoinError) -> String {
    let payload = err.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
