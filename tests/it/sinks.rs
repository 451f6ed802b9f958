//! Sink conformance: one body per sink, run against the embedded backend and the real one
//! (DynamoDB Local, the S3 server, Redis, tansu). Also the archive as other languages read it.

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use docfold::config::{ArchiveConfig, InvalidationsConfig, JobConfig, ObjectsConfig, ProjectionConfig};
use docfold::fold::snapshot;
use docfold::log::file::FileLog;
use docfold::log::kafka::KafkaLog;
use docfold::log::{LogReader, Record, TimestampType};
use docfold::lseq::Sequence;
use docfold::lseq::{Ident, InsertRun, Level, Op, OpId};
use docfold::op::Envelope;
use docfold::sink::archive::PartitionArchive;
use docfold::sink::invalidate::{Invalidation, Invalidator, RedisCache};
use docfold::sink::objects::Objects;
use docfold::sink::projection::{Body, Projection, ProjectionStore, Projections, Written};
use docfold::sink::snapshots;
use docfold::store::{Checkpoint, DocWrite, LOCAL_TOPIC, StateWrite, Store};
use object_store::path::Path as Key;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{BTreeMap, BTreeSet};

use crate::services;

pub fn folder_objects(name: &str) -> ObjectsConfig {
    ObjectsConfig {
        url: format!("file://{}", services::temp_dir(name).display()).into(),
        ..ObjectsConfig::default()
    }
}

pub fn s3_objects(name: &str) -> ObjectsConfig {
    let (endpoint, bucket) = services::s3_bucket();
    ObjectsConfig {
        url: format!("s3://{bucket}/{name}-{}", services::unique()).into(),
        endpoint: Some(endpoint),
        aws_region: Some("us-east-1".into()),
    }
}

async fn objects_conformance(config: ObjectsConfig) {
    let objects = Objects::open(&config).expect("open");
    let key = Key::from("a/b/one.txt");
    assert_eq!(objects.get(&key).await.expect("get"), None, "missing is None");
    objects.put(&key, Bytes::from_static(b"one"), 5 << 20).await.expect("put");
    objects.put(&key, Bytes::from_static(b"uno"), 5 << 20).await.expect("replace");
    assert_eq!(objects.get(&key).await.expect("get").as_deref(), Some(&b"uno"[..]));
    // Larger than a part: a multipart upload, read back whole.
    let big: Vec<u8> = (0..(11 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let big_key = Key::from("a/big.bin");
    objects.put(&big_key, Bytes::from(big.clone()), 5 << 20).await.expect("multipart");
    assert!(objects.get(&big_key).await.expect("get").expect("exists") == big, "multipart round trip");
    objects.put(&Key::from("c/other"), Bytes::new(), 5 << 20).await.expect("put");
    let listed: Vec<String> =
        objects.list(&Key::from("a")).await.expect("list").iter().map(|k| k.to_string()).collect();
    assert_eq!(listed, ["a/b/one.txt", "a/big.bin"], "recursive, sorted, only under the prefix");
}

#[tokio::test]
async fn objects_conformance_local_folder() {
    objects_conformance(folder_objects("objects")).await;
}

#[tokio::test]
async fn objects_conformance_s3() {
    objects_conformance(s3_objects("objects")).await;
}

fn item(doc_id: &str, version: u64, text: &str) -> Projection {
    Projection {
        doc_id: doc_id.into(),
        body: Body::Text(text.into()),
        version,
        generation: 0,
        chars: text.chars().count() as u64,
        updated_ms: 1_700_000_000_000 + version as i64,
        region: "eu-west-1".into(),
        epoch: None,
    }
}

async fn projections_conformance(config: ProjectionConfig, objects: ObjectsConfig) {
    let config = ProjectionConfig { inline_max_bytes: 1000, ..config };
    let projections = Projections::open(&config, Objects::open(&objects).expect("objects"))
        .await
        .expect("open")
        .expect("configured");
    projections.backend().create().await.expect("create");
    projections.backend().create().await.expect("create is idempotent");
    assert_eq!(projections.get_text("a").await.expect("get"), None);

    let wrote = projections.put(vec![item("a", 3, "héllo"), item("b", 1, "x")]).await.expect("put");
    assert_eq!(wrote, Written { written: 2, stale: 0 });
    // Older and equal versions never replace what is stored; newer ones do.
    let wrote = projections.put(vec![item("a", 2, "old"), item("b", 1, "same")]).await.expect("put");
    assert_eq!(wrote, Written { written: 0, stale: 2 });
    let (a, text) = projections.get_text("a").await.expect("get").expect("stored");
    assert_eq!((a.version, a.chars, a.region.as_str(), text.as_str()), (3, 5, "eu-west-1", "héllo"));
    assert_eq!(projections.get_text("b").await.expect("get").expect("stored").1, "x");
    projections.put(vec![item("a", 4, "newer")]).await.expect("put");
    assert_eq!(projections.get_text("a").await.expect("get").expect("stored").1, "newer");
    // A replay's generation goes before the version: generation 1 replaces b at its version,
    // and then a generation-0 writer's newer version no longer does; generation 1's does.
    let replayed = Projection { generation: 1, ..item("b", 1, "repaired") };
    let wrote = projections.put(vec![replayed.clone()]).await.expect("put");
    assert_eq!(wrote, Written { written: 1, stale: 0 }, "a new generation rewrites an equal version");
    let (b, text) = projections.get_text("b").await.expect("get").expect("stored");
    assert_eq!((b.generation, text.as_str()), (1, "repaired"));
    let wrote = projections.put(vec![item("b", 9, "older generation")]).await.expect("put");
    assert_eq!(wrote, Written { written: 0, stale: 1 }, "an older generation never replaces a newer one");
    assert_eq!(projections.put(vec![replayed]).await.expect("put"), Written { written: 0, stale: 1 });
    let wrote =
        projections.put(vec![Projection { generation: 1, ..item("b", 2, "next") }]).await.expect("put");
    assert_eq!(wrote, Written { written: 1, stale: 0 });
    assert_eq!(projections.get_text("b").await.expect("get").expect("stored").1, "next");

    // Too large for an item: the text goes to object storage, the item points at it.
    let big = "é".repeat(800); // 1,600 bytes > 1,000
    projections.put(vec![item("a", 5, &big)]).await.expect("put big");
    let (stored, text) = projections.get_text("a").await.expect("get").expect("stored");
    assert!(
        matches!(&stored.body, Body::Pointer(key) if key.ends_with("00000000000000000005.txt")),
        "{stored:?}"
    );
    assert_eq!((text, stored.chars), (big.clone(), 800));
    // Older texts are deleted once two newer ones exist (a reader may hold the previous one).
    for version in [6, 7] {
        projections.put(vec![item("a", version, &big)]).await.expect("put big");
    }
    let texts = objects_of(&objects, "projections").await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[0].ends_with("6.txt") && texts[1].ends_with("7.txt"), "{texts:?}");
    assert_eq!(projections.get_text("a").await.expect("get").expect("stored").1, big);
    // A document id with every character object keys encode: its text's key round-trips.
    projections.put(vec![item(ODD_DOC_ID, 1, &big)]).await.expect("put big, odd id");
    let (_, text) = projections.get_text(ODD_DOC_ID).await.expect("get odd id").expect("stored");
    assert_eq!(text, big);
}

/// Every key under `prefix`.
async fn objects_of(config: &ObjectsConfig, prefix: &str) -> Vec<String> {
    let objects = Objects::open(config).expect("objects");
    objects.list(&Key::from(prefix)).await.expect("list").iter().map(|k| k.to_string()).collect()
}

/// A document id with every character that object keys percent-encode.
const ODD_DOC_ID: &str = "a/b %#?*[]{}^|~<>\\\"é";

/// Disaster recovery: document ids that object keys encode survive export and restore,
/// and a restored checkpoint's archive progress is what the archive's files cover (the
/// manifest's offset is rarely a file boundary: rows would be archived twice).
#[tokio::test]
async fn snapshots_restore_odd_doc_ids_and_the_archive_end() {
    let objects_url = folder_objects("dr").url;
    let objects = Objects::open(&ObjectsConfig { url: objects_url.clone(), ..ObjectsConfig::default() })
        .expect("objects");
    let dir = services::temp_dir("dr");
    let source = Store::open(&format!("sqlite://{}/source.db", dir.display())).await.expect("store");
    let mut doc = Sequence::default();
    doc.apply(&envelope("x", 1, "hello", false).op).expect("apply");
    let state = snapshot::encode(&doc);
    let docs = [ODD_DOC_ID, "plain"].map(|doc_id| DocWrite {
        doc_id,
        version: 3,
        offset: 24,
        state: StateWrite::Full(state.clone()),
    });
    let owner = source.claim("dr", 0).await.expect("claim");
    source
        .commit(&owner, &[(LOCAL_TOPIC, Checkpoint { next_offset: 25, archived_offset: 10 })], &docs)
        .await
        .expect("commit");
    // The archive's files cover offsets 0..=9; the fold is at 25.
    let file = Key::from_iter([
        "ops",
        "date=2026-12-01",
        "partition=0",
        "00000000000000000000-00000000000000000009.parquet",
    ]);
    objects.put(&file, Bytes::new(), 5 << 20).await.expect("put");
    // One document per batch: the export and the restore page through the partition.
    let manifest =
        snapshots::export(&objects, &source, ("dr", 0), BTreeMap::from([(LOCAL_TOPIC.into(), 25)]), None, 1)
            .await
            .expect("export");
    assert_eq!(manifest.docs.len(), 2);

    let restored = Store::open(&format!("sqlite://{}/restored.db", dir.display())).await.expect("store");
    let done = snapshots::restore(&objects, &restored, ("dr", 1), 1, |_| {}).await.expect("restore");
    assert_eq!(done.len(), 1);
    let checkpoint = restored.checkpoint("dr", 0).await.expect("checkpoint");
    assert_eq!(
        checkpoint,
        Some(Checkpoint { next_offset: 25, archived_offset: 10 }),
        "the archive goes on after its last file"
    );
    for doc_id in [ODD_DOC_ID, "plain"] {
        let stored = restored.load_doc("dr", doc_id).await.expect("load").expect("restored");
        assert_eq!((stored.version, stored.offset, &stored.state), (3, 24, &state), "{doc_id}");
    }

    // Two more exports, "plain" changing in each: with two manifests kept, the oldest goes,
    // and with it the state only it named; every kept manifest's states are there.
    for offset in [30u64, 40] {
        let write = [DocWrite {
            doc_id: "plain",
            version: offset,
            offset: offset - 1,
            state: StateWrite::Full(state.clone()),
        }];
        source
            .commit(&owner, &[(LOCAL_TOPIC, Checkpoint { next_offset: offset, archived_offset: 10 })], &write)
            .await
            .expect("commit");
        let last = snapshots::latest_manifest(&objects, 0).await.expect("manifest");
        snapshots::export(
            &objects,
            &source,
            ("dr", 0),
            BTreeMap::from([(LOCAL_TOPIC.into(), offset)]),
            last,
            256,
        )
        .await
        .expect("export");
    }
    snapshots::collect_garbage(&objects, 0, 2).await.expect("garbage collected");
    let config = ObjectsConfig { url: objects_url, ..ObjectsConfig::default() };
    let manifests = objects_of(&config, "snapshots/manifests").await;
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    let states = objects_of(&config, "snapshots").await;
    // The first export wrote a pack per document (batch 1, by id: the odd one, then
    // "plain"); each later one a pack of "plain".
    let packs: Vec<&String> =
        states.iter().filter(|k| k.starts_with("snapshots/packs/partition=0/")).collect();
    assert_eq!(packs.len(), 3, "plain's state at offset 24 is named by no kept manifest: {packs:?}");
    assert!(
        packs.iter().any(|k| k.ends_with("/00000000000000000025-000000")),
        "the odd document's only state is kept: {packs:?}"
    );
    let done = snapshots::restore(&objects, &restored, ("dr", 1), 256, |_| {})
        .await
        .expect("restore after the collection");
    assert_eq!(done[0].next_offset, 40);

    // A restore cut short (a state object lost) moves no checkpoint past what it wrote.
    let manifest = snapshots::latest_manifest(&objects, 0).await.expect("read").expect("manifest");
    let lost = &manifest.docs["plain"].key;
    objects
        .delete(&docfold::sink::objects::stored_key("snapshots", lost).expect("key"))
        .await
        .expect("delete");
    let fresh = Store::open(&format!("sqlite://{}/cut-short.db", dir.display())).await.expect("store");
    let cut = snapshots::restore(&objects, &fresh, ("dr", 1), 1, |_| {}).await;
    assert!(cut.as_ref().is_err_and(|e| e.to_string().contains("missing")), "{cut:?}");
    assert_eq!(fresh.checkpoint("dr", 0).await.expect("read"), Some(Checkpoint::default()));
    assert!(fresh.load_doc("dr", ODD_DOC_ID).await.expect("load").is_some(), "the first batch is written");
}

/// An export bounded per step (a flush's share) goes on where the last step stopped, writes
/// its manifest only at the end, at the position it began with, and takes the newer state
/// of a document changed while it was under way; a restore of it holds every document.
#[tokio::test]
async fn an_export_goes_on_over_several_steps() {
    let objects_url = folder_objects("dr-steps").url;
    let config = ObjectsConfig { url: objects_url, ..ObjectsConfig::default() };
    let objects = Objects::open(&config).expect("objects");
    let dir = services::temp_dir("dr-steps");
    let source = Store::open(&format!("sqlite://{}/source.db", dir.display())).await.expect("store");
    let owner = source.claim("dr", 0).await.expect("claim");
    let state = |text: &str| {
        let mut doc = Sequence::default();
        doc.apply(&envelope("x", 1, text, false).op).expect("apply");
        snapshot::encode(&doc)
    };
    let write = |doc_id: &'static str, offset: u64, text: &str| DocWrite {
        doc_id,
        version: offset,
        offset,
        state: StateWrite::Full(state(text)),
    };
    let ids = ["d0", "d1", "d2", "d3", "d4"];
    let docs: Vec<DocWrite> = ids.iter().enumerate().map(|(at, id)| write(id, at as u64, id)).collect();
    let at = |next_offset| [(LOCAL_TOPIC, Checkpoint { next_offset, archived_offset: next_offset })];
    source.commit(&owner, &at(10), &docs).await.expect("commit");

    let mut export = snapshots::Export::new(("dr", 0), BTreeMap::from([(LOCAL_TOPIC.into(), 10)]), None);
    assert!(
        export.step(&objects, &source, 2, 1).await.expect("step").is_none(),
        "one pack of two documents, then a pause"
    );
    assert_eq!(objects_of(&config, "snapshots/packs").await.len(), 1);
    assert!(objects_of(&config, "snapshots/manifests").await.is_empty(), "no manifest before the end");
    // Under way, d0 (exported) and d4 (not yet) change.
    source.commit(&owner, &at(14), &[write("d0", 12, "d0'"), write("d4", 13, "d4'")]).await.expect("commit");
    let mut steps = 1;
    let manifest = loop {
        steps += 1;
        if let Some(manifest) = export.step(&objects, &source, 2, 1).await.expect("step") {
            break manifest;
        }
    };
    assert_eq!(steps, 4, "packs [d0 d1] [d2 d3] [d4], then the manifest");
    assert_eq!(objects_of(&config, "snapshots/packs").await.len(), 3);
    assert_eq!(manifest.next_offset, 10, "the manifest is at the position the export began with");
    let offsets: Vec<u64> = ids.iter().map(|id| manifest.docs[*id].offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 13], "d4 went out in its newer state, d0 in the one exported");

    let restored = Store::open(&format!("sqlite://{}/restored.db", dir.display())).await.expect("store");
    snapshots::restore(&objects, &restored, ("dr", 1), 2, |_| {}).await.expect("restore");
    assert_eq!(restored.checkpoint("dr", 0).await.expect("read").map(|c| c.next_offset), Some(10));
    assert_eq!(restored.doc_ids("dr").await.expect("ids"), ids);
    let d4 = restored.load_doc("dr", "d4").await.expect("load").expect("restored");
    assert_eq!(d4.state, state("d4'"));
}

#[tokio::test]
async fn projections_conformance_sqlite() {
    let dir = services::temp_dir("projections");
    let url = format!("sqlite://{}", dir.join("projections.db").display());
    projections_conformance(
        ProjectionConfig { url: url.into(), ..ProjectionConfig::default() },
        folder_objects("proj"),
    )
    .await;
}

#[tokio::test]
async fn projections_conformance_dynamodb() {
    let url = format!("dynamodb://projections-{}", services::unique());
    let config = ProjectionConfig {
        url: url.into(),
        endpoint: Some(services::dynamodb()),
        ..ProjectionConfig::default()
    };
    projections_conformance(config, s3_objects("proj")).await;
}

/// A record at `offset` stamped by the log at `timestamp_ms` (what the archive reads of it).
fn record(offset: u64, timestamp_ms: i64) -> Record {
    let timestamp_type = TimestampType::LogAppend;
    Record {
        topic: "doc-ops".into(),
        offset,
        timestamp_ms,
        timestamp_type,
        key: vec![],
        value: vec![],
        headers: vec![],
    }
}

fn envelope(doc: &str, counter: u64, text: &str, delete: bool) -> Envelope {
    let ident = Ident(vec![Level { digit: 3, site: 7, counter }]);
    let op = if delete {
        Op { id: OpId { site: 7, counter }, inserts: vec![], deletes: vec![ident] }
    } else {
        Op {
            id: OpId { site: 7, counter },
            inserts: vec![InsertRun { start: ident, text: text.into() }],
            deletes: vec![],
        }
    };
    Envelope::new(doc, "us-east-1", 1_000 + counter as i64, op)
}

/// One archive row as analysts see it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub item: i32,
    pub doc_id: String,
    pub kind: String,
    pub text: Option<String>,
    pub ingest_time: i64,
    pub ingest_time_type: String,
}

/// Every row of every archive file under `ops/`.
pub async fn read_archive(objects: &Objects) -> Vec<Row> {
    let mut rows = Vec::new();
    for key in objects.list(&Key::from("ops")).await.expect("list archive") {
        let bytes = objects.get(&key).await.expect("read").expect("listed");
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet").build().expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let column = |name: &str| batch.column_by_name(name).expect(name).clone();
            let (partition, offset, item) = (column("partition"), column("offset"), column("item"));
            let (doc_id, kind, text) = (column("doc_id"), column("kind"), column("text"));
            let (ingest_time, ingest_time_type) = (column("ingest_time"), column("ingest_time_type"));
            let source_topic = column("source_topic");
            for i in 0..batch.num_rows() {
                let text = text.as_string::<i32>();
                rows.push(Row {
                    source_topic: source_topic.as_string::<i32>().value(i).to_string(),
                    partition: partition.as_primitive::<Int32Type>().value(i),
                    offset: offset.as_primitive::<Int64Type>().value(i),
                    item: item.as_primitive::<Int32Type>().value(i),
                    doc_id: doc_id.as_string::<i32>().value(i).to_string(),
                    kind: kind.as_string::<i32>().value(i).to_string(),
                    text: text.is_valid(i).then(|| text.value(i).to_string()),
                    ingest_time: ingest_time.as_primitive::<TimestampMillisecondType>().value(i),
                    ingest_time_type: ingest_time_type.as_string::<i32>().value(i).to_string(),
                });
            }
        }
    }
    rows
}

async fn archive_conformance(objects: ObjectsConfig) {
    let objects = Objects::open(&objects).expect("open");
    let settings = ArchiveConfig { max_file_bytes: 200, ..ArchiveConfig::default() };
    let mut archive = PartitionArchive::new((LOCAL_TOPIC, 2), objects.clone(), settings.clone(), 0);
    assert_eq!(archive.write().await.expect("nothing to write"), None);
    let day = 86_400_000 * 20_000; // 2024-10-04
    for offset in 0..6u64 {
        archive.skip_written(offset, day).await.expect("look");
        let envelope = envelope(&format!("doc-{}", offset % 2), offset + 1, "ab", offset == 4);
        // Offset 3 is not an op (a dead letter): it has no rows.
        archive.push(&record(offset, day), (offset != 3).then_some(&envelope));
        if archive.is_due() {
            archive.write().await.expect("write");
        }
    }
    let last = archive.write().await.expect("write the rest").expect("rows were open");
    assert_eq!(archive.progress(), 6, "everything before 6 is in files");
    assert!(last.key.starts_with("ops/date=2024-10-04/partition=2/"), "{}", last.key);
    let rows = read_archive(&objects).await;
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 4, 5], "every op once, in order, across files");
    assert_eq!((rows[3].kind.as_str(), rows[3].text.as_deref()), ("delete", None));
    assert_eq!((rows[4].doc_id.as_str(), rows[4].text.as_deref()), ("doc-1", Some("ab")));
    assert!(rows.iter().all(|r| (r.ingest_time, r.ingest_time_type.as_str()) == (day, "log_append")));

    // A restart from an older checkpoint adopts the files already written, rows once.
    let mut again = PartitionArchive::new((LOCAL_TOPIC, 2), objects.clone(), settings, 0);
    for offset in 0..6u64 {
        again.skip_written(offset, day).await.expect("look");
        again.push(&record(offset, day), Some(&envelope("doc-0", offset + 1, "zz", false)));
    }
    assert_eq!(again.write().await.expect("write"), None, "all adopted, nothing rewritten");
    assert_eq!(again.progress(), 6);
    assert_eq!(read_archive(&objects).await, rows);
}

#[tokio::test]
async fn archive_conformance_local_folder() {
    archive_conformance(folder_objects("archive")).await;
}

#[tokio::test]
async fn archive_conformance_s3() {
    archive_conformance(s3_objects("archive")).await;
}

/// pyarrow (another language, another Parquet implementation) reads what docfold wrote.
#[tokio::test]
async fn pyarrow_reads_the_archive() {
    let config = folder_objects("pyarrow");
    let objects = Objects::open(&config).expect("open");
    let mut archive = PartitionArchive::new((LOCAL_TOPIC, 0), objects.clone(), ArchiveConfig::default(), 0);
    for offset in 0..1000u64 {
        let envelope = envelope(&format!("doc-{}", offset % 7), offset + 1, "é€x", offset % 10 == 9);
        archive.push(&record(offset, 1_700_000_000_000), Some(&envelope));
    }
    archive.write().await.expect("write");
    let root = config.url.expose().trim_start_matches("file://");
    let out = std::process::Command::new(services::python())
        .arg("tests/python/read_archive.py")
        .arg(root)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    // rows, deletes, distinct docs, characters of inserted text, partitions
    assert_eq!(stdout.trim(), "rows=1000 deletes=100 docs=7 chars=2700 partitions=[0]");
}

async fn invalidations_conformance(config: JobConfig, topic: Box<dyn FnOnce() -> Vec<Vec<u8>>>) {
    let settings = &config.invalidations;
    let redis_url = settings.redis.clone().expect("redis");
    let client = redis::Client::open(redis_url.expose()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to Redis");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&settings.channel).await.expect("subscribe");
    let key = |doc: &str| format!("{}{doc}", settings.key_prefix);
    // The cache holds "old" at version 3 and "fresh" at version 9.
    let _: () = redis::cmd("HSET")
        .arg(key("old"))
        .arg("version")
        .arg(3)
        .arg("text")
        .arg("t")
        .query_async(&mut conn)
        .await
        .expect("hset");
    let _: () = redis::cmd("HSET")
        .arg(key("fresh"))
        .arg("version")
        .arg(9)
        .arg("text")
        .arg("t")
        .query_async(&mut conn)
        .await
        .expect("hset");

    let invalidator = Invalidator::open(&config).expect("open");
    let items = [
        Invalidation { doc_id: "old".into(), version: 4, region: "r1".into(), ..Invalidation::default() },
        // Stamped by a pipeline: the stamps travel on the topic and the channel.
        Invalidation {
            doc_id: "fresh".into(),
            version: 8,
            region: "r1".into(),
            folded_ms: 1_764_806_400_000,
            projected_ms: 1_764_806_400_250,
            generation: 0,
            text: None,
        },
    ];
    invalidator.send(&items).await.expect("send");
    let exists = async |doc: &str| -> u32 {
        redis::cmd("EXISTS").arg(key(doc)).query_async(&mut conn.clone()).await.expect("exists")
    };
    assert_eq!(exists("old").await, 0, "an older cached version is dropped");
    assert_eq!(exists("fresh").await, 1, "a newer cached version stays");
    use futures::StreamExt;
    let mut messages = pubsub.on_message();
    for expected in &items {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next())
            .await
            .expect("published in time")
            .expect("message");
        let got: Invalidation = serde_json::from_slice(message.get_payload_bytes()).expect("json");
        assert_eq!(&got, expected);
    }
    let on_topic: Vec<Invalidation> =
        topic().iter().map(|v| serde_json::from_slice(v).expect("json on the topic")).collect();
    assert_eq!(on_topic, items, "the topic carries the same invalidations");
}

fn redis_settings(name: &str) -> InvalidationsConfig {
    let prefix = format!("test:{name}:{}:", services::unique());
    InvalidationsConfig {
        redis: Some(services::redis().into()),
        channel: format!("{prefix}channel"),
        key_prefix: prefix,
        ..InvalidationsConfig::default()
    }
}

fn read_all(reader: &mut dyn LogReader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for partition in 0..reader.partitions() {
        let mut records = Vec::new();
        reader.read(partition, 0, 1000, &mut records).expect("read");
        out.extend(records.into_iter().map(|r| r.value));
    }
    out
}

/// A preloading cache takes the new text and version, and never an older version over a
/// newer one; an item without a text (too large to preload) drops the entry as before.
#[tokio::test]
async fn a_preloading_cache_never_goes_back() {
    let settings = InvalidationsConfig { preload: true, ..redis_settings("preload") };
    let cache = RedisCache::open(services::redis().as_str(), &settings).expect("open");
    let item = |doc: &str, version, text: Option<&str>| Invalidation {
        doc_id: doc.into(),
        version,
        region: "r".into(),
        text: text.map(str::to_string),
        ..Invalidation::default()
    };
    assert_eq!(cache.invalidate(&[item("d", 5, Some("five"))]).await.expect("preload"), 1);
    assert_eq!(
        cache.invalidate(&[item("d", 4, Some("four"))]).await.expect("older"),
        0,
        "an older version is not written"
    );
    let client = redis::Client::open(services::redis()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let held = async |conn: &mut redis::aio::MultiplexedConnection| -> (Option<String>, Option<String>) {
        redis::cmd("HMGET")
            .arg(cache.key("d"))
            .arg("version")
            .arg("text")
            .query_async(conn)
            .await
            .expect("hmget")
    };
    assert_eq!(held(&mut conn).await, (Some("5".into()), Some("five".into())));
    assert_eq!(cache.invalidate(&[item("d", 6, None)]).await.expect("drop"), 1);
    assert_eq!(held(&mut conn).await, (None, None), "a text too large to preload drops the entry");
    // A replay's new generation replaces an entry at any version; an older generation then
    // writes nothing.
    assert_eq!(cache.invalidate(&[item("d", 7, Some("seven"))]).await.expect("preload"), 1);
    let replayed = Invalidation { generation: 1, ..item("d", 7, Some("seven, repaired")) };
    assert_eq!(cache.invalidate(&[replayed]).await.expect("new generation"), 1);
    assert_eq!(held(&mut conn).await, (Some("7".into()), Some("seven, repaired".into())));
    assert_eq!(cache.invalidate(&[item("d", 8, Some("eight"))]).await.expect("older generation"), 0);
    assert_eq!(held(&mut conn).await.1.as_deref(), Some("seven, repaired"));
}

#[tokio::test]
async fn invalidations_conformance_file_log_and_redis() {
    let dir = services::temp_dir("invalidate");
    let mut config = JobConfig::in_dir(&dir);
    config.log.partitions = 1;
    config.invalidations = redis_settings("file");
    let log_dir = dir.join("log");
    invalidations_conformance(
        config,
        Box::new(move || {
            read_all(&mut FileLog::open(&log_dir, "doc-invalidations").expect("topic").reader())
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_conformance_kafka_and_redis() {
    let brokers = services::kafka();
    let topic = format!("inv-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, (1, 1), &[], &[]).await.expect("create topic");
    let mut config = JobConfig::in_dir(&services::temp_dir("kinvalidate"));
    config.log.url = format!("kafka://{brokers}").into();
    config.invalidations = InvalidationsConfig { topic: topic.clone(), ..redis_settings("kafka") };
    let read = move || {
        let log = KafkaLog::connect(&brokers, &topic, &[]).expect("connect");
        tokio::task::block_in_place(|| read_all(&mut log.reader().expect("reader")))
    };
    invalidations_conformance(config, Box::new(read)).await;
}

/// Distinct (partition, offset) of rows, checking no (partition, offset, item) repeats.
pub fn offsets_once(rows: &[Row]) -> BTreeSet<(i32, i64)> {
    let mut seen = BTreeSet::new();
    for row in rows {
        let at = (row.source_topic.as_str(), row.partition, row.offset, row.item);
        assert!(seen.insert(at), "row {row:?} archived twice");
    }
    seen.into_iter().map(|(_, p, o, _)| (p, o)).collect()
}
