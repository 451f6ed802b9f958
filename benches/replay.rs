//! Replay (`docfold replay`): about a million ops (the four editing traces, three documents
//! each) on the embedded log, folded once by `docfold run` with the archive on, then
//! replayed into a fresh SQLite store from the log and from the Parquet archive. A bench
//! binary: `cargo bench --bench replay`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use docfold::config::JobConfig;
use docfold::log::LogWriter;
use docfold::log::file::{FileLog, Fsync};
use docfold::lseq::doc_seed;
use docfold::op::{Envelope, encode};
use docfold::pipeline::{self, Until};
use docfold::replay::{self, ReplaySource, Request, Target};
use docfold::trace::{Trace, replay as trace_ops};
use tokio_util::sync::CancellationToken;

const TRACES: [&str; 4] = ["automerge-paper", "rustcode", "sveltecomponent", "friendsforever"];
const COPIES: usize = 3;

fn main() {
    let dir = std::env::temp_dir().join(format!("docfold-bench-replay-{}", std::process::id()));
    let mut config = JobConfig::in_dir(&dir);
    config.projection.url = "".into();
    let log = FileLog::create(&dir.join("log"), &config.log.topic, config.log.partitions).expect("topic");
    let mut writer = log.writer(Fsync::Never, 64 << 20);
    let mut published = 0u64;
    for name in TRACES {
        let path = format!("{}/tests/data/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
        let ops = trace_ops(&Trace::read(Path::new(&path)).expect("trace"), doc_seed(name)).expect("ops").ops;
        for copy in 0..COPIES {
            let doc = format!("{name}-{copy}");
            for op in &ops {
                writer
                    .append(doc.as_bytes(), &encode(&Envelope::new(&doc, "bench", 0, op.clone())))
                    .expect("append");
            }
            published += ops.len() as u64;
        }
    }
    writer.flush().expect("flush");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    rt.block_on(pipeline::run(&config, Until::Idle { idle_ms: 0 }, CancellationToken::new())).expect("run");
    println!(
        "{published} ops over {} partitions; the live run (archive on) took {:.2} s",
        config.log.partitions,
        started.elapsed().as_secs_f64()
    );
    for (label, source) in [("the log", ReplaySource::Log), ("the archive", ReplaySource::Archive)] {
        let fresh = format!("sqlite://{}/fresh-{}.db", dir.display(), label.replace(' ', "-"));
        let request = Request {
            partitions: Vec::new(),
            doc: None,
            from: None,
            to: None,
            source,
            target: Target::Fresh(fresh),
            force: false,
        };
        let started = Instant::now();
        let plan = rt.block_on(replay::plan(&config, &request)).expect("plan");
        let progress = Arc::default();
        let done = rt
            .block_on(replay::replay(&config, &request, &plan, progress, CancellationToken::new()))
            .expect("replay");
        let seconds = started.elapsed().as_secs_f64();
        let folded: u64 = done.iter().map(|s| s.folded).sum();
        println!(
            "replay from {label} into a fresh store: {folded} ops in {seconds:.2} s, {:.0} ops/s",
            folded as f64 / seconds
        );
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}
