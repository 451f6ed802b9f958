//! Time travel (`docfold doc at`): automerge-paper's 259,778 ops to one document (104,852
//! characters at the end) on the embedded log, rebuilt before an offset from the log alone,
//! then, after `docfold run` has stored the document, from its stored state plus the log. A
//! bench binary: `cargo bench --bench history`.

use std::path::Path;
use std::time::Instant;

use docfold::config::JobConfig;
use docfold::log::LogWriter;
use docfold::log::file::{FileLog, Fsync};
use docfold::lseq::doc_seed;
use docfold::op::{Envelope, encode};
use docfold::pipeline::{self, Until};
use docfold::trace::{Trace, replay};
use tokio_util::sync::CancellationToken;

fn main() {
    let path = format!("{}/tests/data/traces/automerge-paper.json.gz", env!("CARGO_MANIFEST_DIR"));
    let trace = Trace::read(Path::new(&path)).expect("trace");
    let ops = replay(&trace, doc_seed("automerge-paper")).expect("replay").ops;
    let dir = std::env::temp_dir().join(format!("docfold-bench-history-{}", std::process::id()));
    let config = JobConfig::in_dir(&dir);
    let log = FileLog::create(&dir.join("log"), &config.log.topic, config.log.partitions).expect("topic");
    let mut writer = log.writer(Fsync::Never, 64 << 20);
    for op in &ops {
        writer.append(b"paper", &encode(&Envelope::new("paper", "bench", 0, op.clone()))).expect("append");
    }
    writer.flush().expect("flush");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let at = |label: &str, offset: u64| {
        let started = Instant::now();
        let doc = rt
            .block_on(docfold::history::doc_at(
                &config,
                "paper",
                docfold::history::At::Offset(offset),
                docfold::replay::ReplaySource::Log,
            ))
            .expect("doc at");
        println!(
            "doc at {label}: {} characters, version {}, from {} + {} ops in {:.0} ms",
            doc.doc.state.len(),
            doc.doc.version,
            doc.from,
            doc.folded,
            started.elapsed().as_secs_f64() * 1000.0
        );
    };
    let end = ops.len() as u64;
    at("the end, from the log", end);
    at("the middle, from the log", end / 2);
    rt.block_on(pipeline::run(&config, Until::Idle { idle_ms: 0 }, CancellationToken::new())).expect("run");
    at("the end, after a run", end);
    std::fs::remove_dir_all(&dir).expect("clean up");
}
