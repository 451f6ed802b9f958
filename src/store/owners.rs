//! Partition ownership (`partition_owners`): the right to commit a partition's checkpoints
//! is its owner epoch; whoever claimed it last holds the highest one. The row also holds
//! the owner's heartbeat (`updated_ms`: each commit, and every few seconds while idle; 0
//! once a clean stop released it) and the partition's replay generation.

use sqlx::Row;
use std::time::Duration;

use super::{Store, StoreError, now_ms, timed, to_i64, to_u64};

/// How often an idle owner says it is alive (a working one commits more often).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// An owner whose heartbeat is younger than this is live: a replay's claim is refused.
pub const LIVE_FOR: Duration = Duration::from_secs(30);

/// The right to write one partition's checkpoints: only the holder of the current epoch
/// may commit. `generation` goes with every projection and cache entry it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub job: String,
    pub partition: u32,
    pub epoch: u64,
    /// The partition's replay generation: a live replay moves it up by one, so its writes
    /// win over what the version guard alone would keep.
    pub generation: u64,
}

/// How a replay claims a partition.
#[derive(Clone, Copy, Debug)]
pub struct ReplayClaim {
    /// An owner whose heartbeat is younger than this is live: the claim is refused.
    pub live_for: Duration,
    /// Move the partition's generation up by one (a replay into the live sinks).
    pub new_generation: bool,
    /// Claim even from a live owner (it is fenced off).
    pub force: bool,
}

impl Store {
    /// Claims (job, partition) for a new owner: the epoch goes up by one, which fences off
    /// every earlier owner ([`StoreError::Fenced`] on their next commit or check).
    pub async fn claim(&self, job: &str, partition: u32) -> Result<Owner, StoreError> {
        let row = sqlx::query(
            "INSERT INTO partition_owners (job, partition_id, owner_epoch, updated_ms) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (job, partition_id) DO UPDATE SET owner_epoch = partition_owners.owner_epoch + 1, \
             updated_ms = excluded.updated_ms RETURNING owner_epoch, generation",
        )
        .bind(job)
        .bind(i64::from(partition))
        .bind(now_ms())
        .fetch_one(&self.pool_of(partition).await?)
        .await?;
        let (epoch, generation) = (to_u64(row.try_get(0)?)?, to_u64(row.try_get(1)?)?);
        Ok(Owner { job: job.into(), partition, epoch, generation })
    }

    /// Claims (job, partition) for a replay: refused with [`StoreError::Held`] while an
    /// owner's heartbeat is younger than `live_for` (unless `force`). One conditional
    /// statement, so a live owner's commit and the claim cannot interleave.
    pub async fn claim_for_replay(
        &self,
        job: &str,
        partition: u32,
        claim: ReplayClaim,
    ) -> Result<Owner, StoreError> {
        let pool = self.pool_of(partition).await?;
        sqlx::query(
            "INSERT INTO partition_owners (job, partition_id, owner_epoch, updated_ms) VALUES ($1, $2, 0, 0) \
             ON CONFLICT (job, partition_id) DO NOTHING",
        )
        .bind(job)
        .bind(i64::from(partition))
        .execute(&pool)
        .await?;
        let now = now_ms();
        let live_ms = i64::try_from(claim.live_for.as_millis()).unwrap_or(i64::MAX);
        let cutoff = if claim.force { i64::MAX } else { now - live_ms };
        let row = sqlx::query(
            "UPDATE partition_owners SET owner_epoch = owner_epoch + 1, generation = generation + $3, \
             updated_ms = $4 WHERE job = $1 AND partition_id = $2 AND (updated_ms = 0 OR updated_ms < $5) \
             RETURNING owner_epoch, generation",
        )
        .bind(job)
        .bind(i64::from(partition))
        .bind(i64::from(claim.new_generation))
        .bind(now)
        .bind(cutoff)
        .fetch_optional(&pool)
        .await?;
        match row {
            Some(row) => {
                let (epoch, generation) = (to_u64(row.try_get(0)?)?, to_u64(row.try_get(1)?)?);
                Ok(Owner { job: job.into(), partition, epoch, generation })
            }
            None => {
                let heartbeat: i64 = sqlx::query_scalar(
                    "SELECT updated_ms FROM partition_owners WHERE job = $1 AND partition_id = $2",
                )
                .bind(job)
                .bind(i64::from(partition))
                .fetch_one(&pool)
                .await?;
                let ago_ms = u64::try_from(now - heartbeat).unwrap_or(0);
                Err(StoreError::Held { job: job.into(), partition, ago_ms, live_ms: live_ms as u64 })
            }
        }
    }

    /// Says `owner` is alive (an idle worker commits nothing): [`StoreError::Fenced`] when
    /// a newer owner claimed the partition.
    pub async fn heartbeat(&self, owner: &Owner) -> Result<(), StoreError> {
        self.set_heartbeat(owner, now_ms()).await
    }

    /// Gives the partition up on a clean stop: a replay may claim it at once.
    pub async fn release(&self, owner: &Owner) -> Result<(), StoreError> {
        self.set_heartbeat(owner, 0).await
    }

    async fn set_heartbeat(&self, owner: &Owner, at_ms: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE partition_owners SET updated_ms = $3 WHERE job = $1 AND partition_id = $2 AND owner_epoch = $4",
        )
        .bind(&owner.job)
        .bind(i64::from(owner.partition))
        .bind(at_ms)
        .bind(to_i64(owner.epoch)?)
        .execute(&self.pool_of(owner.partition).await?)
        .await?;
        if done.rows_affected() == 0 {
            return Err(self.fenced(owner, self.epoch(&owner.job, owner.partition).await?));
        }
        Ok(())
    }

    /// Fails with [`StoreError::Fenced`] when `owner` is no longer the partition's owner:
    /// checked before effects that a stale owner must not write.
    pub async fn check_owner(&self, owner: &Owner) -> Result<(), StoreError> {
        let held = timed("an owner check", self.epoch(&owner.job, owner.partition)).await?;
        if held == owner.epoch { Ok(()) } else { Err(self.fenced(owner, held)) }
    }

    pub(super) async fn epoch(&self, job: &str, partition: u32) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT owner_epoch FROM partition_owners WHERE job = $1 AND partition_id = $2")
                .bind(job)
                .bind(i64::from(partition))
                .fetch_optional(&self.pool_of(partition).await?)
                .await?;
        row.map_or(Ok(0), |row| to_u64(row.try_get(0)?))
    }

    pub(super) fn fenced(&self, owner: &Owner, held: u64) -> StoreError {
        StoreError::Fenced { job: owner.job.clone(), partition: owner.partition, held, ours: owner.epoch }
    }
}
