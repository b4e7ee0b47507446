//! `reset = "postgres"` for small baselines: a used database is restored to
//! the baseline in place and becomes a ready copy again. Every reset swaps
//! a ready copy into the database's place (`pool.rs`: two renames, a few
//! milliseconds while the next test waits); the database the last test
//! used is then restored in the background, while the next test runs: the
//! baseline's rows and sequence positions, kept in the runner's memory, are
//! written back (`TRUNCATE`, `COPY ... FROM STDIN`, `setval`) in one
//! transaction, tens of milliseconds instead of a fresh copy of the whole
//! database (hundreds of milliseconds of catalog pages each).
//!
//! That restores exactly the baseline only if the test changed nothing but
//! rows and sequences. So every restore first compares the database's
//! catalogs with what its last restore left: a catalog row inserted,
//! updated or deleted since (any DDL, a large object, statistics, a
//! changed owner, privilege, setting or comment of the database), or a
//! table's size figures changed by `VACUUM`, and the used database is
//! dropped instead (the pool makes a fresh copy). A catalog row changed
//! shows as one whose `xmin` is newer than the last restore's transaction;
//! one deleted, as a row count that dropped; the database's own entry is
//! compared by content, as the swaps rename it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use super::pool::{DatabasePool, Session, Swapped};
use super::postgres::{literal, pg_message, PgService, SESSIONS_GONE_WITHIN};

/// The most table data (`pg_table_size`, all tables) a baseline restored in
/// place may have: beyond it, rewriting it all costs more than a copy.
const MAX_BASELINE_BYTES: i64 = 1 << 20;

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

/// The catalogs of one database as its last restore left them.
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
        /// The fingerprint of the baseline as first read: a fresh copy of
        /// the template has it too.
        base: Option<String>,
        /// Of the database in `database`'s place; `None`: unknown (taking
        /// it failed), and that database is dropped after its test.
        reference: Option<Reference>,
    },
}

/// The in-place restores of one Postgres service's reset database.
pub(super) struct InPlace {
    pg: PgService,
    database: String,
    /// Ends sessions on the databases restored, on `template1`.
    admin: Session,
    state: tokio::sync::Mutex<State>,
    /// The references of ready copies that were restored in place, by
    /// their ready names: one swapped in brings its reference along.
    spares: Mutex<HashMap<String, Reference>>,
}

impl InPlace {
    pub fn new(pg: &PgService, database: &str) -> InPlace {
        InPlace {
            pg: pg.clone(),
            database: database.to_owned(),
            admin: Session::new(pg, None),
            state: tokio::sync::Mutex::new(State::Unread),
            spares: Mutex::new(HashMap::new()),
        }
    }

    /// The database is the baseline now (right after `setup`, or a copy
    /// just swapped in): reads the baseline if not read yet, and takes the
    /// catalogs as the reference the next restore compares with. A
    /// failure leaves the next reset to a swap.
    pub async fn rebase(&self) {
        let mut state = self.state.lock().await;
        let (read, base) = match &*state {
            State::Never => return,
            State::Ready { snapshot, base, .. } => (Ok(Some(snapshot.clone())), base.clone()),
            State::Unread => (self.read_snapshot().await.map(|s| s.map(Arc::new)), None),
        };
        *state = match read {
            Ok(None) => State::Never,
            Ok(Some(snapshot)) => {
                let reference = self.reference(&snapshot).await.ok();
                let base = base.or_else(|| reference.as_ref().map(|r| r.fingerprint.clone()));
                State::Ready {
                    snapshot,
                    base,
                    reference,
                }
            }
            // Not a superuser (replica mode needs one), or the server
            // went away: the swaps work regardless.
            Err(_) => State::Never,
        };
    }

    /// A reset swapped `swapped.fresh` into the database's place: its
    /// reference becomes the current one (taken now if it has none: a
    /// fresh copy), and the database the last test used is restored in
    /// place in the background, to come back as a ready copy, or dropped
    /// when it cannot be (the pool then makes a fresh copy).
    pub async fn swapped(self: &Arc<Self>, pool: &Arc<DatabasePool>, swapped: Swapped) {
        let arrived = self
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&swapped.fresh);
        let left = {
            let mut state = self.state.lock().await;
            match &mut *state {
                State::Ready { reference, .. } => {
                    let left = reference.take();
                    if arrived.is_some() {
                        *reference = arrived.clone();
                    }
                    left
                }
                _ => None,
            }
        };
        if arrived.is_none() {
            self.arrived_fresh().await;
        }
        let Some(away) = swapped.away else { return };
        // A restore puts back the same rows into the same tables, so it
        // leaves the catalogs as the one before it did: from then on the
        // fingerprint is known without reading it again (see `Reference`).
        let Some(left) = left else {
            pool.retire(away);
            return;
        };
        pool.recycling();
        let (this, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            match this.try_restore(&away, &left).await {
                Ok(Some(next)) => {
                    let spares = &this.spares;
                    let offered = |ready: &str| {
                        spares.lock().unwrap_or_else(|p| p.into_inner()).insert(
                            ready.to_owned(),
                            Reference {
                                settled: true,
                                ..next
                            },
                        );
                    };
                    let _ = pool.shelve(&away, offered).await;
                }
                // The catalogs changed, or it could not be told.
                Ok(None) | Err(_) => pool.recycle_failed(away),
            }
        });
    }

    /// A fresh copy of the template is in the database's place: its
    /// catalogs are the template's pages, as the baseline's were when its
    /// reference was first taken, so that fingerprint holds for it too,
    /// with an xid from now (before its test starts). Were the fingerprint
    /// not the copy's after all, its restore would only drop it. A baseline
    /// not read yet (a kept environment) is read from the copy instead.
    async fn arrived_fresh(&self) {
        {
            let mut state = self.state.lock().await;
            if let State::Ready {
                base, reference, ..
            } = &mut *state
            {
                *reference = match (base, self.now_xid().await) {
                    (Some(base), Ok(xid)) => Some(Reference {
                        xid,
                        fingerprint: base.clone(),
                        settled: false,
                    }),
                    _ => None,
                };
                return;
            }
        }
        self.rebase().await;
    }

    /// A new xid, on the admin session.
    async fn now_xid(&self) -> Result<String, String> {
        let admin = self.admin.get().await.map_err(|e| pg_message(&e))?;
        let row = admin
            .client
            .query_one(NEW_XID, &[])
            .await
            .map_err(|e| pg_message(&e))?;
        Ok(row.get(0))
    }

    /// Restores `database` (a used one, swapped away) to the baseline if its
    /// test changed only rows and sequences since `expected`: its new
    /// reference, or `Ok(None)` when the catalogs changed. The restore and
    /// the new reference are one transaction: both happened or neither.
    async fn try_restore(
        &self,
        database: &str,
        expected: &Reference,
    ) -> Result<Option<Reference>, String> {
        let snapshot = match &*self.state.lock().await {
            State::Ready { snapshot, .. } => snapshot.clone(),
            _ => return Ok(None),
        };
        if !self.end_sessions(database).await? {
            return Ok(None);
        }
        let mut client = self
            .pg
            .connect(database, Some(SESSION_OPTIONS))
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
        if !snapshot.sequences.is_empty() {
            let positions: Vec<String> = snapshot
                .sequences
                .iter()
                .map(|(name, value, called)| {
                    format!(
                        "pg_catalog.setval({}::regclass, {value}, {called})",
                        literal(name)
                    )
                })
                .collect();
            tx.batch_execute(&format!("SELECT {}", positions.join(", ")))
                .await
                .map_err(fail)?;
        }
        let next = if expected.settled {
            Reference {
                xid: own_xid(&tx).await.map_err(fail)?,
                ..expected.clone()
            }
        } else {
            reference_in(&tx, &snapshot).await.map_err(fail)?
        };
        tx.commit().await.map_err(fail)?;
        Ok(Some(next))
    }

    /// Ends every session on `database` (what the test left, autovacuum)
    /// and waits until they are gone: false if they would not go, or a
    /// prepared transaction holds the database.
    async fn end_sessions(&self, database: &str) -> Result<bool, String> {
        let admin = self.admin.get().await.map_err(|e| pg_message(&e))?;
        admin
            .end_sessions(database, SESSIONS_GONE_WITHIN)
            .await
            .map_err(|e| pg_message(&e))
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

/// The current transaction's xid as `xid` input (32 bits), assigned now if
/// need be.
const NEW_XID: &str = "SELECT (pg_catalog.txid_current() % 4294967296)::text";

/// The transaction's xid as `xid` input (32 bits), assigned now if need be.
async fn own_xid(tx: &tokio_postgres::Transaction<'_>) -> Result<String, tokio_postgres::Error> {
    let row = tx.query_one(NEW_XID, &[]).await?;
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
    // By content: the swaps rename it and open and close it to
    // connections; vacuums move its frozen horizons; a fresh copy of the
    // template has its own oid and the same content.
    parts.push(format!(
        "(SELECT (pg_catalog.to_jsonb(d) - 'oid' - 'datname' - 'datallowconn' \
                  - 'datfrozenxid' - 'datminmxid')::text \
          FROM pg_catalog.pg_database d WHERE oid = {database})"
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
