//! The lease store in the state store's database (SQLite for one machine, PostgreSQL for
//! regions sharing one database): table `region_leases` (migration 0004), compare-and-set
//! as an `INSERT … ON CONFLICT DO NOTHING` or an `UPDATE` that matches the whole expected
//! row. Both are single statements, atomic in either database.

use super::lease::{Lease, LeaseError, LeaseStore, Replaced};
use crate::store::{Store, is_transient};

fn failed(what: &'static str) -> impl FnOnce(sqlx::Error) -> LeaseError {
    move |error| {
        let message = format!("{what}: {error}");
        if is_transient(&error) { LeaseError::Unavailable(message) } else { LeaseError::Refused(message) }
    }
}

fn epoch_of(value: u64) -> Result<i64, LeaseError> {
    i64::try_from(value).map_err(|_| LeaseError::Refused(format!("epoch {value} does not fit a BIGINT")))
}

impl LeaseStore for Store {
    async fn read(&self, scope: &str) -> Result<Option<Lease>, LeaseError> {
        let row = sqlx::query("SELECT holder, epoch, expires_ms FROM region_leases WHERE scope = $1")
            .bind(scope)
            .fetch_optional(self.pool())
            .await
            .map_err(failed("reading the region lease"))?;
        let Some(row) = row else { return Ok(None) };
        let column = failed("reading the region lease");
        let (holder, epoch, expires_ms): (String, i64, i64) =
            sqlx::FromRow::from_row(&row).map_err(column)?;
        let epoch = u64::try_from(epoch)
            .map_err(|_| LeaseError::Refused(format!("stored lease epoch {epoch} is negative")))?;
        Ok(Some(Lease { holder, epoch, expires_ms }))
    }

    async fn replace(
        &self,
        scope: &str,
        expected: Option<&Lease>,
        new: &Lease,
    ) -> Result<Replaced, LeaseError> {
        let written =
            match expected {
                None => sqlx::query(
                    "INSERT INTO region_leases (scope, holder, epoch, expires_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope) DO NOTHING",
                )
                .bind(scope)
                .bind(&new.holder)
                .bind(epoch_of(new.epoch)?)
                .bind(new.expires_ms)
                .execute(self.pool())
                .await,
                Some(old) => {
                    sqlx::query(
                        "UPDATE region_leases SET holder = $2, epoch = $3, expires_ms = $4 \
                 WHERE scope = $1 AND holder = $5 AND epoch = $6 AND expires_ms = $7",
                    )
                    .bind(scope)
                    .bind(&new.holder)
                    .bind(epoch_of(new.epoch)?)
                    .bind(new.expires_ms)
                    .bind(&old.holder)
                    .bind(epoch_of(old.epoch)?)
                    .bind(old.expires_ms)
                    .execute(self.pool())
                    .await
                }
            }
            .map_err(failed("writing the region lease"))?;
        if written.rows_affected() == 1 {
            Ok(Replaced::Written)
        } else {
            Ok(Replaced::Conflict(self.read(scope).await?))
        }
    }
}
