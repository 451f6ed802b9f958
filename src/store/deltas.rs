//! Incremental snapshots (migration 0007): a document's full state in `doc_snapshots` and the
//! deltas written after it in `doc_deltas`; reads hand back the state with them applied.

use sqlx::Row;
use std::collections::HashMap;

use super::{IDS_PER_QUERY, Store, StoreError, StoredDoc, bind_ids, to_i64};
use crate::store::{DocWrite, StateWrite};

impl Store {
    /// Applies the stored deltas of the documents that have any to their states.
    pub(super) async fn apply_deltas(
        &self,
        pool: &sqlx::AnyPool,
        job: &str,
        docs: &mut [(String, StoredDoc)],
    ) -> Result<(), StoreError> {
        let with: Vec<&str> =
            docs.iter().filter(|(_, d)| d.delta_bytes > 0).map(|(id, _)| id.as_str()).collect();
        let mut deltas: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for chunk in with.chunks(IDS_PER_QUERY) {
            let sql = self.by_ids(
                "SELECT doc_id, ops FROM doc_deltas",
                chunk.len(),
                " ORDER BY doc_id, log_offset",
            );
            for row in bind_ids(&sql, job, chunk.iter().copied()).fetch_all(pool).await? {
                deltas.entry(row.try_get(0)?).or_default().push(row.try_get(1)?);
            }
        }
        for (id, doc) in docs.iter_mut() {
            if let Some(deltas) = deltas.get(id) {
                doc.state = crate::fold::snapshot::apply_deltas(&doc.state, deltas)
                    .map_err(|e| StoreError::Corrupt(format!("document {id:?}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Writes `docs` in a commit's transaction: full states replace the row (and drop its
    /// deltas); deltas are added after it and move the row's version and offset.
    pub(super) async fn write_docs(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        (job, partition, now): (&str, u32, i64),
        docs: &[DocWrite<'_>],
    ) -> Result<(), StoreError> {
        let (full, delta): (Vec<&DocWrite>, Vec<&DocWrite>) =
            docs.iter().partition(|d| matches!(d.state, StateWrite::Full(_)));
        for chunk in full.chunks(DOCS_PER_STATEMENT) {
            self.upsert(tx, (job, partition, now), chunk, "state = excluded.state, delta_bytes = 0").await?;
            let sql = self.by_ids("DELETE FROM doc_deltas", chunk.len(), "");
            bind_ids(&sql, job, chunk.iter().map(|doc| doc.doc_id)).execute(&mut **tx).await?;
        }
        for chunk in delta.chunks(DOCS_PER_STATEMENT) {
            let moved = "delta_bytes = doc_snapshots.delta_bytes + excluded.delta_bytes";
            self.upsert(tx, (job, partition, now), chunk, moved).await?;
            let sql = format!(
                "INSERT INTO doc_deltas (job, doc_id, log_offset, ops) VALUES {} \
                 ON CONFLICT (job, doc_id, log_offset) DO UPDATE SET ops = excluded.ops",
                self.parameters(1, chunk.len(), 4)
            );
            let mut insert = sqlx::query(&sql);
            for doc in chunk {
                insert = insert.bind(job).bind(doc.doc_id).bind(to_i64(doc.offset)?).bind(bytes_of(doc));
            }
            insert.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// One statement for `docs`' rows: version, offset and `set` move; a new row takes the
    /// state (a delta is only written after a full state, so its row exists).
    async fn upsert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        (job, partition, now): (&str, u32, i64),
        docs: &[&DocWrite<'_>],
        set: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO doc_snapshots (job, doc_id, partition_id, version, log_offset, state, updated_ms, delta_bytes) \
             VALUES {} ON CONFLICT (job, doc_id) DO UPDATE SET partition_id = excluded.partition_id, \
             version = excluded.version, log_offset = excluded.log_offset, updated_ms = excluded.updated_ms, {set}",
            self.parameters(1, docs.len(), 8)
        );
        let mut upsert = sqlx::query(&sql);
        for doc in docs {
            let delta_bytes = match &doc.state {
                StateWrite::Full(_) => 0,
                StateWrite::Delta(ops) => ops.len() as i64,
            };
            upsert = upsert
                .bind(job)
                .bind(doc.doc_id)
                .bind(i64::from(partition))
                .bind(to_i64(doc.version)?)
                .bind(to_i64(doc.offset)?)
                .bind(bytes_of(doc))
                .bind(now)
                .bind(delta_bytes);
        }
        upsert.execute(&mut **tx).await?;
        Ok(())
    }
}

fn bytes_of<'a>(doc: &'a DocWrite<'_>) -> &'a [u8] {
    match &doc.state {
        StateWrite::Full(bytes) | StateWrite::Delta(bytes) => bytes,
    }
}

/// Documents written by one statement of a commit (8 parameters each: well under SQLite's
/// 32,766 and PostgreSQL's 65,535), so a flush of many documents makes few round trips.
const DOCS_PER_STATEMENT: usize = 1_000;
