//! Home moves under load, on three embedded regions in home mode: a `docfold run` per region
//! keeps its home's group lease; a producer per region types into shared documents through
//! `HomeWriter` (each record to its document's home) while `docfold region move-doc` moves
//! the documents' homes at seeded moments (`DOCFOLD_HOME_SEED`). Per document and epoch one
//! region took the writes, and every write of an epoch was acked before the first of the
//! next was appended; after mirroring, every region holds the reference fold of every op.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docfold::config::JobConfig;
use docfold::log::{LogError, LogWriter, Record};
use docfold::lseq::{Replica, doc_seed};
use docfold::op::{Envelope, encode};
use docfold::region::home::group_scope;
use docfold::region::home_writer::HomeWriter;
use docfold::region::lease::LeaseStore;
use docfold::region::leases::Leases;
use docfold::store::now_ms;

use crate::services;
use crate::world::{KillOnDrop, docfold, spawn, wait_until};

const REGIONS: [&str; 3] = ["a", "b", "c"];
const DOCS: [&str; 3] = ["d0", "d1", "d2"];

fn job_file(dir: &Path, name: &str) -> PathBuf {
    let peers: Vec<String> = REGIONS.iter().filter(|r| **r != name).map(|r| format!("{r:?}")).collect();
    let d = dir.display();
    let text = format!(
        "job = \"main\"\n[log]\nurl = \"file://{d}/{name}/log\"\npartitions = 2\n\
         [store]\nurl = \"sqlite://{d}/{name}/state.db\"\n[objects]\nurl = \"file://{d}/{name}/objects\"\n\
         [projection]\nurl = \"sqlite://{d}/{name}/projections.db\"\n\
         [region]\nname = \"{name}\"\npeers = [{}]\nmode = \"home\"\nleases = \"sqlite://{d}/leases.db\"\n\
         ttl_ms = 900\nskew_ms = 150\n",
        peers.join(", ")
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// One region's log writer, shared by the producers of every region (the embedded log has
/// one writer per topic).
#[derive(Clone)]
struct Shared(Arc<Mutex<Box<dyn LogWriter>>>);

impl LogWriter for Shared {
    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.0.lock().expect("writer").append(key, value)
    }

    fn copy(&mut self, partition: u32, record: &Record) -> Result<(), LogError> {
        self.0.lock().expect("writer").copy(partition, record)
    }

    fn flush(&mut self) -> Result<(), LogError> {
        self.0.lock().expect("writer").flush()
    }
}

/// One acked write: its document, the region and home epoch it went to, when it was handed
/// to that region's log and when it was acked.
struct Ack {
    doc: &'static str,
    region: String,
    epoch: u64,
    appended: Instant,
    acked: Instant,
}

/// Region `x`'s producer: keystrokes round the documents, each appended and flushed (an ack)
/// before the next, until `stop`. Returns the acks and the ops.
fn produce(
    x: usize,
    config: &JobConfig,
    leases: Leases,
    writers: &HashMap<String, Shared>,
    stop: &AtomicBool,
    rt: &tokio::runtime::Handle,
) -> (Vec<Ack>, Vec<Envelope>) {
    let region = config.region.clone().expect("region");
    let writers = writers.clone();
    let open = Box::new(move |to: &str| Ok(Box::new(writers[to].clone()) as Box<dyn LogWriter>));
    let mut writer = HomeWriter::new(rt.clone(), leases, "main", region, REGIONS[x], open);
    let mut editors: Vec<Replica> = DOCS.iter().map(|d| Replica::new(doc_seed(d), 10 + x as u64)).collect();
    let (mut acks, mut sent_ops) = (Vec::new(), Vec::new());
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let d = i % DOCS.len();
        let editor = &mut editors[d];
        let op = editor.local_edit(editor.len(), 0, &REGIONS[x].repeat(2)).expect("type");
        let envelope = Envelope::new(DOCS[d], REGIONS[x], now_ms(), op);
        writer.append(DOCS[d].as_bytes(), &encode(&envelope)).expect("a home takes the write");
        writer.flush().expect("flush");
        let (region, epoch, appended) = writer.last_route().expect("routed");
        acks.push(Ack { doc: DOCS[d], region: region.into(), epoch, appended, acked: Instant::now() });
        sent_ops.push(envelope);
        std::thread::sleep(Duration::from_millis(5));
    }
    (acks, sent_ops)
}

#[test]
fn homes_move_under_load_without_loss_or_two_homes() {
    let seed = std::env::var("DOCFOLD_HOME_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x40e);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = services::temp_dir("homes");
    let files: Vec<PathBuf> = REGIONS.iter().map(|r| job_file(&dir, r)).collect();
    for file in &files {
        let out = docfold(&["setup", "--config"], file);
        assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let leases_url = format!("sqlite://{}/leases.db", dir.display());
    let leases = rt.block_on(Leases::open(&leases_url, None, None)).expect("lease store");
    let runs: Vec<KillOnDrop> = (REGIONS.iter().zip(&files))
        .map(|(r, f)| {
            spawn(&["run", "--config", &f.display().to_string()], &dir.join(format!("run-{r}.log")))
        })
        .collect();
    wait_until("every home holds its group lease", Duration::from_secs(30), || {
        REGIONS.iter().all(|r| {
            let lease = rt.block_on(leases.read(&group_scope("main", r))).ok().flatten();
            lease.is_some_and(|l| l.holder == *r && l.expires_ms > now_ms())
        })
    });
    let out = docfold(&["region", "status", "--config"], &files[0]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("role:    takes the writes of a's documents")
            && status.contains("home:    the writes of b's documents are taken by b at epoch 1"),
        "{status}"
    );
    let configs: Vec<JobConfig> = files.iter().map(|f| JobConfig::load(f).expect("config")).collect();
    let writers: HashMap<String, Shared> = (REGIONS.iter().zip(&configs))
        .map(|(r, c)| {
            let writer = docfold::sink::topic_writer(c, "doc-ops").expect("log writer");
            (r.to_string(), Shared(Arc::new(Mutex::new(writer))))
        })
        .collect();
    let stop = AtomicBool::new(false);
    let mut moves = Vec::new();
    let produced = std::thread::scope(|scope| {
        let producers: Vec<_> = (0..REGIONS.len())
            .map(|x| {
                let leases = rt.block_on(Leases::open(&leases_url, None, None)).expect("lease store");
                let (config, writers, stop, handle) = (&configs[x], &writers, &stop, rt.handle());
                scope.spawn(move || produce(x, config, leases, writers, stop, handle))
            })
            .collect();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
            let (doc, to) =
                (DOCS[rng.random_range(0..DOCS.len())], REGIONS[rng.random_range(0..REGIONS.len())]);
            let out = docfold(&["region", "move-doc", doc, to, "--config"], &files[0]);
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "move {doc} to {to}: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("seed {seed}: {}", said.trim());
            moves.push((doc, to));
        }
        std::thread::sleep(Duration::from_millis(1_500));
        stop.store(true, Ordering::Relaxed);
        producers.into_iter().map(|p| p.join().expect("producer")).collect::<Vec<_>>()
    });
    // `docfold produce` routes by the same writer: a new document is homed where it is first
    // written (the test's writers let go of the logs first).
    drop(writers);
    let line = r#"{"schema_version":1,"doc_id":"fresh","origin_region":"c","client_time_ms":0,"op":{"id":{"site":"00000000000000c9","counter":1},"inserts":[{"start":[[5,"00000000000000c9",1]],"text":"new"}],"deletes":[]}}"#;
    std::fs::write(dir.join("fresh.jsonl"), format!("{line}\n")).expect("write");
    let out = docfold(&["produce", &dir.join("fresh.jsonl").display().to_string(), "--config"], &files[2]);
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("1 records to each document's home region"), "{said}{err}");
    let home = rt.block_on(docfold::region::home::read(&leases, "main", "fresh")).expect("read");
    assert_eq!(home.map(|h| (h.region, h.epoch)), Some(("c".to_string(), 1)), "placed by its first writer");
    drop(runs);
    let (acks, ops): (Vec<Ack>, Vec<Envelope>) =
        produced.into_iter().fold((vec![], vec![]), |mut all, (a, o)| {
            all.0.extend(a);
            all.1.extend(o);
            all
        });

    // One home per document and epoch, and the epochs one after another in time.
    let mut epochs: BTreeMap<(&str, u64), (BTreeSet<&str>, Instant, Instant)> = BTreeMap::new();
    for ack in &acks {
        let entry = epochs.entry((ack.doc, ack.epoch)).or_insert((BTreeSet::new(), ack.appended, ack.acked));
        entry.0.insert(&ack.region);
        entry.1 = entry.1.min(ack.appended);
        entry.2 = entry.2.max(ack.acked);
    }
    for ((doc, epoch), (regions, _, _)) in &epochs {
        assert_eq!(regions.len(), 1, "seed {seed}: {doc} at epoch {epoch} was taken by {regions:?}");
    }
    let mut pauses = Vec::new();
    for pair in epochs.iter().collect::<Vec<_>>().windows(2) {
        let (((doc, e1), (_, _, last_acked)), ((next_doc, e2), (_, first_appended, _))) = (pair[0], pair[1]);
        if doc == next_doc {
            assert!(
                last_acked < first_appended,
                "seed {seed}: {doc}: epoch {e1} still acked after epoch {e2} began"
            );
            pauses.push(*first_appended - *last_acked);
        }
    }
    eprintln!("seed {seed}: {} acked writes; writes paused by each move: {pauses:?}", acks.len());
    let moved: BTreeSet<&str> = moves.iter().map(|(d, _)| *d).collect();
    let epochs_seen = epochs.keys().filter(|(d, _)| moved.contains(d)).count();
    assert!(epochs_seen > moved.len(), "seed {seed}: writes went on across the moves ({epochs:?})");

    // Mirror everything everywhere, fold, and compare with the reference fold.
    for (from, to) in
        REGIONS.iter().flat_map(|f| REGIONS.iter().filter(move |t| *t != f).map(move |t| (f, t)))
    {
        let (source, target) = (dir.join(format!("{from}.toml")), dir.join(format!("{to}.toml")));
        let args = ["mirror", "--exit-when-idle", "--from", &source.display().to_string(), "--config"];
        let out = docfold(&args, &target);
        assert!(out.status.success(), "mirror {from} → {to}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (name, file) in REGIONS.iter().zip(&files) {
        let out = docfold(&["run", "--exit-when-idle", "--config"], file);
        assert!(out.status.success(), "fold {name}: {}", String::from_utf8_lossy(&out.stderr));
        for doc in DOCS {
            let mut reference = Replica::new(doc_seed(doc), 999);
            for envelope in ops.iter().filter(|e| e.doc_id == doc) {
                reference.apply(&envelope.op).expect("applies");
            }
            let out = docfold(&["doc", "show", doc, "--text-only", "--config"], file);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text == reference.text(),
                "seed {seed}: {name}'s {doc} is not the fold of every acked op ({} against {} characters)",
                text.chars().count(),
                reference.len()
            );
        }
    }
}
