//! Disaster-recovery snapshots in object storage: every `snapshots.interval_ms` a partition
//! writes the documents changed since its last manifest, packed `snapshots.batch_docs` to an
//! object (`snapshots/packs/partition=<P>/<next offset>-<n>`: the states' encodings of
//! `schemas/docfold/state/v1/snapshot.proto`, one after another, taken from the state store
//! after a checkpoint), then a manifest
//! `snapshots/manifests/partition=<P>/<next offset>.json` naming, for every document of the
//! partition, the object and byte range of its latest state. A manifest is written last, so
//! it only names objects that exist; [`restore`] rebuilds a state store from the newest
//! manifest of each partition, and the log replays the rest. (Manifests from before packs
//! name one object per document, `snapshots/doc=<id>/<offset>`, and are read the same way.)

use bytes::Bytes;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

use super::SinkError;
use super::objects::{Objects, stored_key};
use crate::store::{Checkpoint, DocWrite, LOCAL_TOPIC, StateWrite, Store, StoreError};

/// The documents of a partition as of its checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub job: String,
    pub partition: u32,
    /// The partition's position: the sum of `sources`' offsets (the local topic's offset
    /// with one source topic). Documents' `offset`s count the same way.
    pub next_offset: u64,
    /// Per source topic (stored name; `""` is the job's own): every record before this
    /// offset is in the listed states. Empty in manifests from before several topics:
    /// then `next_offset` is the job's own topic's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, u64>,
    pub created_ms: i64,
    pub docs: BTreeMap<String, ManifestDoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDoc {
    /// Object key of the state (relative to the object storage root)…
    pub key: String,
    /// …and its bytes there, `[start, end)`; the whole object when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[u64; 2]>,
    pub version: u64,
    /// The partition's position after the last record in the state (`StoredDoc::offset`).
    pub offset: u64,
}

impl Manifest {
    /// Each source topic's next offset.
    pub fn source_offsets(&self) -> BTreeMap<String, u64> {
        if self.sources.is_empty() {
            BTreeMap::from([(LOCAL_TOPIC.to_string(), self.next_offset)])
        } else {
            self.sources.clone()
        }
    }
}

fn manifests(partition: u32) -> Key {
    Key::from_iter(["snapshots".to_string(), "manifests".into(), format!("partition={partition}")])
}

fn pack_key(partition: u32, next_offset: u64, pack: usize) -> Key {
    Key::from_iter([
        "snapshots".to_string(),
        "packs".into(),
        format!("partition={partition}"),
        format!("{next_offset:020}-{pack:06}"),
    ])
}

impl ManifestDoc {
    /// This document's state in `object`, the bytes of the object its key names.
    fn state<'a>(&self, object: &'a Bytes) -> Result<&'a [u8], SinkError> {
        let Some([start, end]) = self.range else { return Ok(object) };
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(start, end)| object.get(start..end))
            .ok_or_else(|| corrupt(format!("{} has no bytes {start}..{end}", self.key)))
    }
}

fn corrupt(message: String) -> SinkError {
    SinkError::Corrupt { sink: "snapshots", message }
}

fn store_failed(error: StoreError) -> SinkError {
    let retryable = error.is_retryable();
    let message = error.to_string();
    if retryable {
        SinkError::Unavailable { sink: "snapshots", message }
    } else {
        SinkError::Refused { sink: "snapshots", message }
    }
}

/// The newest manifest of a partition, if any.
pub async fn latest_manifest(objects: &Objects, partition: u32) -> Result<Option<Manifest>, SinkError> {
    let Some(key) = objects.list(&manifests(partition)).await?.pop() else { return Ok(None) };
    read_manifest(objects, &key).await.map(Some)
}

/// A disaster-recovery export under way: the documents of a partition changed since the
/// previous manifest, written in packs a bounded number of steps at a time (so that a
/// partition's flushes share the work of an export instead of one flush doing all of it),
/// then a manifest at the position the export began with. A document changed after that
/// position is exported with its newer state: a restore replays the log from the manifest's
/// position onto it, and the fold drops the records it already holds.
pub struct Export {
    /// The previous manifest's documents, and those written so far.
    manifest: Manifest,
    /// The previous manifest's position: documents changed at or after it are exported.
    since: u64,
    /// The checkpoints the new manifest names (stored topic, next offset).
    sources: BTreeMap<String, u64>,
    /// The last document id written (keyset paging through the partition).
    after: Option<String>,
    packs: usize,
}

impl Export {
    /// An export of (job, partition) at `sources`, the checkpoints just committed, after
    /// the previous manifest `last`.
    pub fn new(
        (job, partition): (&str, u32),
        sources: BTreeMap<String, u64>,
        last: Option<Manifest>,
    ) -> Export {
        let manifest = last.unwrap_or_else(|| Manifest { job: job.into(), partition, ..Manifest::default() });
        Export { since: manifest.next_offset, manifest, sources, after: None, packs: 0 }
    }

    /// The position the manifest will name.
    pub fn position(&self) -> u64 {
        self.sources.values().sum()
    }

    /// Writes up to `packs` more objects of `batch` documents each, read from the store a
    /// batch at a time (an export holds one batch of states, never a partition); once no
    /// changed document is left, writes the manifest and returns it. An error leaves the
    /// export where it was, to go on from there.
    pub async fn step(
        &mut self,
        objects: &Objects,
        store: &Store,
        batch: usize,
        packs: usize,
    ) -> Result<Option<Manifest>, SinkError> {
        let (job, partition, next_offset) =
            (self.manifest.job.clone(), self.manifest.partition, self.position());
        let delay = fault_delay();
        for _ in 0..packs {
            let page = store
                .docs_changed(&job, partition, self.since, self.after.as_deref(), batch.max(1))
                .await
                .map_err(store_failed)?;
            let Some((last_id, _)) = page.last() else { return self.finish(objects).await.map(Some) };
            let last_id = last_id.clone();
            let key = pack_key(partition, next_offset, self.packs);
            let mut body = Vec::with_capacity(page.iter().map(|(_, doc)| doc.state.len()).sum());
            let mut docs = Vec::with_capacity(page.len());
            for (doc_id, doc) in page {
                let range = Some([body.len() as u64, (body.len() + doc.state.len()) as u64]);
                body.extend_from_slice(&doc.state);
                docs.push((
                    doc_id,
                    ManifestDoc { key: key.to_string(), range, version: doc.version, offset: doc.offset },
                ));
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
            }
            objects.put(&key, Bytes::from(body), usize::MAX).await?;
            self.manifest.docs.extend(docs);
            self.after = Some(last_id);
            self.packs += 1;
        }
        Ok(None)
    }

    async fn finish(&mut self, objects: &Objects) -> Result<Manifest, SinkError> {
        let next_offset = self.position();
        let mut manifest = std::mem::take(&mut self.manifest);
        manifest.next_offset = next_offset;
        manifest.sources = self.sources.clone();
        manifest.created_ms = crate::store::now_ms();
        let body = serde_json::to_vec_pretty(&manifest).expect("plain struct");
        let key = manifests(manifest.partition).join(format!("{next_offset:020}.json"));
        if let Err(error) = objects.put(&key, body.into(), usize::MAX).await {
            self.manifest = manifest;
            return Err(error);
        }
        Ok(manifest)
    }
}

/// An [`Export`] from start to end: the partition's documents changed since `last` and a
/// new manifest at `sources`.
pub async fn export(
    objects: &Objects,
    store: &Store,
    at: (&str, u32),
    sources: BTreeMap<String, u64>,
    last: Option<Manifest>,
    batch: usize,
) -> Result<Manifest, SinkError> {
    let manifest = Export::new(at, sources, last).step(objects, store, batch, usize::MAX).await?;
    Ok(manifest.expect("a step without a bound ends the export"))
}

/// Deletes the partition's manifests older than its newest `keep`, and the document
/// states only they name: manifests are cumulative, so a state that a deleted manifest
/// names and the oldest kept one does not was replaced before every kept manifest.
/// Called after an export; a failure leaves garbage for the next call, never a gap.
pub async fn collect_garbage(objects: &Objects, partition: u32, keep: usize) -> Result<usize, SinkError> {
    let listed = objects.list(&manifests(partition)).await?;
    if listed.len() <= keep {
        return Ok(0);
    }
    let (old, kept) = listed.split_at(listed.len() - keep);
    let oldest_kept = read_manifest(objects, &kept[0]).await?;
    let referenced: HashSet<&str> = oldest_kept.docs.values().map(|d| d.key.as_str()).collect();
    let mut deleted = HashSet::new();
    for key in old {
        let manifest = read_manifest(objects, key).await?;
        for doc in manifest.docs.values().filter(|d| !referenced.contains(d.key.as_str())) {
            if deleted.insert(doc.key.clone()) {
                objects.delete(&stored_key("snapshots", &doc.key)?).await?;
            }
        }
        objects.delete(key).await?;
    }
    Ok(deleted.len())
}

/// The newest state of `doc_id` in partition `partition`'s manifests whose last record is
/// before `before` (time travel starts from it): the document's entry and its state.
pub async fn doc_state_before(
    objects: &Objects,
    partition: u32,
    doc_id: &str,
    before: u64,
) -> Result<Option<(ManifestDoc, Vec<u8>)>, SinkError> {
    let listed = objects.list(&manifests(partition)).await?;
    let mut best: Option<ManifestDoc> = None;
    // Newest first; an older manifest can only hold an older state of the document.
    for key in listed.iter().rev() {
        let manifest = read_manifest(objects, key).await?;
        if let Some(doc) = manifest.docs.get(doc_id).filter(|doc| doc.offset < before) {
            best = Some(doc.clone());
            break;
        }
    }
    let Some(doc) = best else { return Ok(None) };
    let object = objects
        .get(&stored_key("snapshots", &doc.key)?)
        .await?
        .ok_or_else(|| corrupt(format!("a manifest names {}, which is missing", doc.key)))?;
    let state = doc.state(&object)?.to_vec();
    Ok(Some((doc, state)))
}

async fn read_manifest(objects: &Objects, key: &Key) -> Result<Manifest, SinkError> {
    let bytes = objects.get(key).await?.ok_or_else(|| corrupt(format!("{key} vanished while read")))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{key}: {e}")))
}

/// Fault injection for the crash tests: `DOCFOLD_FAULT_EXPORT_DELAY_MS` makes an export
/// wait after each document, so that kills land in the middle of exports.
fn fault_delay() -> Option<std::time::Duration> {
    let ms = std::env::var("DOCFOLD_FAULT_EXPORT_DELAY_MS").ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// What [`restore`] did for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub partition: u32,
    pub next_offset: u64,
    pub docs: usize,
}

/// Loads the newest manifest of each of `partitions` into `store` for `job`: the
/// documents' states and checkpoints at the manifest's offsets, with the archive's
/// progress where its files end (a manifest's offset is rarely a file boundary; the
/// archive goes on after its last file, so no row is written twice). A partition without
/// a manifest is left alone. `progress` is called per partition.
///
/// States are fetched and written `batch` at a time; every batch but the last leaves the
/// stored checkpoint where it was, so a restore cut short moves no checkpoint past a
/// state it has not written (the log replays onto what it wrote; the fold dedupes).
pub async fn restore(
    objects: &Objects,
    store: &Store,
    (job, partitions): (&str, u32),
    batch: usize,
    mut progress: impl FnMut(&Restored),
) -> Result<Vec<Restored>, SinkError> {
    let mut restored = Vec::new();
    let archived = super::archive::written_through(objects).await?;
    for partition in 0..partitions {
        let Some(manifest) = latest_manifest(objects, partition).await? else { continue };
        let owner = store.claim(job, partition).await.map_err(store_failed)?;
        let before = store.source_checkpoints(job, partition).await.map_err(store_failed)?;
        let offsets = manifest.source_offsets();
        let done: Vec<(&str, Checkpoint)> = offsets
            .iter()
            .map(|(topic, &next_offset)| {
                let archived_offset = archived.get(&(topic.clone(), partition)).copied().unwrap_or(0);
                (topic.as_str(), Checkpoint { next_offset, archived_offset })
            })
            .collect();
        // Between batches each topic's checkpoint stays where it was (0 where there was none).
        let before: Vec<(&str, Checkpoint)> = done
            .iter()
            .map(|&(topic, _)| {
                let held = before.iter().find(|(t, _)| t == topic).map(|(_, c)| *c);
                (topic, held.unwrap_or_default())
            })
            .collect();
        // By object, so that each is fetched once.
        let mut docs: Vec<(&String, &ManifestDoc)> = manifest.docs.iter().collect();
        docs.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        let mut chunks = docs.chunks(batch.max(1)).peekable();
        if chunks.peek().is_none() {
            store.commit(&owner, &done, &[]).await.map_err(store_failed)?;
        }
        let mut object: Option<(&str, Bytes)> = None;
        while let Some(chunk) = chunks.next() {
            let mut writes = Vec::with_capacity(chunk.len());
            for (doc_id, doc) in chunk {
                if object.as_ref().is_none_or(|(key, _)| *key != doc.key) {
                    let bytes = objects.get(&stored_key("snapshots", &doc.key)?).await?.ok_or_else(|| {
                        corrupt(format!(
                            "manifest of partition {partition} names {}, which is missing",
                            doc.key
                        ))
                    })?;
                    object = Some((&doc.key, bytes));
                }
                let (_, bytes) = object.as_ref().expect("fetched above");
                writes.push(DocWrite {
                    doc_id,
                    version: doc.version,
                    offset: doc.offset,
                    state: StateWrite::Full(doc.state(bytes)?.to_vec()),
                });
            }
            let checkpoints = if chunks.peek().is_some() { &before } else { &done };
            store.commit(&owner, checkpoints, &writes).await.map_err(store_failed)?;
        }
        let done = Restored { partition, next_offset: manifest.next_offset, docs: docs.len() };
        progress(&done);
        restored.push(done);
    }
    Ok(restored)
}
