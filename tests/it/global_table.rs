//! `projection.writer = "leader"`: two regions' folds share one DynamoDB table (a global
//! table's stand-in, on DynamoDB Local). Only the lease holder writes; an item is never
//! replaced by a deposed leader's epoch, nor by a version that is not higher (a new leader
//! that has not seen every op yet).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use docfold::config::ProjectionConfig;
use docfold::fold::Doc;
use docfold::lseq::Replica;
use docfold::region::role::{Role, WriteRefused};
use docfold::sink::objects::Objects;
use docfold::sink::projection::{LeaderGate, ProjectionStore, Projections};
use docfold::sink::{Changes, Sink};

use crate::services;
use crate::sinks::folder_objects;

/// A region's view of its own role: leading at the epoch in `epoch`, or not (0).
fn gate(region: &'static str, epoch: Arc<AtomicU64>) -> LeaderGate {
    Arc::new(move || match epoch.load(Ordering::SeqCst) {
        0 => Err(WriteRefused { region: region.into(), role: Role::Standby, lease: None }),
        e => Ok(e),
    })
}

/// The document after `chars` characters typed.
fn doc(chars: usize) -> Doc {
    let mut editor = Replica::new(1, 7);
    for i in 0..chars {
        editor.local_edit(i, 0, "x").expect("type");
    }
    Doc { state: editor.sequence().clone(), version: chars as u64, ..Doc::default() }
}

async fn write(projections: &Projections, doc: &Doc) -> u64 {
    let docs = [("d", doc)];
    let changes = Changes { partition: 0, docs: &docs, dead: &[], folded_at: None, generation: 0 };
    projections.write(&changes).await.expect("write")
}

#[tokio::test]
async fn only_the_leader_writes_the_global_table_and_never_backwards() {
    let config = ProjectionConfig {
        url: format!("dynamodb://global-{}", services::unique()).into(),
        endpoint: Some(services::dynamodb()),
        ..ProjectionConfig::default()
    };
    let open = || async {
        let objects = Objects::open(&folder_objects("global")).expect("objects");
        Projections::open(&config, objects).await.expect("open").expect("configured")
    };
    let (a, b) = (open().await, open().await);
    a.backend().create().await.expect("table");
    let (a_epoch, b_epoch) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicU64::new(0)));
    a.write_as_leader(gate("us-east-1", a_epoch.clone()));
    b.write_as_leader(gate("eu-west-1", b_epoch.clone()));
    let stored = || async { a.backend().get("d").await.expect("read").expect("written") };

    assert_eq!(write(&a, &doc(10)).await, 1, "the leader writes");
    assert_eq!(write(&b, &doc(12)).await, 0, "a standby does not");
    assert_eq!((stored().await.version, stored().await.epoch), (10, Some(1)));

    // eu-west-1 takes the lease at epoch 2 without us-east-1's last ops.
    b_epoch.store(2, Ordering::SeqCst);
    assert_eq!(write(&b, &doc(8)).await, 0, "fewer ops never overwrite more");
    assert_eq!(write(&b, &doc(12)).await, 1);
    // us-east-1, cut off, still believes it leads at epoch 1.
    assert_eq!(write(&a, &doc(15)).await, 0, "a deposed leader is fenced by the epoch");
    let item = stored().await;
    assert_eq!((item.version, item.epoch, item.chars), (12, Some(2), 12));
}

#[test]
fn the_leader_writer_needs_a_dynamodb_table_and_a_lease() {
    let dir = services::temp_dir("global-config");
    let file = dir.join("job.toml");
    std::fs::write(&file, "job = \"main\"\n[projection]\nurl = \"sqlite://p.db\"\nwriter = \"leader\"\n")
        .expect("write");
    let error = docfold::config::JobConfig::load(&file).expect_err("sqlite is no global table").to_string();
    assert!(error.contains("projection.writer") && error.contains("dynamodb://"), "{error}");
}
