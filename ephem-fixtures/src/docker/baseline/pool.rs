//! Copies of a Postgres baseline made ahead, for per-test databases and for
//! `reset = "postgres"`, which swaps one into the database's place.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::attributes::Attributes;
use tokio_postgres::error::SqlState;

use super::postgres::{
    ident, in_use, pg_message, session_lost, PgAdmin, PgService, BASELINE, SESSIONS_GONE_WITHIN,
};

/// How many copies of the baseline wait ready for the next tests (per-test
/// databases, or the next reset).
const POOL_SIZE: usize = 4;

/// How long a reset waits for a used database being restored in place
/// (`recycle`) rather than taking a fresh copy: a restore takes tens of
/// milliseconds, a fresh copy hundreds.
const RECYCLE_WAIT: Duration = Duration::from_millis(500);

/// The most ready copies a run leaves for the next one (each costs a few
/// MB of disk and a moment of the container's CPU after the run).
const KEPT_MAX: u64 = 32;

/// How many `psql`s make a kept environment's copies at once: two
/// `CREATE DATABASE`s side by side made copies of a small baseline about
/// 1.6 times as fast as one on a 2-core machine; more would only queue for
/// the same CPU and disk.
const REFILL_SESSIONS: usize = 2;

/// Test knob: seconds the refill after a kept run sleeps before each copy,
/// so a test can start the next run while it still runs.
const REFILL_PAUSE_VAR: &str = "CARGO_EPHEM_TEST_REFILL_PAUSE";

/// How many times a reset tries to swap a copy in when a client keeps
/// getting in the way, or the session is lost, before the test fails.
const SWAP_ATTEMPTS: u32 = 3;

/// A copy being made, or handed out to a test: whoever takes a kept
/// environment over drops these (who knows what a test did to one).
const MADE: &str = "ephem_u_";
/// A ready copy nobody has used: an exact copy of the baseline, which a run
/// taking a kept environment over hands out first. Only a finished copy,
/// attributes and all, is renamed to this; a handed-out one is renamed away
/// before the test sees it, so the name alone tells, even after a crash.
const READY: &str = "ephem_t_";

/// The `<n>` of a copy's name (`ephem_u_<n>` or `ephem_t_<n>`).
fn number(name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix(MADE)
        .or_else(|| name.strip_prefix(READY))?;
    rest.parse().ok()
}

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
pub(super) struct Session {
    pg: PgService,
    current: tokio::sync::Mutex<Option<Arc<PgAdmin>>>,
}

impl Session {
    pub(super) fn new(pg: &PgService, open: Option<PgAdmin>) -> Session {
        Session {
            pg: pg.clone(),
            current: tokio::sync::Mutex::new(open.map(Arc::new)),
        }
    }

    pub(super) async fn get(&self) -> Result<Arc<PgAdmin>, tokio_postgres::Error> {
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
    /// Copies, in the background.
    admin: Session,
    /// Copies too: [`fill`](Self::fill) makes two at once, one on each
    /// (see [`REFILL_SESSIONS`]).
    maker: Session,
    /// Drops, in the background: on a session of its own, so that a copy a
    /// test waits for never queues behind the drops of used ones (a run
    /// taking a kept environment over has a dozen to drop).
    dropper: Session,
    /// Databases to drop that are not dropped yet: the refill drops them if
    /// the run ends first.
    dropping: Mutex<std::collections::BTreeSet<String>>,
    /// The copies being made (`ephem_u_<n>`), which the refill drops if
    /// the run ends before they are finished.
    making: Mutex<std::collections::BTreeSet<String>>,
    /// The test's critical path (swaps): one connection runs one statement
    /// at a time, and a copy takes a while. Held for a whole swap.
    swapper: tokio::sync::Mutex<Option<PgAdmin>>,
    /// Ends the sessions in the way of a swap while it waits for them.
    ender: Session,
    /// Renames a ready copy as it is handed out to a test: on a session of
    /// its own, so it never waits behind a copy being made.
    handout: Session,
    pg: PgService,
    /// Ready copies (`ephem_t_<n>`), oldest first.
    ready: Mutex<VecDeque<String>>,
    /// The next `<n>` of a copy's name, unique within the environment.
    next: AtomicU64,
    /// Serializes fills (each makes at most two copies at once).
    refill: tokio::sync::Mutex<()>,
    /// Used databases being restored in place to come back as ready
    /// copies: counted as ready by refills, waited for by swaps.
    recycling: AtomicUsize,
    /// Told when a recycled copy comes back (or fails to).
    returned: tokio::sync::Notify,
    /// Copies this run handed out to tests (per-test databases; a reset's
    /// come back): how many the next run of a kept environment will want.
    used: AtomicU64,
    /// The environment is kept: the refill in its container makes the
    /// copies from now on, this process makes no more.
    kept: AtomicBool,
}

/// What a swap did: `fresh` (a ready copy) now holds the database's name;
/// the used database is `away` (`None`: a test had dropped it).
pub(super) struct Swapped {
    pub fresh: String,
    pub away: Option<String>,
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
            maker: Session::new(pg, None),
            dropper: Session::new(pg, None),
            dropping: Mutex::new(std::collections::BTreeSet::new()),
            making: Mutex::new(std::collections::BTreeSet::new()),
            swapper: tokio::sync::Mutex::new(swapper),
            ender: Session::new(pg, ender),
            handout: Session::new(pg, None),
            pg: pg.clone(),
            ready: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            refill: tokio::sync::Mutex::new(()),
            recycling: AtomicUsize::new(0),
            returned: tokio::sync::Notify::new(),
            used: AtomicU64::new(0),
            kept: AtomicBool::new(false),
        })
    }

    fn name(&self) -> String {
        format!("{MADE}{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes over the copies the last run of a kept environment left
    /// (`--reuse`): its ready ones are handed out first (the reuse key
    /// guarantees the same baseline), the others dropped in the background.
    pub fn adopt(self: &Arc<Self>, copies: Vec<String>) {
        let mut ready = Vec::new();
        for name in copies {
            let Some(n) = number(&name) else { continue };
            self.next.fetch_max(n + 1, Ordering::Relaxed);
            if name.starts_with(READY) {
                ready.push((n, name));
            } else {
                self.drop_later(name);
            }
        }
        ready.sort();
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ready.into_iter().map(|(_, name)| name));
    }

    /// A new ready copy of the baseline with the baseline's attributes.
    async fn create(&self) -> Result<String, String> {
        self.create_on(&self.admin).await
    }

    /// [`create`](Self::create) on `session`.
    async fn create_on(&self, session: &Session) -> Result<String, String> {
        let admin = session.get().await.map_err(|e| pg_message(&e))?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let name = self.name();
            let ready = name.replacen(MADE, READY, 1);
            self.making_copy(&name, true);
            let created = admin
                .clone_database(BASELINE, &name, self.uses == Use::PerTest)
                .await;
            if let Err(e) = &created {
                self.making_copy(&name, false);
                // The name is taken: a copy the last runner of a kept
                // environment was making as it exited, committed after this
                // run listed the copies. Not ours to drop: the next name.
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE) {
                    if attempts < 3 {
                        continue;
                    }
                    return Err(format!("cannot copy the baseline: {}", pg_message(e)));
                }
            }
            let made = async {
                created?;
                // One transaction: the copy is `ephem_t_` only with its
                // attributes.
                admin
                    .client
                    .batch_execute(&format!(
                        "{}ALTER DATABASE {} RENAME TO {}",
                        self.attributes.statements(&name),
                        ident(&name),
                        ident(&ready)
                    ))
                    .await
            };
            let made = made.await;
            self.making_copy(&name, false);
            if let Err(e) = made {
                let _ = admin.drop_database(&name).await;
                return Err(format!("cannot copy the baseline: {}", pg_message(&e)));
            }
            return Ok(ready);
        }
    }

    /// Notes that `name` is being made (`true`) or no longer (`false`).
    fn making_copy(&self, name: &str, making: bool) {
        let mut names = self.making.lock().unwrap_or_else(|p| p.into_inner());
        if making {
            names.insert(name.to_owned());
        } else {
            names.remove(name);
        }
    }

    /// A ready copy (`ephem_t_<n>`): a waiting one (or one being recycled,
    /// for a while), else made now; the pool refills in the background.
    async fn ready_copy(self: &Arc<Self>) -> Result<String, String> {
        // Copies handed out to tests do not come back; a reset's do.
        if self.uses == Use::PerTest {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
        let deadline = tokio::time::Instant::now() + RECYCLE_WAIT;
        let name = loop {
            let returned = self.returned.notified();
            if let Some(name) = self.pop_ready() {
                break name;
            }
            if self.recycling.load(Ordering::SeqCst) == 0
                || tokio::time::timeout_at(deadline, returned).await.is_err()
            {
                break self.create().await?;
            }
        };
        // A reset's copy comes back (`shelve`), or its loss refills
        // (`retire`, `recycle_failed`); a per-test one never comes back.
        if self.uses == Use::PerTest
            || self
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            let pool = self.clone();
            tokio::spawn(async move { pool.fill().await });
        }
        Ok(name)
    }

    fn pop_ready(&self) -> Option<String> {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// A used database is being restored in place (see [`Self::shelve`]):
    /// refills count it as ready meanwhile. Pair with `shelve` or
    /// [`Self::recycle_failed`].
    pub fn recycling(&self) {
        self.recycling.fetch_add(1, Ordering::SeqCst);
    }

    /// `used`, restored in place to the baseline, becomes a ready copy again:
    /// closed to connections, renamed `ephem_t_<n>` (only now: the name tells
    /// a later run it is an exact copy) and handed out next. `offered` runs
    /// with the ready name before any reset can take it.
    pub async fn shelve(
        self: &Arc<Self>,
        used: &str,
        offered: impl FnOnce(&str),
    ) -> Result<(), String> {
        let ready = self.name().replacen(MADE, READY, 1);
        let shelved = async {
            let admin = self.admin.get().await?;
            admin
                .client
                .batch_execute(&format!(
                    "ALTER DATABASE {used} ALLOW_CONNECTIONS false;\
                     ALTER DATABASE {used} RENAME TO {ready}",
                    used = ident(used),
                    ready = ident(&ready)
                ))
                .await
        };
        let result = match shelved.await {
            Ok(()) => {
                offered(&ready);
                self.ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_front(ready);
                Ok(())
            }
            Err(e) => {
                self.drop_later(used.to_owned());
                Err(pg_message(&e))
            }
        };
        self.recycling.fetch_sub(1, Ordering::SeqCst);
        self.returned.notify_waiters();
        result
    }

    /// A used database could not be restored in place: dropped, and the
    /// pool refilled with a fresh copy instead.
    pub fn recycle_failed(self: &Arc<Self>, used: String) {
        self.recycling.fetch_sub(1, Ordering::SeqCst);
        self.returned.notify_waiters();
        self.retire(used);
    }

    /// A database leaves the pool for good: dropped, and a fresh copy made
    /// in its stead, in the background.
    pub fn retire(self: &Arc<Self>, name: String) {
        self.drop_later(name);
        let pool = self.clone();
        tokio::spawn(async move { pool.fill().await });
    }

    /// A database of the test's own: a ready copy, renamed to a handed-out
    /// name (`ephem_u_<n>`) before the test sees it, so that a run taking
    /// the environment over later never hands it out again.
    pub async fn take(self: &Arc<Self>) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..SWAP_ATTEMPTS {
            let ready = self.ready_copy().await?;
            let handed = ready.replacen(READY, MADE, 1);
            let renamed = async {
                let session = self.handout.get().await?;
                session
                    .client
                    .batch_execute(&format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        ident(&ready),
                        ident(&handed)
                    ))
                    .await
            };
            match renamed.await {
                Ok(()) => return Ok(handed),
                Err(e) => {
                    // Someone (autovacuum, say) was in it: the next one.
                    last = pg_message(&e);
                    self.drop_later(ready);
                }
            }
        }
        Err(format!("cannot hand out a copy of the baseline: {last}"))
    }

    /// Drops a database in the background: the next test need not wait.
    pub fn drop_later(self: &Arc<Self>, name: String) {
        self.dropping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(admin) = pool.dropper.get().await {
                if admin.drop_database(&name).await.is_ok() {
                    pool.dropping
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                }
            }
        });
    }

    /// Tops the ready clones up to [`POOL_SIZE`], two at a time when two
    /// or more are missing.
    pub async fn fill(&self) {
        let _one_at_a_time = self.refill.lock().await;
        loop {
            let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner()).len();
            let have = ready + self.recycling.load(Ordering::SeqCst);
            if have >= POOL_SIZE || self.kept.load(Ordering::Relaxed) {
                return;
            }
            let made = if POOL_SIZE - have >= 2 {
                let (a, b) = tokio::join!(self.create(), self.create_on(&self.maker));
                vec![a, b]
            } else {
                vec![self.create().await]
            };
            let failed = made.iter().any(Result::is_err);
            self.ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(made.into_iter().flatten());
            if failed {
                return;
            }
        }
    }

    /// The environment is kept for the next `--reuse` run: this process
    /// makes no more copies, and [`REFILL_SESSIONS`] `psql`s started
    /// detached in `container` make as many as this run took (at least
    /// [`POOL_SIZE`], at most [`KEPT_MAX`]) less those ready, each as
    /// [`create`](Self::create) does, so the next run's tests need not
    /// wait for one; then drop the used ones this run had no time to.
    /// Returns once the `psql`s are connected (or done), so a run taking
    /// over can end them.
    pub async fn refill_for_next_run(&self, docker: &bollard::Docker, container: &str) {
        self.kept.store(true, Ordering::Relaxed);
        let used = self.used.load(Ordering::Relaxed);
        let want = used.clamp(POOL_SIZE as u64, KEPT_MAX);
        let have = self.ready.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        // The hand-out session: idle now, where the background one may
        // still be making a copy.
        let Ok(session) = self.handout.get().await else {
            return;
        };
        let pause = std::env::var(REFILL_PAUSE_VAR)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|p| p.is_finite() && *p > 0.0);
        // The copies dealt out in turn, lowest numbers first in each.
        let mut batches = vec![Vec::new(); REFILL_SESSIONS];
        for copy in 0..want.saturating_sub(have) {
            let statements = &mut batches[copy as usize % REFILL_SESSIONS];
            let name = self.name();
            let ready = name.replacen(MADE, READY, 1);
            if let Some(pause) = pause {
                statements.push(format!("SELECT pg_sleep({pause})"));
            }
            statements.push(session.clone_statement(BASELINE, &name, self.uses == Use::PerTest));
            // One transaction: the copy is `ephem_t_` only with its
            // attributes.
            statements.push(format!(
                "{}ALTER DATABASE {} RENAME TO {}",
                self.attributes.statements(&name),
                ident(&name),
                ident(&ready)
            ));
        }
        // Then what this run could not drop before it ended (after the
        // copies: the next run wants those first).
        let mut dropping = self
            .dropping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        dropping.extend(
            self.making
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        // By the session with the fewest copies to make.
        if let Some(last) = batches.last_mut() {
            last.extend(dropping.iter().map(|name| session.drop_statement(name)));
        }
        if batches.iter().any(|b| !b.is_empty()) {
            super::refill::start(docker, container, &self.pg, &session, &batches).await;
        }
    }

    /// Puts a ready copy of the baseline in `database`'s place, in one
    /// transaction: the used database renamed away (dropped later), the
    /// copy renamed in. It happens whole or not at all: `database` exists
    /// whatever the outcome. Runs to its end even if the caller stops
    /// waiting (a test's budget), so no swap is abandoned halfway by us.
    pub async fn swap_into(self: &Arc<Self>, database: &str) -> Result<Swapped, String> {
        let pool = self.clone();
        let database = database.to_owned();
        tokio::spawn(async move { pool.swap(&database).await })
            .await
            .map_err(|e| format!("the reset stopped: {e}"))?
    }

    async fn swap(self: &Arc<Self>, database: &str) -> Result<Swapped, String> {
        let mut swapper = self.swapper.lock().await;
        let mut fresh = self.ready_copy().await?;
        // The last test's sessions are closing as its process exits: a
        // rename that found one would wait 100 ms for it to go.
        if let Ok(ender) = self.ender.get().await {
            let _ = ender.end_sessions(database, SESSIONS_GONE_WITHIN).await;
        }
        // A name per attempt: an attempt whose commit went through unseen
        // has used its own. All are dropped (if they exist) in the end.
        let mut used = Vec::new();
        // False once the database turns out to be gone (a test dropped it):
        // then the copy only needs to take its name.
        let mut rename_away = true;
        let mut last = String::new();
        let mut done = false;
        while !done && used.len() < SWAP_ATTEMPTS as usize {
            used.push(self.name());
            let away = used.last().map(String::as_str).unwrap_or_default();
            let attempt = self.try_swap(&mut swapper, database, &fresh, away, rename_away);
            let Err(e) = attempt.await else {
                done = true;
                break;
            };
            last = pg_message(&e);
            if e.code() == Some(&SqlState::UNDEFINED_DATABASE) {
                match self.existing(&[database, &fresh]).await {
                    Some(found) if !found.contains(&fresh) => {
                        last = format!("the ready copy {fresh} was dropped by someone else");
                        fresh = self.ready_copy().await?;
                    }
                    Some(found) if !found.iter().any(|n| n == database) => rename_away = false,
                    _ => {}
                }
            } else if session_lost(&e) {
                *swapper = None;
                // Lost with the session: maybe only the commit's answer.
                done = self
                    .existing(&[&fresh, away])
                    .await
                    .is_some_and(|found| found == [away]);
            } else if !in_use(&e) {
                break;
            }
        }
        let attempts = used.len();
        let away = match (done, rename_away) {
            (true, true) => used.pop(),
            _ => None,
        };
        for name in used {
            self.drop_later(name);
        }
        if done {
            return Ok(Swapped { fresh, away });
        }
        self.retire(fresh);
        let attempts = match attempts {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        Err(format!(
            "could not swap a fresh copy of the baseline into database {database} \
             ({attempts}): {last}; {database} is left as the previous test left it"
        ))
    }

    /// One attempt at the swap, on `slot`'s session (opened if need be):
    /// one query string, which Postgres runs as one transaction.
    async fn try_swap(
        &self,
        slot: &mut Option<PgAdmin>,
        database: &str,
        fresh: &str,
        away: &str,
        rename_away: bool,
    ) -> Result<(), tokio_postgres::Error> {
        if slot.as_ref().is_none_or(|s| s.client.is_closed()) {
            *slot = Some(self.pg.session().await?);
        }
        let Some(swapper) = slot.as_ref() else {
            unreachable!("the session was opened above")
        };
        let mut sql = String::new();
        if rename_away {
            sql += &format!(
                "ALTER DATABASE {} RENAME TO {};",
                ident(database),
                ident(away)
            );
        }
        sql += &format!(
            "ALTER DATABASE {} RENAME TO {};ALTER DATABASE {} ALLOW_CONNECTIONS true",
            ident(fresh),
            ident(database),
            ident(database)
        );
        let ender = self.ender.get().await?;
        ender
            .ending_sessions(
                &[database, fresh],
                swapper.pid,
                swapper.client.batch_execute(&sql),
            )
            .await
    }

    /// Which of `names` exist (`None`: cannot tell).
    async fn existing(&self, names: &[&str]) -> Option<Vec<String>> {
        let admin = self.admin.get().await.ok()?;
        admin.existing(names).await.ok()
    }
}
