//! The state store: one conformance body run against SQLite and PostgreSQL.

use docfold::store::{Checkpoint, DocWrite, LOCAL_TOPIC, StateWrite, Store, StoreError};

use crate::services;

fn doc<'a>(doc_id: &'a str, version: u64, offset: u64, state: &[u8]) -> DocWrite<'a> {
    DocWrite { doc_id, version, offset, state: StateWrite::Full(state.to_vec()) }
}

/// A checkpoint with the archive caught up.
fn at(next_offset: u64) -> Checkpoint {
    Checkpoint { next_offset, archived_offset: next_offset }
}

async fn conformance(url: &str) {
    let store = Store::open(url).await.expect("open and migrate");
    Store::open(url).await.expect("migrations are idempotent").close().await;
    assert_eq!(store.checkpoint("job", 0).await.expect("read"), None);
    assert_eq!(store.load_doc("job", "a").await.expect("read"), None);

    let owner = store.claim("job", 0).await.expect("claim");
    assert_eq!(store.checkpoint("job", 0).await.expect("read"), None, "a claim writes no checkpoint");
    store
        .commit(&owner, &[(LOCAL_TOPIC, at(10))], &[doc("a", 3, 9, b"state a"), doc("b", 1, 4, &[0, 255, 7])])
        .await
        .expect("commit");
    assert_eq!(store.checkpoint("job", 0).await.expect("read"), Some(at(10)));
    let a = store.load_doc("job", "a").await.expect("read").expect("stored");
    assert_eq!((a.partition, a.version, a.offset, a.state.as_slice()), (0, 3, 9, b"state a".as_slice()));
    let b = store.load_doc("job", "b").await.expect("read").expect("stored");
    assert_eq!(b.state, [0, 255, 7], "binary states round-trip");

    // Same offset again (a flush with nothing new) and a later one that rewrites a document.
    store.commit(&owner, &[(LOCAL_TOPIC, at(10))], &[]).await.expect("same offset");
    store
        .commit(&owner, &[(LOCAL_TOPIC, at(25))], &[doc("a", 5, 24, b"state a'")])
        .await
        .expect("later commit");
    assert_eq!(store.load_doc("job", "a").await.expect("read").expect("stored").version, 5);

    // A worker behind the checkpoint (the partition moved on): refused whole.
    let stale = store.commit(&owner, &[(LOCAL_TOPIC, at(20))], &[doc("a", 4, 19, b"stale")]).await;
    assert!(
        matches!(stale, Err(StoreError::Superseded { held: 25, ours: 20, partition: 0, .. })),
        "{stale:?}"
    );
    let a = store.load_doc("job", "a").await.expect("read").expect("stored");
    assert_eq!(
        (a.version, a.state.as_slice()),
        (5, b"state a'".as_slice()),
        "the refused write left nothing"
    );

    // A newer claim fences the old owner off: its commits and checks are refused whole,
    // even ahead of the checkpoint, and the new owner goes on from the checkpoint.
    let newer = store.claim("job", 0).await.expect("claim again");
    assert_eq!(newer.epoch, owner.epoch + 1);
    let zombie = store.commit(&owner, &[(LOCAL_TOPIC, at(40))], &[doc("a", 9, 39, b"zombie")]).await;
    assert!(
        matches!(zombie, Err(StoreError::Fenced { held, ours, .. }) if held == newer.epoch && ours == owner.epoch),
        "{zombie:?}"
    );
    assert!(matches!(store.check_owner(&owner).await, Err(StoreError::Fenced { .. })));
    store.check_owner(&newer).await.expect("the newest owner holds the partition");
    assert_eq!(
        store.checkpoint("job", 0).await.expect("read"),
        Some(at(25)),
        "the claim kept the checkpoint"
    );
    assert_eq!(store.load_doc("job", "a").await.expect("read").expect("stored").version, 5);
    let owner = newer;

    // Jobs and partitions are independent.
    let three = store.claim("job", 3).await.expect("claim");
    store.commit(&three, &[(LOCAL_TOPIC, at(7))], &[doc("c", 1, 6, b"c")]).await.expect("partition 3");
    let other = store.claim("other", 0).await.expect("claim");
    store.commit(&other, &[(LOCAL_TOPIC, at(1))], &[doc("a", 1, 0, b"other a")]).await.expect("other job");
    assert_eq!(
        store.checkpoints("job").await.expect("list"),
        [(0, LOCAL_TOPIC.into(), 25), (3, LOCAL_TOPIC.into(), 7)]
    );
    assert_eq!(store.doc_ids("job").await.expect("list"), ["a", "b", "c"]);
    assert_eq!(store.load_doc("other", "a").await.expect("read").expect("stored").state, b"other a");
    assert_eq!(store.load_doc("job", "c").await.expect("read").expect("stored").partition, 3);

    // The archive's progress travels with the checkpoint, behind the fold's.
    let behind = Checkpoint { next_offset: 30, archived_offset: 12 };
    store.commit(&owner, &[(LOCAL_TOPIC, behind)], &[doc("d", 1, 29, b"d")]).await.expect("archive behind");
    assert_eq!(store.checkpoint("job", 0).await.expect("read"), Some(behind));

    // Several source topics: one checkpoint each, moved together; one behind refuses all.
    let mirrored = "eu-west-1.doc-ops";
    store.commit(&three, &[(LOCAL_TOPIC, at(7)), (mirrored, at(4))], &[]).await.expect("two topics");
    let both = store.source_checkpoints("job", 3).await.expect("read");
    assert_eq!(both, [(LOCAL_TOPIC.to_string(), at(7)), (mirrored.to_string(), at(4))]);
    let stale =
        store.commit(&three, &[(LOCAL_TOPIC, at(9)), (mirrored, at(3))], &[doc("c", 2, 11, b"c'")]).await;
    assert!(
        matches!(&stale, Err(StoreError::Superseded { topic, held: 4, ours: 3, .. }) if topic == mirrored),
        "{stale:?}"
    );
    assert_eq!(store.source_checkpoints("job", 3).await.expect("read"), both, "nothing moved");
    assert_eq!(store.load_doc("job", "c").await.expect("read").expect("stored").version, 1);
    // Documents changed at or after an offset, for disaster-recovery exports.
    let changed = store.docs_changed("job", 0, 10, None, 10).await.expect("changed");
    let changed: Vec<(&str, u64)> = changed.iter().map(|(id, d)| (id.as_str(), d.offset)).collect();
    assert_eq!(changed, [("a", 24), ("d", 29)], "b (offset 4) is older, c is in partition 3");
    // …in pages of a bounded size, each after the last id of the one before.
    let first = store.docs_changed("job", 0, 0, None, 2).await.expect("page");
    let ids = |page: &[(String, _)]| page.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ["a", "b"]);
    let second = store.docs_changed("job", 0, 0, Some("b"), 2).await.expect("page");
    assert_eq!(ids(&second), ["d"]);
    assert!(store.docs_changed("job", 0, 0, Some("d"), 2).await.expect("page").is_empty());
    deltas(&store, &owner).await;
    store.close().await;
}

/// Incremental snapshots: every read applies the deltas written after a full state; the
/// next full state drops them.
async fn deltas(store: &Store, owner: &docfold::store::Owner) {
    use docfold::fold::snapshot;
    use docfold::lseq::{Replica, Sequence};
    use docfold::op::{Envelope, encode};
    let mut editor = Replica::new(1, 7);
    let ops =
        [editor.local_edit(0, 0, "hello"), editor.local_edit(5, 0, " world"), editor.local_edit(0, 1, "")]
            .map(|op| op.expect("edit"));
    let mut state = Sequence::new();
    state.apply(&ops[0]).expect("apply");
    let delta = |op: &docfold::lseq::Op| {
        let mut delta = Vec::new();
        snapshot::push_delta(&mut delta, &encode(&Envelope::new("e", "r", 0, op.clone())));
        delta
    };
    let write = |version, offset, state| DocWrite { doc_id: "e", version, offset, state };
    let text = |doc: &docfold::store::StoredDoc| snapshot::decode(&doc.state).expect("decodes").text();
    let full = StateWrite::Full(snapshot::encode(&state));
    store.commit(owner, &[(LOCAL_TOPIC, at(40))], &[write(5, 39, full)]).await.expect("full");
    let first = delta(&ops[1]);
    let first_len = first.len() as u64;
    store
        .commit(owner, &[(LOCAL_TOPIC, at(41))], &[write(11, 40, StateWrite::Delta(first))])
        .await
        .expect("delta");
    store
        .commit(owner, &[(LOCAL_TOPIC, at(42))], &[write(12, 41, StateWrite::Delta(delta(&ops[2])))])
        .await
        .expect("delta");
    let e = store.load_doc("job", "e").await.expect("read").expect("stored");
    assert_eq!((text(&e).as_str(), e.version, e.offset), ("ello world", 12, 41), "full state + two deltas");
    assert!(e.delta_bytes > first_len, "{}", e.delta_bytes);
    let many = store.load_docs("job", &["e", "a"]).await.expect("read");
    assert!(
        many.iter().any(|(id, doc)| id == "e" && text(doc) == "ello world"),
        "load_docs applies them too"
    );
    let mut ours = store.partition_docs("job", 0, &["e", "a", "nothing"]).await.expect("read");
    ours.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ours.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a", "e"]);
    assert_eq!(text(&ours[1].1), "ello world", "and so do the pipeline's loads");
    let changed = store.docs_changed("job", 0, 41, None, 10).await.expect("changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(text(&changed[0].1), "ello world", "and so do exports");
    for op in &ops[1..] {
        state.apply(op).expect("apply");
    }
    let full = StateWrite::Full(snapshot::encode(&state));
    store.commit(owner, &[(LOCAL_TOPIC, at(43))], &[write(12, 42, full)]).await.expect("full again");
    let e = store.load_doc("job", "e").await.expect("read").expect("stored");
    assert_eq!((text(&e).as_str(), e.delta_bytes), ("ello world", 0), "the full state dropped the deltas");
}

#[tokio::test]
async fn sqlite_store_conformance() {
    let dir = services::temp_dir("store");
    conformance(&format!("sqlite://{}", dir.join("state.db").display())).await;
}

/// The embedded store keeps each partition in a file of its own, so partitions commit in
/// parallel: a writer holding one partition's file does not hold up another partition's
/// commit. Two processes (here two stores on one URL) never both write one partition's
/// file: a claim in one fences the other's commits off, and its refused commit leaves the
/// file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_partitions_commit_in_files_of_their_own() {
    use sqlx::{Connection, Executor, Row};
    let dir = services::temp_dir("store-partitions");
    let url = format!("sqlite://{}", dir.join("state.db").display());
    let (first, second) = (Store::open(&url).await.expect("open"), Store::open(&url).await.expect("open"));
    let zero = first.claim("job", 0).await.expect("claim");
    let one = first.claim("job", 1).await.expect("claim");
    first.commit(&zero, &[(LOCAL_TOPIC, at(3))], &[doc("a", 1, 2, b"a")]).await.expect("commit");
    first.commit(&one, &[(LOCAL_TOPIC, at(5))], &[doc("b", 1, 4, b"b")]).await.expect("commit");
    let file = |p: u32| dir.join("state.partitions").join(format!("partition-{p}.db"));
    let rows = |p: u32| async move {
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", file(p).display())).await.expect("open");
        let docs = sqlx::query("SELECT doc_id, state FROM doc_snapshots ORDER BY doc_id")
            .fetch_all(&mut conn)
            .await
            .expect("read");
        let docs: Vec<(String, Vec<u8>)> = docs.iter().map(|r| (r.get(0), r.get(1))).collect();
        let checkpoints = sqlx::query("SELECT partition_id, next_offset FROM source_checkpoints")
            .fetch_all(&mut conn)
            .await
            .expect("read");
        let checkpoints: Vec<(i64, i64)> = checkpoints.iter().map(|r| (r.get(0), r.get(1))).collect();
        (docs, checkpoints)
    };
    assert_eq!(rows(0).await, (vec![("a".into(), b"a".to_vec())], vec![(0, 3)]), "partition 0's file");
    assert_eq!(rows(1).await, (vec![("b".into(), b"b".to_vec())], vec![(1, 5)]), "partition 1's file");

    // A writer holds partition 0's file: partition 1 still commits at once.
    let mut holder =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", file(0).display())).await.expect("open");
    holder.execute("BEGIN IMMEDIATE").await.expect("take partition 0's write lock");
    let started = std::time::Instant::now();
    first.commit(&one, &[(LOCAL_TOPIC, at(6))], &[doc("b", 2, 5, b"b'")]).await.expect("commit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "waited {:?} for another partition's lock",
        started.elapsed()
    );
    holder.execute("ROLLBACK").await.expect("release");

    // The second store claims partition 1: the first's commits there are refused whole.
    let newer = second.claim("job", 1).await.expect("claim");
    let before = rows(1).await;
    let zombie = first.commit(&one, &[(LOCAL_TOPIC, at(9))], &[doc("b", 3, 8, b"zombie")]).await;
    assert!(matches!(zombie, Err(StoreError::Fenced { .. })), "{zombie:?}");
    assert_eq!(rows(1).await, before, "the fenced store wrote nothing to partition 1's file");
    first.commit(&zero, &[(LOCAL_TOPIC, at(4))], &[]).await.expect("partition 0 is still the first's");
    second
        .commit(&newer, &[(LOCAL_TOPIC, at(9))], &[doc("b", 3, 8, b"b''")])
        .await
        .expect("the new owner commits");
    assert_eq!(first.load_doc("job", "b").await.expect("read").expect("stored").state, b"b''");
    assert_eq!(first.doc_ids("job").await.expect("ids"), ["a", "b"]);

    // The partition count is kept: a log with another one is refused.
    first.expect_partitions(2).expect("first use records the count");
    second.expect_partitions(2).expect("the same count");
    let error = second.expect_partitions(3).expect_err("another count");
    assert!(matches!(error, StoreError::Repartitioned { held: 2, partitions: 3, .. }), "{error}");
    assert!(error.to_string().contains("fresh store"), "{error}");
    first.close().await;
    second.close().await;
}

/// A store written before the file per partition kept every row in its own file: opening
/// it moves each partition's documents, deltas, checkpoints and owner into the partition's
/// file, and nothing is lost or left behind.
#[tokio::test]
async fn an_older_single_file_sqlite_store_moves_into_partition_files() {
    use sqlx::{Connection, Executor, Row};
    let dir = services::temp_dir("store-older");
    let url = format!("sqlite://{}", dir.join("state.db").display());
    Store::open(&url).await.expect("create the schema").close().await;
    std::fs::remove_dir_all(dir.join("state.partitions")).ok();
    let mut older = sqlx::SqliteConnection::connect(&format!("{url}?mode=rw")).await.expect("open");
    older
        .execute(
            "INSERT INTO partition_owners (job, partition_id, owner_epoch, updated_ms) VALUES ('job', 0, 4, 1), ('job', 2, 1, 1); \
             INSERT INTO source_checkpoints VALUES ('job', 0, '', 10, 10, 1), ('job', 2, '', 7, 5, 1); \
             INSERT INTO doc_snapshots VALUES ('job', 'a', 0, 3, 9, x'61', 1, 1), ('job', 'c', 2, 1, 6, x'63', 1, 0); \
             INSERT INTO doc_deltas VALUES ('job', 'a', 9, x'00');",
        )
        .await
        .expect("an older store's rows");
    let store = Store::open(&url).await.expect("open moves the rows");
    assert_eq!(
        store.checkpoints("job").await.expect("read"),
        [(0, LOCAL_TOPIC.into(), 10), (2, LOCAL_TOPIC.into(), 7)]
    );
    assert_eq!(store.doc_ids("job").await.expect("ids"), ["a", "c"]);
    assert_eq!(store.claim("job", 0).await.expect("claim").epoch, 5, "the owner epoch moved too");
    let c = store.partition_docs("job", 2, &["c"]).await.expect("read");
    assert_eq!(c[0].1.state, b"c");
    let a = sqlx::query("SELECT COUNT(*) FROM doc_deltas WHERE doc_id = 'a'")
        .fetch_one(
            &mut sqlx::SqliteConnection::connect(&format!(
                "sqlite://{}",
                dir.join("state.partitions/partition-0.db").display()
            ))
            .await
            .expect("open"),
        )
        .await
        .expect("read");
    assert_eq!(a.get::<i64, _>(0), 1, "the delta moved with its document");
    for table in ["partition_owners", "source_checkpoints", "doc_snapshots", "doc_deltas"] {
        let left =
            sqlx::query(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&mut older).await.expect("count");
        assert_eq!(left.get::<i64, _>(0), 0, "{table} rows left in the store's own file");
    }
    store.close().await;
}

#[tokio::test]
async fn postgres_store_conformance() {
    conformance(&services::postgres_database("store").await).await;
}

#[tokio::test]
async fn a_bad_store_url_says_what_is_expected() {
    let error = Store::open("mysql://x").await.expect_err("unsupported");
    assert!(error.to_string().contains("expected sqlite://PATH or postgres://"), "{error}");
}

/// Several processes (or tasks) opening one fresh SQLite store at once all get it: the
/// migrations do not race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_a_fresh_sqlite_store_all_succeed() {
    for round in 0..5 {
        let dir = services::temp_dir(&format!("store-race-{round}"));
        let url = format!("sqlite://{}", dir.join("state.db").display());
        let opens = (0..4).map(|_| Store::open(&url));
        for opened in futures::future::join_all(opens).await {
            opened.expect("open while another open migrates").close().await;
        }
    }
}

/// A database that turns read-only (a replica during a failover, SQLSTATE 25006) fails a
/// commit with a retryable error, and the commit goes through once it is writable again.
#[tokio::test]
async fn a_read_only_database_is_a_retryable_failure() {
    use sqlx::Executor;
    let url = services::postgres_database("readonly").await;
    let database = url.rsplit('/').next().expect("database name").to_string();
    let store = Store::open(&url).await.expect("open");
    let owner = store.claim("job", 0).await.expect("claim");
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&services::postgres_server()).await.expect("admin");
    let set_read_only = |on: bool| {
        format!(
            "ALTER DATABASE {database} SET default_transaction_read_only = {on}; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
    };
    admin.execute(set_read_only(true).as_str()).await.expect("read-only");
    let mut refused = None;
    for _ in 0..5 {
        // The pool notices its terminated connections and opens read-only ones.
        match store.commit(&owner, &[(LOCAL_TOPIC, at(5))], &[doc("a", 1, 4, b"a")]).await {
            Err(error) if matches!(&error, StoreError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("25006")) =>
            {
                refused = Some(error);
                break;
            }
            _ => {}
        }
    }
    let refused = refused.expect("a read-only database refuses the commit with 25006");
    assert!(refused.is_retryable(), "25006 is routine (failover): {refused}");
    admin.execute(set_read_only(false).as_str()).await.expect("writable");
    let mut committed = false;
    for _ in 0..5 {
        if store.commit(&owner, &[(LOCAL_TOPIC, at(5))], &[doc("a", 1, 4, b"a")]).await.is_ok() {
            committed = true;
            break;
        }
    }
    assert!(committed, "the retried commit goes through");
    assert_eq!(store.checkpoint("job", 0).await.expect("read"), Some(at(5)));
}
