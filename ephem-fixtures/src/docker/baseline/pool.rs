//! Copies of a Postgres baseline made ahead, for per-test databases and for
//! `reset = "postgres"`, which swaps one into the database's place.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::attributes::Attributes;
use super::postgres::{ident, in_use, pg_message, session_lost, PgAdmin, PgService, BASELINE};

/// How many copies of the baseline wait ready for the next tests (per-test
/// databases, or the next reset).
const POOL_SIZE: usize = 4;

/// How many times a reset tries to swap a copy in when a client keeps
/// getting in the way, or the session is lost, before the test fails.
const SWAP_ATTEMPTS: u32 = 3;

/// What the pool's copies are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Use {
    /// Handed to one test each: open to connections.
    PerTest,
    /// Swapped into the database's place by a reset: closed to connections
    /// until then, so that no client is in one when it is renamed.
    Reset,
}

/// A session that is opened again when the server or a restart ended it.
struct Session {
    pg: PgService,
    current: tokio::sync::Mutex<Option<Arc<PgAdmin>>>,
}

impl Session {
    fn new(pg: &PgService, open: Option<PgAdmin>) -> Session {
        Session {
            pg: pg.clone(),
            current: tokio::sync::Mutex::new(open.map(Arc::new)),
        }
    }

    async fn get(&self) -> Result<Arc<PgAdmin>, tokio_postgres::Error> {
        let mut current = self.current.lock().await;
        match &*current {
            Some(admin) if !admin.client.is_closed() => Ok(admin.clone()),
            _ => {
                let admin = Arc::new(self.pg.session().await?);
                *current = Some(admin.clone());
                Ok(admin)
            }
        }
    }
}

/// Copies of one Postgres service's baseline.
pub(super) struct DatabasePool {
    pub service: String,
    uses: Use,
    /// Given to every copy after `CREATE DATABASE`.
    attributes: Attributes,
    /// Copies and drops, in the background.
    admin: Session,
    /// The test's critical path (swaps): one connection runs one statement
    /// at a time, and a copy takes a while. Held for a whole swap.
    swapper: tokio::sync::Mutex<Option<PgAdmin>>,
    /// Ends the sessions in the way of a swap while it waits for them.
    ender: Session,
    pg: PgService,
    /// Ready clones, oldest first.
    ready: Mutex<VecDeque<String>>,
    /// Names are `ephem_t_<n>`, unique within the shard.
    next: AtomicU64,
    /// Serializes refills (one `CREATE DATABASE` stream at a time).
    refill: tokio::sync::Mutex<()>,
}

impl DatabasePool {
    /// A pool over open sessions (`swapper` and `ender` are opened when
    /// first needed if not given).
    pub fn new(
        service: &str,
        uses: Use,
        pg: &PgService,
        attributes: Attributes,
        admin: PgAdmin,
        ender: Option<PgAdmin>,
        swapper: Option<PgAdmin>,
    ) -> Arc<DatabasePool> {
        Arc::new(DatabasePool {
            service: service.to_owned(),
            uses,
            attributes,
            admin: Session::new(pg, Some(admin)),
            swapper: tokio::sync::Mutex::new(swapper),
            ender: Session::new(pg, ender),
            pg: pg.clone(),
            ready: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            refill: tokio::sync::Mutex::new(()),
        })
    }

    fn name(&self) -> String {
        format!("ephem_t_{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A new copy of the baseline with the baseline's attributes.
    async fn create(&self) -> Result<String, String> {
        let name = self.name();
        let admin = self.admin.get().await.map_err(|e| pg_message(&e))?;
        let made = async {
            admin
                .clone_database(BASELINE, &name, self.uses == Use::PerTest)
                .await?;
            admin
                .client
                .batch_execute(&self.attributes.statements(&name))
                .await
        };
        if let Err(e) = made.await {
            let _ = admin.drop_database(&name).await;
            return Err(format!("cannot copy the baseline: {}", pg_message(&e)));
        }
        Ok(name)
    }

    /// A database of the test's own: a ready one, else made now.
    pub async fn take(self: &Arc<Self>) -> Result<String, String> {
        let ready = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let name = match ready {
            Some(name) => name,
            None => self.create().await?,
        };
        let pool = self.clone();
        tokio::spawn(async move { pool.fill().await });
        Ok(name)
    }

    /// Drops a database in the background: the next test need not wait.
    pub fn drop_later(self: &Arc<Self>, name: String) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(admin) = pool.admin.get().await {
                let _ = admin.drop_database(&name).await;
            }
        });
    }

    /// Tops the ready clones up to [`POOL_SIZE`].
    pub async fn fill(&self) {
        let _one_at_a_time = self.refill.lock().await;
        loop {
            if self.ready.lock().unwrap_or_else(|p| p.into_inner()).len() >= POOL_SIZE {
                return;
            }
            match self.create().await {
                Ok(name) => self
                    .ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(name),
                Err(_) => return,
            }
        }
    }

    /// Puts a ready copy of the baseline in `database`'s place, in one
    /// transaction: the used database renamed away (dropped later), the
    /// copy renamed in. It happens whole or not at all: `database` exists
    /// whatever the outcome. Runs to its end even if the caller stops
    /// waiting (a test's budget), so no swap is abandoned halfway by us.
    pub async fn swap_into(self: &Arc<Self>, database: &str) -> Result<(), String> {
        let pool = self.clone();
        let database = database.to_owned();
        tokio::spawn(async move { pool.swap(&database).await })
            .await
            .map_err(|e| format!("the reset stopped: {e}"))?
    }

    async fn swap(self: &Arc<Self>, database: &str) -> Result<(), String> {
        let mut swapper = self.swapper.lock().await;
        let mut fresh = self.take().await?;
        let used = self.name();
        let mut last = String::new();
        for _ in 0..SWAP_ATTEMPTS {
            match self.try_swap(&mut swapper, database, &fresh, &used).await {
                Ok(Swap::Done) => {
                    self.drop_later(used);
                    return Ok(());
                }
                Ok(Swap::CopyGone) => fresh = self.take().await?,
                Err(e) if in_use(&e) => last = pg_message(&e),
                Err(e) if session_lost(&e) => {
                    last = pg_message(&e);
                    // Lost with the session: maybe only the commit's answer.
                    *swapper = None;
                    if self.swapped(&fresh, &used).await {
                        self.drop_later(used);
                        return Ok(());
                    }
                }
                Err(e) => {
                    last = pg_message(&e);
                    break;
                }
            }
        }
        self.drop_later(fresh);
        Err(format!(
            "could not swap a fresh copy of the baseline into database {database} \
             (gave up after {SWAP_ATTEMPTS} attempts at most): {last}; \
             {database} is left as the previous test left it"
        ))
    }

    /// One attempt at the swap, on `slot`'s session (opened if need be).
    async fn try_swap(
        &self,
        slot: &mut Option<PgAdmin>,
        database: &str,
        fresh: &str,
        used: &str,
    ) -> Result<Swap, tokio_postgres::Error> {
        if slot.as_ref().is_none_or(|s| s.client.is_closed()) {
            *slot = Some(self.pg.session().await?);
        }
        let Some(swapper) = slot.as_mut() else {
            unreachable!("the session was opened above")
        };
        let oids = swapper.oids(&[database, fresh]).await?;
        if !oids.iter().any(|(name, _)| name == fresh) {
            return Ok(Swap::CopyGone);
        }
        // A test may have dropped the database: then the copy only needs
        // to take its name.
        let mut sql = String::new();
        if oids.iter().any(|(name, _)| name == database) {
            sql += &format!(
                "ALTER DATABASE {} RENAME TO {};",
                ident(database),
                ident(used)
            );
        }
        sql += &format!(
            "ALTER DATABASE {} RENAME TO {};ALTER DATABASE {} ALLOW_CONNECTIONS true;",
            ident(fresh),
            ident(database),
            ident(database)
        );
        let ender = self.ender.get().await?;
        let spare = swapper.pid;
        let oids: Vec<u32> = oids.iter().map(|o| o.1).collect();
        // Dropped unfinished (an error), the transaction rolls back.
        let tx = swapper.client.transaction().await?;
        ender
            .ending_sessions(&oids, spare, tx.batch_execute(&sql))
            .await?;
        tx.commit().await?;
        Ok(Swap::Done)
    }

    /// Whether a swap whose session was lost committed: the copy gone and
    /// the used database there under its new name.
    async fn swapped(&self, fresh: &str, used: &str) -> bool {
        let Ok(admin) = self.admin.get().await else {
            return false;
        };
        match admin.oids(&[fresh, used]).await {
            Ok(found) => found.len() == 1 && found[0].0 == used,
            Err(_) => false,
        }
    }
}

/// How one swap attempt ended, short of an error.
enum Swap {
    Done,
    /// The ready copy no longer exists (dropped by someone): take another.
    CopyGone,
}
