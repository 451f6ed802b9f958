//! Embedded projections: one SQLite table with DynamoDB's semantics (an upsert that only
//! moves a version forward).

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use std::str::FromStr;

use super::{Body, Projection, ProjectionStore, Written};
use crate::sink::SinkError;

/// Projections written by one statement (7 parameters each; a statement per item would cost
/// a round trip to SQLite's worker thread per document).
const ITEMS_PER_STATEMENT: usize = 500;

pub struct SqliteProjections {
    pool: SqlitePool,
}

fn failed(error: sqlx::Error) -> SinkError {
    let message = error.to_string();
    if crate::store::is_transient(&error) {
        SinkError::Unavailable { sink: "projections", message }
    } else {
        SinkError::Refused { sink: "projections", message }
    }
}

impl SqliteProjections {
    pub async fn open(url: &str) -> Result<SqliteProjections, SinkError> {
        crate::store::create_folder_of(url)
            .map_err(|e| SinkError::Config(format!("projection URL {url:?}: {e}")))?;
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| SinkError::Config(format!("projection URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(failed)?;
        let projections = SqliteProjections { pool };
        projections.create().await?;
        Ok(projections)
    }
}

impl ProjectionStore for SqliteProjections {
    async fn create(&self) -> Result<(), SinkError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS projections (doc_id TEXT PRIMARY KEY, text TEXT, text_ref TEXT, \
             version INTEGER NOT NULL, chars INTEGER NOT NULL, updated_ms INTEGER NOT NULL, region TEXT NOT NULL, \
             generation INTEGER NOT NULL DEFAULT 0)",
        )
        .execute(&self.pool)
        .await
        .map_err(failed)?;
        // A table from before replay generations.
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('projections')")
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
        if !columns.iter().any(|c| c == "generation") {
            sqlx::query("ALTER TABLE projections ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
                .execute(&self.pool)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    async fn put(&self, items: &[Projection]) -> Result<Written, SinkError> {
        let mut tx = self.pool.begin().await.map_err(failed)?;
        let mut outcome = Written::default();
        for chunk in items.chunks(ITEMS_PER_STATEMENT) {
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO projections (doc_id, text, text_ref, version, chars, updated_ms, region, generation) \
                 VALUES {rows} ON CONFLICT (doc_id) DO UPDATE SET text = excluded.text, \
                 text_ref = excluded.text_ref, version = excluded.version, chars = excluded.chars, \
                 updated_ms = excluded.updated_ms, region = excluded.region, generation = excluded.generation \
                 WHERE (projections.generation, projections.version) < (excluded.generation, excluded.version)"
            );
            let mut upsert = sqlx::query(&sql);
            for item in chunk {
                let (text, text_ref) = match &item.body {
                    Body::Text(text) => (Some(text.as_str()), None),
                    Body::Pointer(key) => (None, Some(key.as_str())),
                };
                upsert = upsert
                    .bind(&item.doc_id)
                    .bind(text)
                    .bind(text_ref)
                    .bind(item.version as i64)
                    .bind(item.chars as i64)
                    .bind(item.updated_ms)
                    .bind(&item.region)
                    .bind(item.generation as i64);
            }
            // A row is affected when it is new or moved forward; the others were stale.
            let done = upsert.execute(&mut *tx).await.map_err(failed)?.rows_affected();
            outcome.written += done;
            outcome.stale += chunk.len() as u64 - done;
        }
        tx.commit().await.map_err(failed)?;
        Ok(outcome)
    }

    async fn get(&self, doc_id: &str) -> Result<Option<Projection>, SinkError> {
        let row = sqlx::query(
            "SELECT text, text_ref, version, chars, updated_ms, region, generation FROM projections WHERE doc_id = ?",
        )
        .bind(doc_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed)?;
        let Some(row) = row else { return Ok(None) };
        let text: Option<String> = row.try_get(0).map_err(failed)?;
        let text_ref: Option<String> = row.try_get(1).map_err(failed)?;
        let body = Body::stored(doc_id, text, text_ref)?;
        Ok(Some(Projection {
            doc_id: doc_id.into(),
            body,
            version: row.try_get::<i64, _>(2).map_err(failed)? as u64,
            generation: row.try_get::<i64, _>(6).map_err(failed)? as u64,
            chars: row.try_get::<i64, _>(3).map_err(failed)? as u64,
            updated_ms: row.try_get(4).map_err(failed)?,
            region: row.try_get(5).map_err(failed)?,
            epoch: None,
        }))
    }
}
