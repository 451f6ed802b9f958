//! The state store: document snapshots and the consumer checkpoint, written together in one
//! transaction (DESIGN.md invariant 2). Backends by URL scheme: `sqlite://PATH` (embedded
//! default) and `postgres://…`, both through sqlx's `Any` driver with one set of SQL and a
//! migration folder per backend (`migrations/sqlite`, `migrations/postgres`).

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A document as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDoc {
    pub partition: u32,
    pub version: u64,
    /// Log offset of the last record folded into this state.
    pub offset: u64,
    /// The state encoding (`fold::snapshot`).
    pub state: Vec<u8>,
    pub updated_ms: i64,
}

/// Where a partition stands: the next record to fold and the next record the archive
/// has not written to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub next_offset: u64,
    pub archived_offset: u64,
}

/// A document to write with a checkpoint.
#[derive(Clone, Debug)]
pub struct DocWrite<'a> {
    pub doc_id: &'a str,
    pub version: u64,
    pub offset: u64,
    pub state: Vec<u8>,
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
        "checkpoint of job {job} partition {partition} is at {held}, past {ours}: another worker owns it"
    )]
    Superseded { job: String, partition: u32, held: u64, ours: u64 },
    #[error("stored value out of range: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        )
    }
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
                url: url.into(),
                reason: "expected sqlite://PATH or postgres://…".into(),
            }),
        }
    }
}

/// The state store (cheap to clone: a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
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

/// A `StoredDoc` from the row's columns starting at `at` (partition_id, version,
/// log_offset, state, updated_ms).
fn stored_doc(row: &sqlx::any::AnyRow, at: usize) -> Result<StoredDoc, StoreError> {
    Ok(StoredDoc {
        partition: u32::try_from(row.try_get::<i64, _>(at)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: to_u64(row.try_get(at + 1)?)?,
        offset: to_u64(row.try_get(at + 2)?)?,
        state: row.try_get(at + 3)?,
        updated_ms: row.try_get(at + 4)?,
    })
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

impl Store {
    /// Connects (creating an SQLite file if needed) and applies the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = Backend::of(url)?;
        let mut options = AnyPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(30));
        let mut url = url.to_string();
        if backend == Backend::Sqlite {
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
            // WAL: readers (`doc show`) never block the pipeline; NORMAL sync is durable
            // against a process crash (the log replays anything a power loss takes).
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
                        .await
                        .map(drop)
                })
            });
        }
        let pool = options.connect(&url).await?;
        match backend {
            Backend::Sqlite => migrate_sqlite(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Store { pool })
    }

    /// The checkpoint of (job, partition), if one was written.
    pub async fn checkpoint(&self, job: &str, partition: u32) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT next_offset, archived_offset FROM checkpoints WHERE job = $1 AND partition_id = $2",
        )
        .bind(job)
        .bind(i64::from(partition))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let next_offset = to_u64(row.try_get(0)?)?;
        let archived: Option<i64> = row.try_get(1)?;
        let archived_offset = archived.map(to_u64).transpose()?.unwrap_or(next_offset);
        Ok(Some(Checkpoint { next_offset, archived_offset }))
    }

    pub async fn load_doc(&self, job: &str, doc_id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let row = sqlx::query(
            "SELECT partition_id, version, log_offset, state, updated_ms FROM doc_snapshots WHERE job = $1 AND doc_id = $2",
        )
        .bind(job)
        .bind(doc_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| stored_doc(&row, 0)).transpose()
    }

    /// Writes `docs` and moves the checkpoint of (job, partition), in one transaction.
    /// Refused whole ([`StoreError::Superseded`]) when the stored checkpoint is already past
    /// `checkpoint.next_offset`.
    pub async fn commit(
        &self,
        job: &str,
        partition: u32,
        checkpoint: Checkpoint,
        docs: &[DocWrite<'_>],
    ) -> Result<(), StoreError> {
        let next_offset = checkpoint.next_offset;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "INSERT INTO checkpoints (job, partition_id, next_offset, archived_offset, updated_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job, partition_id) DO UPDATE SET next_offset = excluded.next_offset, \
             archived_offset = excluded.archived_offset, updated_ms = excluded.updated_ms \
             WHERE checkpoints.next_offset <= excluded.next_offset",
        )
        .bind(job)
        .bind(i64::from(partition))
        .bind(to_i64(next_offset)?)
        .bind(to_i64(checkpoint.archived_offset)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            drop(tx);
            let held = self.checkpoint(job, partition).await?.map_or(0, |c| c.next_offset);
            return Err(StoreError::Superseded { job: job.into(), partition, held, ours: next_offset });
        }
        for doc in docs {
            sqlx::query(
                "INSERT INTO doc_snapshots (job, doc_id, partition_id, version, log_offset, state, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job, doc_id) DO UPDATE SET \
                 partition_id = excluded.partition_id, version = excluded.version, log_offset = excluded.log_offset, \
                 state = excluded.state, updated_ms = excluded.updated_ms",
            )
            .bind(job)
            .bind(doc.doc_id)
            .bind(i64::from(partition))
            .bind(to_i64(doc.version)?)
            .bind(to_i64(doc.offset)?)
            .bind(doc.state.as_slice())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every checkpoint of a job: (partition, next offset).
    pub async fn checkpoints(&self, job: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition_id, next_offset FROM checkpoints WHERE job = $1 ORDER BY partition_id",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let partition =
                    u32::try_from(r.try_get::<i64, _>(0)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((partition, to_u64(r.try_get(1)?)?))
            })
            .collect()
    }

    /// The documents of (job, partition) whose last record is at or after `since`, by id.
    pub async fn docs_changed(
        &self,
        job: &str,
        partition: u32,
        since: u64,
    ) -> Result<Vec<(String, StoredDoc)>, StoreError> {
        let rows = sqlx::query(
            "SELECT doc_id, partition_id, version, log_offset, state, updated_ms FROM doc_snapshots \
             WHERE job = $1 AND partition_id = $2 AND log_offset >= $3 ORDER BY doc_id",
        )
        .bind(job)
        .bind(i64::from(partition))
        .bind(to_i64(since)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, stored_doc(row, 1)?))).collect()
    }

    /// Document ids of a job, sorted.
    pub async fn doc_ids(&self, job: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT doc_id FROM doc_snapshots WHERE job = $1 ORDER BY doc_id")
            .bind(job)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
