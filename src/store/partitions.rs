//! The embedded store's layout. SQLite lets one writer at a time into a file, so one file
//! for every partition made the partitions' commits queue for its lock. Each partition's
//! documents, deltas, checkpoints and owner epoch therefore live in a file of their own,
//! `<store>.partitions/partition-<p>.db` beside the store's file, and partitions commit in
//! parallel. The store's own file keeps what belongs to no partition: leases, document
//! homes, mirror checkpoints. Every file has the same schema (`migrations/sqlite`).
//!
//! A document's state is looked for in its partition's file, so the log's partition count
//! must not change under a store: the count is written in the folder (`partitions`), and a
//! job with another count is refused ([`StoreError::Repartitioned`]).
//!
//! Stores written before this layout held every row in the store's file: opening one moves
//! each partition's rows into the partition's file (copy, then delete: a crash between the
//! two leaves copies that the next open skips).

use sqlx::{AnyPool, Executor, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{StoreError, open_sqlite};

pub(super) struct PartitionFiles {
    folder: PathBuf,
    /// The store's own file, for moving an older layout's rows.
    store_file: PathBuf,
    open: tokio::sync::Mutex<BTreeMap<u32, AnyPool>>,
}

/// The tables whose rows belong to one partition, and how to pick a partition's rows: the
/// deltas by their document's row (which the move copies and deletes after them).
const PARTITION_ROWS: [(&str, &str); 4] = [
    ("partition_owners", "partition_id = ?1"),
    ("source_checkpoints", "partition_id = ?1"),
    (
        "doc_deltas",
        "EXISTS (SELECT 1 FROM {from}.doc_snapshots s WHERE s.job = doc_deltas.job \
         AND s.doc_id = doc_deltas.doc_id AND s.partition_id = ?1)",
    ),
    ("doc_snapshots", "partition_id = ?1"),
];

impl PartitionFiles {
    /// The partition files beside an SQLite store's file (`path`), or `None` for an
    /// in-memory store.
    pub(super) fn beside(path: &Path) -> Option<PartitionFiles> {
        if path.as_os_str().is_empty() || path.starts_with(":") {
            return None;
        }
        Some(PartitionFiles {
            folder: path.with_extension("partitions"),
            store_file: path.to_path_buf(),
            open: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The pool of `partition`'s file, opened (and created) on first use.
    pub(super) async fn pool(&self, partition: u32) -> Result<AnyPool, StoreError> {
        let mut open = self.open.lock().await;
        if let Some(pool) = open.get(&partition) {
            return Ok(pool.clone());
        }
        let path = self.folder.join(format!("partition-{partition}.db"));
        let pool = open_sqlite(&format!("sqlite://{}?mode=rwc", path.display()), 3).await?;
        open.insert(partition, pool.clone());
        Ok(pool)
    }

    /// The pools of every partition file there is, by partition.
    pub(super) async fn every(&self) -> Result<Vec<AnyPool>, StoreError> {
        let mut partitions = Vec::new();
        match std::fs::read_dir(&self.folder) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let number = name.strip_prefix("partition-").and_then(|n| n.strip_suffix(".db"));
                    if let Some(partition) = number.and_then(|n| n.parse::<u32>().ok()) {
                        partitions.push(partition);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path: self.folder.clone(), source: e }),
        }
        partitions.sort_unstable();
        let mut pools = Vec::with_capacity(partitions.len());
        for partition in partitions {
            pools.push(self.pool(partition).await?);
        }
        Ok(pools)
    }

    pub(super) async fn close(&self) {
        for pool in self.open.lock().await.values() {
            pool.close().await;
        }
    }

    /// Records the log's partition count on first use, and refuses another one after.
    pub(super) fn expect_count(&self, partitions: u32) -> Result<(), StoreError> {
        let file = self.folder.join("partitions");
        let io = |source| StoreError::Io { path: file.clone(), source };
        match std::fs::read_to_string(&file) {
            Ok(text) => match text.trim().parse::<u32>() {
                Ok(held) if held == partitions => Ok(()),
                Ok(held) => Err(StoreError::Repartitioned { folder: self.folder.clone(), held, partitions }),
                Err(_) => {
                    Err(StoreError::Corrupt(format!("{}: not a partition count: {text:?}", file.display())))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.folder).map_err(io)?;
                std::fs::write(&file, format!("{partitions}\n")).map_err(io)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Moves the rows an older layout kept in the store's file (`store`) into their
    /// partitions' files.
    pub(super) async fn move_from(&self, store: &AnyPool) -> Result<(), StoreError> {
        let held = sqlx::query(
            "SELECT partition_id FROM partition_owners UNION SELECT partition_id FROM source_checkpoints \
             UNION SELECT partition_id FROM doc_snapshots",
        )
        .fetch_all(store)
        .await?;
        for row in held {
            let partition = u32::try_from(row.try_get::<i64, _>(0)?)
                .map_err(|e| StoreError::Corrupt(format!("partition id: {e}")))?;
            let pool = self.pool(partition).await?;
            let mut conn = pool.acquire().await?;
            let from = self.store_file.display().to_string().replace('\'', "''");
            conn.execute(format!("ATTACH DATABASE '{from}' AS older").as_str()).await?;
            let moved = Self::move_rows(&mut conn, partition).await;
            conn.execute("DETACH DATABASE older").await?;
            moved?;
            tracing::info!(partition, file = %self.folder.display(), "moved a partition's rows into its own file");
        }
        Ok(())
    }

    async fn move_rows(
        conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
        partition: u32,
    ) -> Result<(), StoreError> {
        let partition = i64::from(partition);
        for (table, rows) in PARTITION_ROWS {
            let rows = rows.replace("{from}", "older");
            let copy = format!("INSERT OR IGNORE INTO main.{table} SELECT * FROM older.{table} WHERE {rows}");
            sqlx::query(&copy).bind(partition).execute(&mut **conn).await?;
        }
        for (table, rows) in PARTITION_ROWS {
            let rows = rows.replace("{from}", "older");
            sqlx::query(&format!("DELETE FROM older.{table} WHERE {rows}"))
                .bind(partition)
                .execute(&mut **conn)
                .await?;
        }
        Ok(())
    }
}
