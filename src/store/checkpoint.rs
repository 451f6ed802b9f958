//! Checkpoints and partition ownership. A partition folds one or more source topics (the
//! job's own, [`LOCAL_TOPIC`], and each peer region's mirrored one); each has its own
//! checkpoint row, and every row of a commit moves in the transaction of the documents.
//! The right to commit is the partition's owner epoch (`owners.rs`).

use sqlx::Row;

use super::{Store, StoreError, now_ms, timed, to_i64, to_u64};
use crate::store::{DocWrite, Owner};

/// How the job's own topic (`log.topic`) is named in the checkpoints: rows from before
/// several source topics were moved here when the config was not known, and a renamed
/// topic keeps its progress.
pub const LOCAL_TOPIC: &str = "";

/// Where a partition stands in one source topic: the next record to fold and the next
/// record the archive has not written to a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub next_offset: u64,
    pub archived_offset: u64,
}

fn partition_of(row: &sqlx::any::AnyRow) -> Result<u32, StoreError> {
    u32::try_from(row.try_get::<i64, _>(0)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// The checkpoint of the job's own topic in (job, partition), if one was written.
    pub async fn checkpoint(&self, job: &str, partition: u32) -> Result<Option<Checkpoint>, StoreError> {
        let mut sources = self.source_checkpoints(job, partition).await?;
        Ok(sources.iter().position(|(topic, _)| topic == LOCAL_TOPIC).map(|at| sources.swap_remove(at).1))
    }

    /// Every source topic's checkpoint of (job, partition), by stored topic name.
    pub async fn source_checkpoints(
        &self,
        job: &str,
        partition: u32,
    ) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let rows = sqlx::query(
            "SELECT topic, next_offset, archived_offset FROM source_checkpoints \
             WHERE job = $1 AND partition_id = $2 ORDER BY topic",
        )
        .bind(job)
        .bind(i64::from(partition))
        .fetch_all(&self.pool_of(partition).await?)
        .await?;
        rows.iter()
            .map(|row| {
                let checkpoint = Checkpoint {
                    next_offset: to_u64(row.try_get(1)?)?,
                    archived_offset: to_u64(row.try_get(2)?)?,
                };
                Ok((row.try_get(0)?, checkpoint))
            })
            .collect()
    }

    /// Every checkpoint of a job: (partition, stored topic, next offset).
    pub async fn checkpoints(&self, job: &str) -> Result<Vec<(u32, String, u64)>, StoreError> {
        let mut checkpoints = Vec::new();
        for pool in self.every_pool().await? {
            let rows =
                sqlx::query("SELECT partition_id, topic, next_offset FROM source_checkpoints WHERE job = $1")
                    .bind(job)
                    .fetch_all(&pool)
                    .await?;
            for r in rows {
                checkpoints.push((partition_of(&r)?, r.try_get(1)?, to_u64(r.try_get(2)?)?));
            }
        }
        checkpoints.sort_unstable();
        Ok(checkpoints)
    }

    /// Writes `docs` and moves the owner's partition's checkpoints (per stored topic), in
    /// one transaction. Refused whole when a newer owner claimed the partition
    /// ([`StoreError::Fenced`]) or a stored checkpoint is already past ours
    /// ([`StoreError::Superseded`]).
    pub async fn commit(
        &self,
        owner: &Owner,
        checkpoints: &[(&str, Checkpoint)],
        docs: &[DocWrite<'_>],
    ) -> Result<(), StoreError> {
        timed("a commit", self.commit_now(owner, checkpoints, docs)).await
    }

    async fn commit_now(
        &self,
        owner: &Owner,
        checkpoints: &[(&str, Checkpoint)],
        docs: &[DocWrite<'_>],
    ) -> Result<(), StoreError> {
        let (job, partition) = (owner.job.as_str(), owner.partition);
        let now = now_ms();
        let mut tx = self.owned_transaction(owner, now).await?;
        for &(topic, checkpoint) in checkpoints {
            let moved = sqlx::query(
                "INSERT INTO source_checkpoints (job, partition_id, topic, next_offset, archived_offset, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job, partition_id, topic) DO UPDATE SET \
                 next_offset = excluded.next_offset, archived_offset = excluded.archived_offset, \
                 updated_ms = excluded.updated_ms WHERE source_checkpoints.next_offset <= excluded.next_offset",
            )
            .bind(job)
            .bind(i64::from(partition))
            .bind(topic)
            .bind(to_i64(checkpoint.next_offset)?)
            .bind(to_i64(checkpoint.archived_offset)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                drop(tx);
                let stored = self.source_checkpoints(job, partition).await?;
                let held = stored.iter().find(|(t, _)| t == topic).map_or(0, |(_, c)| c.next_offset);
                let (job, topic) = (job.into(), topic.into());
                return Err(StoreError::Superseded {
                    job,
                    partition,
                    topic,
                    held,
                    ours: checkpoint.next_offset,
                });
            }
        }
        self.write_docs(&mut tx, (job, partition, now), docs).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Begins a transaction of `owner`'s partition with its owner row locked (a concurrent
    /// claim waits for it) and its heartbeat at `now`; [`StoreError::Fenced`] when a newer
    /// owner claimed the partition.
    async fn owned_transaction(
        &self,
        owner: &Owner,
        now: i64,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.pool_of(owner.partition).await?.begin().await?;
        let owned = sqlx::query(
            "UPDATE partition_owners SET updated_ms = $3 WHERE job = $1 AND partition_id = $2 AND owner_epoch = $4",
        )
        .bind(&owner.job)
        .bind(i64::from(owner.partition))
        .bind(now)
        .bind(to_i64(owner.epoch)?)
        .execute(&mut *tx)
        .await?;
        if owned.rows_affected() == 0 {
            drop(tx);
            return Err(self.fenced(owner, self.epoch(&owner.job, owner.partition).await?));
        }
        Ok(tx)
    }

    /// Moves the fold offset of `owner`'s partition in `topic` (stored name) to
    /// `next_offset`, backwards too (a replay; a commit only moves forward). The archive's
    /// progress stays (a new row starts it at `next_offset`).
    pub async fn reset_checkpoint(
        &self,
        owner: &Owner,
        topic: &str,
        next_offset: u64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.owned_transaction(owner, now).await?;
        sqlx::query(
            "INSERT INTO source_checkpoints (job, partition_id, topic, next_offset, archived_offset, updated_ms) \
             VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (job, partition_id, topic) DO UPDATE SET \
             next_offset = excluded.next_offset, updated_ms = excluded.updated_ms",
        )
        .bind(&owner.job)
        .bind(i64::from(owner.partition))
        .bind(topic)
        .bind(to_i64(next_offset)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
