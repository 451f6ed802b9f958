//! The state store: document snapshots and the consumer checkpoint, written together in one
//! transaction (DESIGN.md invariant 2). Backends by URL scheme: `sqlite://PATH` (embedded
//! default) and `postgres://…`, both through sqlx's `Any` driver with one set of SQL and a
//! migration folder per backend (`migrations/sqlite`, `migrations/postgres`).

mod checkpoint;
mod deltas;
mod owners;
mod partitions;

use sqlx::any::{AnyPoolOptions, install_default_drivers};

use crate::config::redact_url;
use partitions::PartitionFiles;
use sqlx::{AnyPool, Executor, Row};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::fold::StateWrite;
pub use checkpoint::{Checkpoint, LOCAL_TOPIC};
pub use owners::{HEARTBEAT_EVERY, LIVE_FOR, Owner, ReplayClaim};

/// A document as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDoc {
    pub partition: u32,
    pub version: u64,
    /// The partition's position after the last record folded into this state: the offset
    /// of that record plus the next offsets of the partition's other source topics (so it
    /// only grows; with one source topic it is the record's log offset).
    pub offset: u64,
    /// The state encoding (`fold::snapshot`), with the stored deltas applied.
    pub state: Vec<u8>,
    pub updated_ms: i64,
    /// Bytes of deltas the store holds after its last full state (0: the full state is all).
    pub delta_bytes: u64,
}

/// A document to write with a checkpoint.
#[derive(Clone, Debug)]
pub struct DocWrite<'a> {
    pub doc_id: &'a str,
    pub version: u64,
    pub offset: u64,
    pub state: StateWrite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("state store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("state store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another process moved this partition's checkpoint past ours: it owns the partition
    /// now (a rebalance), so our write is refused whole.
    #[error(
        "checkpoint of job {job} partition {partition} (topic {topic:?}) is at {held}, past {ours}: another worker owns it"
    )]
    Superseded { job: String, partition: u32, topic: String, held: u64, ours: u64 },
    /// A later claim of the partition fenced this owner off: its write is refused whole, and
    /// it must stop working on the partition.
    #[error(
        "partition {partition} of job {job} was claimed by a newer owner (epoch {held}, ours {ours}): this worker steps down"
    )]
    Fenced { job: String, partition: u32, held: u64, ours: u64 },
    /// A replay's claim found a live owner: its heartbeat is younger than the replay's
    /// window.
    #[error(
        "partition {partition} of job {job} has a live owner (its last heartbeat was {} s ago): stop its `docfold run` first (a clean stop releases the partition), wait until its heartbeat is {} s old, or pass --force to fence it off",
        *.ago_ms as f64 / 1000.0, .live_ms / 1000
    )]
    Held { job: String, partition: u32, ago_ms: u64, live_ms: u64 },
    #[error("stored value out of range: {0}")]
    Corrupt(String),
    #[error("state store: {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// The embedded store keeps a file per partition, so it cannot follow a log whose
    /// partition count changed.
    #[error(
        "the state store's partition files ({folder}) were made for a log of {held} partitions, but it has {partitions} now: fold the log into a fresh store"
    )]
    Repartitioned { folder: std::path::PathBuf, held: u32, partitions: u32 },
    /// The database did not answer in time (black-holed, overloaded): retried.
    #[error("state store: {what} took longer than {seconds} s")]
    Timeout { what: &'static str, seconds: u64 },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(error) => is_transient(error),
            StoreError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// Whether a database error is routine and worth retrying: the connection is gone, or the
/// server answered with a SQLSTATE that a restart, a failover or contention produces.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_code(&code)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs (appendix A of its manual) and SQLite result codes that mean "try
/// again": the server shutting down or starting (57P01, 57P02, 57P03), a connection failure
/// (class 08), a serialization failure or deadlock (40001, 40P01), a read-only replica
/// during failover (25006), too many connections (53300), a cancelled statement (57014,
/// the statement timeout); SQLite busy or locked (5, 6 and their extended codes).
fn transient_code(code: &str) -> bool {
    code.starts_with("08")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "25006" | "53300" | "57014")
        // SQLite's codes are numbers of up to four digits; SQLSTATEs always have five characters.
        || (code.len() < 5 && code.parse::<u32>().is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6)))
}

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Backend::Sqlite),
            Some("postgres" | "postgresql") => Ok(Backend::Postgres),
            _ => Err(StoreError::BadUrl {
                url: redact_url(url),
                reason: "expected sqlite://PATH or postgres://…".into(),
            }),
        }
    }
}

/// The state store (cheap to clone: connection pools).
#[derive(Clone)]
pub struct Store {
    /// The database (PostgreSQL), or the store's own file (SQLite; [`partitions`]).
    pool: AnyPool,
    backend: Backend,
    /// SQLite's file per partition (none for an in-memory store).
    partitions: Option<Arc<PartitionFiles>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// Document ids per query of [`Store::load_docs`].
pub const IDS_PER_QUERY: usize = 500;

/// How long a load or a commit may take before it counts as failed (and is retried): a
/// black-holed database fails a flush instead of hanging it.
const TIMEOUT: Duration = Duration::from_secs(30);

async fn timed<T>(
    what: &'static str,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or(Err(StoreError::Timeout { what, seconds: TIMEOUT.as_secs() }))
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} does not fit a BIGINT")))
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative offset or version {value}")))
}

/// A stored document's columns, in the order [`stored_doc`] reads them.
const DOC_COLUMNS: &str = "partition_id, version, log_offset, state, updated_ms, delta_bytes";

/// A `StoredDoc` from the row's columns starting at `at` ([`DOC_COLUMNS`]), its deltas not
/// applied yet.
fn stored_doc(row: &sqlx::any::AnyRow, at: usize) -> Result<StoredDoc, StoreError> {
    Ok(StoredDoc {
        delta_bytes: to_u64(row.try_get(at + 5)?)?,
        partition: u32::try_from(row.try_get::<i64, _>(at)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: to_u64(row.try_get(at + 1)?)?,
        offset: to_u64(row.try_get(at + 2)?)?,
        state: row.try_get(at + 3)?,
        updated_ms: row.try_get(at + 4)?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// A [`Store::by_ids`] statement with the job and the ids bound.
fn bind_ids<'q>(sql: &'q str, job: &'q str, ids: impl IntoIterator<Item = &'q str>) -> AnyQuery<'q> {
    ids.into_iter().fold(sqlx::query(sql).bind(job), |query, id| query.bind(id))
}

/// Creates the folder of an SQLite URL's file (`sqlite://PATH[?…]`) if it is missing.
pub fn create_folder_of(url: &str) -> Result<(), String> {
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !path.starts_with(":") => {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// SQLite has no advisory lock for sqlx's migrator: two processes opening a fresh store
/// at once can both run a migration, and the loser's transaction fails (and rolls back).
/// Running the migrator again then finds it applied.
async fn migrate_sqlite(pool: &AnyPool) -> Result<(), StoreError> {
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Err(sqlx::migrate::MigrateError::ExecuteMigration(..)) if attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            done => return Ok(done?),
        }
    }
}

/// An SQLite pool of `url` (`sqlite://PATH?…`), migrated.
async fn open_sqlite(url: &str, connections: u32) -> Result<AnyPool, StoreError> {
    create_folder_of(url).map_err(|e| StoreError::BadUrl { url: redact_url(url), reason: e })?;
    // WAL: readers (`doc show`) never block the pipeline; NORMAL sync is durable against a
    // process crash (the log replays anything a power loss takes). The busy timeout comes
    // first: switching to WAL takes a lock that another process opening the file at the
    // same moment may hold.
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
                )
                .await
                .map(drop)
            })
        })
        .connect(url)
        .await?;
    migrate_sqlite(&pool).await?;
    Ok(pool)
}

impl Store {
    /// Connects (creating an SQLite file if needed) and applies the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = Backend::of(url)?;
        if backend == Backend::Postgres {
            let pool = AnyPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(30));
            let pool = pool.connect(url).await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            return Ok(Store { pool, backend, partitions: None });
        }
        let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
        let pool = open_sqlite(&url, 4).await?;
        let path = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let partitions = PartitionFiles::beside(std::path::Path::new(path.split('?').next().unwrap_or(path)));
        if let Some(files) = &partitions {
            files.move_from(&pool).await?;
        }
        Ok(Store { pool, backend, partitions: partitions.map(Arc::new) })
    }

    /// The pool that holds `partition`'s rows.
    async fn pool_of(&self, partition: u32) -> Result<AnyPool, StoreError> {
        match &self.partitions {
            Some(files) => files.pool(partition).await,
            None => Ok(self.pool.clone()),
        }
    }

    /// Every pool that holds partitions' rows.
    async fn every_pool(&self) -> Result<Vec<AnyPool>, StoreError> {
        match &self.partitions {
            Some(files) => files.every().await,
            None => Ok(vec![self.pool.clone()]),
        }
    }

    /// Refuses a log whose partition count is not the one the store's partition files were
    /// made for ([`StoreError::Repartitioned`]); the first call records it.
    pub fn expect_partitions(&self, partitions: u32) -> Result<(), StoreError> {
        self.partitions.as_ref().map_or(Ok(()), |files| files.expect_count(partitions))
    }

    pub async fn load_doc(&self, job: &str, doc_id: &str) -> Result<Option<StoredDoc>, StoreError> {
        Ok(self.load_docs(job, &[doc_id]).await?.pop().map(|(_, doc)| doc))
    }

    /// The stored documents among `doc_ids` (any number: they are asked for
    /// [`IDS_PER_QUERY`] at a time), with their ids, in no particular order, from whichever
    /// partition holds them.
    pub async fn load_docs(
        &self,
        job: &str,
        doc_ids: &[&str],
    ) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        timed("loading documents", async {
            let mut found: Vec<(String, StoredDoc)> = Vec::new();
            let mut missing: Vec<&str> = doc_ids.to_vec();
            for pool in self.every_pool().await? {
                if missing.is_empty() {
                    break;
                }
                let here = self.load_docs_from(&pool, job, &missing).await?;
                let here_ids: std::collections::HashSet<&str> =
                    here.iter().map(|(id, _)| id.as_str()).collect();
                missing.retain(|id| !here_ids.contains(id));
                found.extend(here);
            }
            Ok(found)
        })
        .await
    }

    /// [`Store::load_docs`] of documents in `partition` (the pipeline's loads).
    pub async fn partition_docs(
        &self,
        job: &str,
        partition: u32,
        doc_ids: &[&str],
    ) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        timed("loading documents", async {
            self.load_docs_from(&self.pool_of(partition).await?, job, doc_ids).await
        })
        .await
    }

    async fn load_docs_from(
        &self,
        pool: &AnyPool,
        job: &str,
        doc_ids: &[&str],
    ) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        let mut found = Vec::new();
        for chunk in doc_ids.chunks(IDS_PER_QUERY) {
            let sql =
                self.by_ids(&format!("SELECT doc_id, {DOC_COLUMNS} FROM doc_snapshots"), chunk.len(), "");
            for row in bind_ids(&sql, job, chunk.iter().copied()).fetch_all(pool).await? {
                found.push((row.try_get(0)?, stored_doc(&row, 1)?));
            }
        }
        self.apply_deltas(pool, job, &mut found).await?;
        Ok(found)
    }

    /// Up to `limit` documents of (job, partition) whose last record is at or after
    /// `since`, by id, starting after the id `after` (keyset paging: a caller streams a
    /// partition in bounded batches).
    pub async fn docs_changed(
        &self,
        job: &str,
        partition: u32,
        since: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        let sql = format!(
            "SELECT doc_id, {DOC_COLUMNS} FROM doc_snapshots \
             WHERE job = $1 AND partition_id = $2 AND log_offset >= $3 AND doc_id > $4 ORDER BY doc_id LIMIT $5"
        );
        let pool = self.pool_of(partition).await?;
        let rows = sqlx::query(&sql)
            .bind(job)
            .bind(i64::from(partition))
            .bind(to_i64(since)?)
            // Document ids are never empty (`op::limits`): "" is before every one.
            .bind(after.unwrap_or(""))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&pool)
            .await?;
        let mut docs = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, stored_doc(row, 1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.apply_deltas(&pool, job, &mut docs).await?;
        Ok(docs)
    }

    /// Document ids of a job, sorted.
    pub async fn doc_ids(&self, job: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for pool in self.every_pool().await? {
            let rows = sqlx::query("SELECT doc_id FROM doc_snapshots WHERE job = $1")
                .bind(job)
                .fetch_all(&pool)
                .await?;
            for row in rows {
                ids.push(row.try_get(0)?);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The mirror's next source offset for (job, mirrored topic, partition), if it copied any.
    pub async fn mirror_checkpoint(
        &self,
        job: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT next_offset FROM mirror_checkpoints WHERE job = $1 AND topic = $2 AND partition_id = $3",
        )
        .bind(job)
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| to_u64(row.try_get(0)?)).transpose()
    }

    /// Moves the mirror's checkpoint forward (never back: a slower second mirror process
    /// cannot undo a faster one's progress).
    pub async fn set_mirror_checkpoint(
        &self,
        job: &str,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), StoreError> {
        let write = sqlx::query(
            "INSERT INTO mirror_checkpoints (job, topic, partition_id, next_offset, updated_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job, topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset, \
             updated_ms = excluded.updated_ms WHERE mirror_checkpoints.next_offset < excluded.next_offset",
        )
        .bind(job)
        .bind(topic)
        .bind(i64::from(partition))
        .bind(to_i64(next_offset)?)
        .bind(now_ms());
        timed("a mirror checkpoint", async { Ok(write.execute(&self.pool).await.map(drop)?) }).await
    }

    /// Parameter `at` (from 1): PostgreSQL's `$N`, SQLite's plain `?` (SQLite looks a
    /// numbered or named parameter up in a list of every one before it: quadratic in a
    /// statement of thousands), so parameters must be bound in order.
    fn parameter(&self, at: usize) -> String {
        match self.backend {
            Backend::Sqlite => "?".into(),
            Backend::Postgres => format!("${at}"),
        }
    }

    /// `{head} WHERE job = … AND doc_id IN (…){tail}` for `count` ids: bind the job, then the
    /// ids ([`bind_ids`]).
    fn by_ids(&self, head: &str, count: usize, tail: &str) -> String {
        format!(
            "{head} WHERE job = {} AND doc_id IN {}{tail}",
            self.parameter(1),
            self.parameters(2, 1, count)
        )
    }

    /// `rows` parenthesised groups of `width` parameters, numbered from `first`.
    fn parameters(&self, first: usize, rows: usize, width: usize) -> String {
        let groups: Vec<String> = (0..rows)
            .map(|row| {
                let marks: Vec<String> =
                    (0..width).map(|column| self.parameter(first + row * width + column)).collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        groups.join(", ")
    }

    /// The connection pool, for tables kept beside the state (`region::sql`'s leases).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        if let Some(files) = &self.partitions {
            files.close().await;
        }
        self.pool.close().await;
    }
}
