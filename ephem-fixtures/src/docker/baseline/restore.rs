//! `reset = "postgres"` in place, for small baselines: the baseline's rows
//! and sequence positions, kept in the runner's memory, are written back
//! into the database (`TRUNCATE`, `COPY ... FROM STDIN`, `setval`) in one
//! transaction, a few milliseconds instead of a fresh copy of the whole
//! database (hundreds of milliseconds of catalog pages each).
//!
//! That restores exactly the baseline only if the test changed nothing but
//! rows and sequences. So every restore first compares the database's
//! catalogs with what the last restore left: a catalog row inserted,
//! updated or deleted since (any DDL, a large object, statistics, a
//! changed owner, privilege, setting or comment of the database), or a
//! table's size figures changed by `VACUUM`, and the reset swaps a fresh
//! copy in instead (`pool.rs`). A catalog row changed shows as one whose
//! `xmin` is newer than the last restore's transaction; one deleted, as a
//! row count that dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use super::postgres::{pg_message, PgAdmin, PgService};

/// The most table data (`pg_table_size`, all tables) a baseline restored in
/// place may have: beyond it, rewriting it all costs more than a copy.
const MAX_BASELINE_BYTES: i64 = 1 << 20;

/// How long a restore waits for the sessions it ended to be gone before
/// it leaves the reset to a swap (clients that keep reconnecting: the swap
/// wins against them its own way). A test's own sessions go in a few ms.
const SESSIONS_GONE_WITHIN: Duration = Duration::from_millis(300);

/// Options of the restoring session, over the database's own settings
/// (which a baseline may set to anything): triggers and foreign keys do not
/// fire on rows put back as they were; nothing times out or is read-only.
const SESSION_OPTIONS: &str = "-c session_replication_role=replica \
     -c default_transaction_read_only=off -c statement_timeout=0 \
     -c lock_timeout=5s -c idle_in_transaction_session_timeout=0 \
     -c transaction_isolation=read\\ committed";

/// What a baseline is made of, read once right after `setup` (or from a
/// fresh copy, for a kept environment).
struct Snapshot {
    /// Qualified, quoted names and their rows (`COPY ... (FORMAT binary)`).
    tables: Vec<(String, Bytes)>,
    /// Qualified, quoted names, `last_value` and `is_called`.
    sequences: Vec<(String, i64, bool)>,
    /// One query over every catalog: what the comparison compares.
    fingerprint: String,
}

/// The catalogs as the last restore left them.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Reference {
    /// The restoring transaction's xid: rows newer than it are changes.
    xid: String,
    fingerprint: String,
    /// Taken after a restore, not of the database as `setup` or a copy
    /// left it. A restore puts back the same rows into the same tables,
    /// so it leaves the catalogs as the one before it did: the same row
    /// counts and sizes, no row newer than itself. After the first
    /// restore the fingerprint is known without reading it again (were it
    /// wrong, the next restore would only swap for nothing: a change by a
    /// test shows as rows newer than the restore or a count that dropped).
    settled: bool,
}

enum State {
    /// Not read yet: read from the database once it is the baseline.
    Unread,
    /// The baseline cannot be restored in place (too big, or holds what a
    /// restore could not put back as it was): every reset swaps.
    Never,
    Ready {
        snapshot: Arc<Snapshot>,
        /// `None`: unknown (a restore failed halfway): the next reset swaps.
        reference: Option<Reference>,
    },
}

/// Outcome of [`InPlace::restore`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Restore {
    /// The database is the baseline again.
    Done,
    /// Not restored (the test changed more than rows, or it could not be
    /// told): the caller swaps a copy in, then calls [`InPlace::rebase`].
    Swap,
}

/// The in-place reset of one Postgres database.
pub(super) struct InPlace {
    pg: PgService,
    database: String,
    /// Ends sessions on the database, on `template1`.
    admin: tokio::sync::Mutex<Option<PgAdmin>>,
    state: tokio::sync::Mutex<State>,
}

impl InPlace {
    pub fn new(pg: &PgService, database: &str) -> InPlace {
        InPlace {
            pg: pg.clone(),
            database: database.to_owned(),
            admin: tokio::sync::Mutex::new(None),
            state: tokio::sync::Mutex::new(State::Unread),
        }
    }

    /// The database is the baseline now (right after `setup`, or a copy
    /// just swapped in): reads the baseline if not read yet, and takes the
    /// catalogs as the reference the next restore compares with. A
    /// failure leaves the next reset to a swap.
    pub async fn rebase(&self) {
        let mut state = self.state.lock().await;
        let read = match &*state {
            State::Never => return,
            State::Ready { snapshot, .. } => Ok(Some(snapshot.clone())),
            State::Unread => self.read_snapshot().await.map(|s| s.map(Arc::new)),
        };
        *state = match read {
            Ok(None) => State::Never,
            Ok(Some(snapshot)) => {
                let reference = self.reference(&snapshot).await.ok();
                State::Ready {
                    snapshot,
                    reference,
                }
            }
            // Not a superuser (replica mode needs one), or the server
            // went away: the swaps work regardless.
            Err(_) => State::Never,
        };
    }

    /// Restores the baseline in place if the test changed only rows and
    /// sequences; else (or on any failure) says to swap.
    pub async fn restore(&self) -> Restore {
        let mut state = self.state.lock().await;
        let State::Ready {
            snapshot,
            reference,
        } = &mut *state
        else {
            return Restore::Swap;
        };
        let Some(expected) = reference.take() else {
            return Restore::Swap;
        };
        match self.try_restore(snapshot, &expected).await {
            Ok(Some(next)) => {
                *reference = Some(Reference {
                    settled: true,
                    ..next
                });
                Restore::Done
            }
            // Rolled back: the database is as the test left it.
            Ok(None) | Err(_) => Restore::Swap,
        }
    }

    /// `Ok(None)`: the catalogs changed. The restore and the new reference
    /// are one transaction: either both happened or neither.
    async fn try_restore(
        &self,
        snapshot: &Snapshot,
        expected: &Reference,
    ) -> Result<Option<Reference>, String> {
        if !self.end_sessions().await? {
            return Ok(None);
        }
        let mut client = self
            .pg
            .connect(&self.database, Some(SESSION_OPTIONS))
            .await
            .map_err(|e| pg_message(&e))?;
        let fail = |e: tokio_postgres::Error| pg_message(&e);
        let tx = client.transaction().await.map_err(fail)?;
        let now: String = tx
            .query_one(&snapshot.fingerprint, &[&expected.xid])
            .await
            .map_err(fail)?
            .get(0);
        if now != expected.fingerprint {
            return Ok(None);
        }
        if !snapshot.tables.is_empty() {
            let names: Vec<&str> = snapshot.tables.iter().map(|(n, _)| n.as_str()).collect();
            tx.batch_execute(&format!("TRUNCATE ONLY {}", names.join(", ")))
                .await
                .map_err(fail)?;
        }
        for (name, rows) in &snapshot.tables {
            let sink = tx
                .copy_in(&format!("COPY {name} FROM STDIN (FORMAT binary)"))
                .await
                .map_err(fail)?;
            futures_util::pin_mut!(sink);
            sink.send(rows.clone()).await.map_err(fail)?;
            sink.as_mut().finish().await.map_err(fail)?;
        }
        for (name, value, called) in &snapshot.sequences {
            tx.execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[name, value, called],
            )
            .await
            .map_err(fail)?;
        }
        let next = if expected.settled {
            Reference {
                xid: own_xid(&tx).await.map_err(fail)?,
                ..expected.clone()
            }
        } else {
            reference_in(&tx, snapshot).await.map_err(fail)?
        };
        tx.commit().await.map_err(fail)?;
        Ok(Some(next))
    }

    /// Ends every session on the database (what the test left, autovacuum)
    /// and waits until they are gone: false if they would not go, or a
    /// prepared transaction holds the database (no session to end: the
    /// swap fails saying so).
    async fn end_sessions(&self) -> Result<bool, String> {
        let mut slot = self.admin.lock().await;
        if slot.as_ref().is_none_or(|a| a.client.is_closed()) {
            *slot = Some(self.pg.session().await.map_err(|e| pg_message(&e))?);
        }
        let Some(admin) = slot.as_ref() else {
            unreachable!("opened above")
        };
        let prepared: i64 = admin
            .client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_prepared_xacts WHERE database = $1",
                &[&self.database],
            )
            .await
            .map_err(|e| pg_message(&e))?
            .get(0);
        if prepared > 0 {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + SESSIONS_GONE_WITHIN;
        loop {
            let left: i64 = admin
                .client
                .query_one(
                    "SELECT count(pg_catalog.pg_terminate_backend(pid)) \
                     FROM pg_catalog.pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
                    &[&self.database],
                )
                .await
                .map_err(|e| pg_message(&e))?
                .get(0);
            if left == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The baseline's tables and sequences as they are now, or `None` when
    /// it cannot be restored in place.
    async fn read_snapshot(&self) -> Result<Option<Snapshot>, String> {
        let client = self
            .pg
            .connect(&self.database, Some(SESSION_OPTIONS))
            .await
            .map_err(|e| pg_message(&e))?;
        let fail = |e: tokio_postgres::Error| pg_message(&e);
        let shape = client
            .query_one(
                "SELECT count(*) FILTER (WHERE c.relkind IN ('p', 'm', 'f')), \
                        coalesce(sum(pg_catalog.pg_table_size(c.oid)) \
                            FILTER (WHERE c.relkind = 'r'), 0)::bigint, \
                        (SELECT count(*) FROM pg_catalog.pg_trigger \
                         WHERE NOT tgisinternal AND tgenabled IN ('A', 'R')) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'",
                &[],
            )
            .await
            .map_err(fail)?;
        let (unsupported, bytes, triggers): (i64, i64, i64) =
            (shape.get(0), shape.get(1), shape.get(2));
        // Partitioned tables, materialized views and foreign tables hold
        // rows a COPY back would not put where they were; triggers that
        // fire even in replica mode would run on the rows put back.
        if unsupported > 0 || triggers > 0 || bytes > MAX_BASELINE_BYTES {
            return Ok(None);
        }
        let relations = client
            .query(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::text \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
                   AND c.relkind IN ('r', 'S') \
                 ORDER BY c.oid",
                &[],
            )
            .await
            .map_err(fail)?;
        let mut tables = Vec::new();
        let mut sequences = Vec::new();
        for row in relations {
            let (name, kind): (String, String) = (row.get(0), row.get(1));
            if kind == "S" {
                let position = client
                    .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
                    .await
                    .map_err(fail)?;
                sequences.push((name, position.get(0), position.get(1)));
                continue;
            }
            let stream = client
                .copy_out(&format!("COPY {name} TO STDOUT (FORMAT binary)"))
                .await
                .map_err(fail)?;
            futures_util::pin_mut!(stream);
            let mut rows = Vec::new();
            while let Some(chunk) = stream.next().await {
                rows.extend_from_slice(&chunk.map_err(fail)?);
            }
            tables.push((name, Bytes::from(rows)));
        }
        let fingerprint = fingerprint_query(&client).await.map_err(fail)?;
        Ok(Some(Snapshot {
            tables,
            sequences,
            fingerprint,
        }))
    }

    /// The catalogs as they are now, in a transaction of their own.
    async fn reference(&self, snapshot: &Snapshot) -> Result<Reference, String> {
        let mut client = self
            .pg
            .connect(&self.database, Some(SESSION_OPTIONS))
            .await
            .map_err(|e| pg_message(&e))?;
        let fail = |e: tokio_postgres::Error| pg_message(&e);
        let tx = client.transaction().await.map_err(fail)?;
        let reference = reference_in(&tx, snapshot).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(reference)
    }
}

/// The reference within `tx`: its own xid (assigned now if it has none),
/// and the catalogs as `tx` sees them.
async fn reference_in(
    tx: &tokio_postgres::Transaction<'_>,
    snapshot: &Snapshot,
) -> Result<Reference, tokio_postgres::Error> {
    let xid = own_xid(tx).await?;
    let fingerprint: String = tx.query_one(&snapshot.fingerprint, &[&xid]).await?.get(0);
    Ok(Reference {
        xid,
        fingerprint,
        settled: false,
    })
}

/// The transaction's xid as `xid` input (32 bits), assigned now if need be.
async fn own_xid(tx: &tokio_postgres::Transaction<'_>) -> Result<String, tokio_postgres::Error> {
    let row = tx
        .query_one("SELECT (pg_catalog.txid_current() % 4294967296)::text", &[])
        .await?;
    Ok(row.get(0))
}

/// The query ($1: a reference xid) that sums up the database's catalogs:
/// per catalog its row count and how many rows are newer than $1; the
/// size figures `VACUUM` and `ANALYZE` update in place; and the database's
/// own entry, settings and comment in the shared catalogs.
async fn fingerprint_query(
    client: &tokio_postgres::Client,
) -> Result<String, tokio_postgres::Error> {
    let catalogs = client
        .query(
            "SELECT pg_catalog.format('pg_catalog.%I', relname) FROM pg_catalog.pg_class \
             WHERE relnamespace = 'pg_catalog'::regnamespace AND relkind = 'r' \
               AND NOT relisshared ORDER BY relname",
            &[],
        )
        .await?;
    let newer = "count(*) FILTER (WHERE pg_catalog.age(xmin) < pg_catalog.age($1::text::xid))";
    let mut parts: Vec<String> = catalogs
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            format!("(SELECT count(*) || ':' || {newer} FROM {name})")
        })
        .collect();
    parts.push(
        "(SELECT sum(relpages) || ':' || sum(reltuples) || ':' || sum(relallvisible) \
         FROM pg_catalog.pg_class)"
            .to_owned(),
    );
    let database = "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())";
    parts.push(format!(
        "(SELECT xmin || ':' || ctid FROM pg_catalog.pg_database WHERE oid = {database})"
    ));
    parts.push(format!(
        "(SELECT count(*) || ':' || {newer} FROM pg_catalog.pg_db_role_setting \
         WHERE setdatabase = {database})"
    ));
    parts.push(format!(
        "(SELECT count(*) || ':' || {newer} FROM pg_catalog.pg_shdescription \
         WHERE objoid = {database} AND classoid = 'pg_catalog.pg_database'::regclass)"
    ));
    Ok(format!("SELECT concat_ws(',', {})", parts.join(", ")))
}
