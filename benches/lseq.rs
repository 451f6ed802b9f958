//! LSEQ core on the automerge-paper trace (259,778 patches, one message each):
//! - remote_stream: decode every message and fold it into a fresh state (what a partition
//!   worker does);
//! - decode: decode only;
//! - batch_apply: fold already-decoded ops;
//! - local_edit: generate the ops with an editor replica.
//!
//! Run: `cargo bench --bench lseq`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use docfold::lseq::{Replica, Sequence, doc_seed};
use docfold::op::{self, Decoder, Envelope};
use docfold::trace::{Trace, replay};

const DOC: &str = "automerge-paper";

fn trace() -> Trace {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces/automerge-paper.json.gz");
    Trace::read(&path).expect("trace")
}

fn benches(c: &mut Criterion) {
    let trace = trace();
    let ops = replay(&trace, doc_seed(DOC)).expect("replay").ops;
    // Messages back to back in one buffer, as a consumer receives a fetched batch.
    let mut buffer = Vec::new();
    let mut bounds = Vec::with_capacity(ops.len());
    for op in &ops {
        let start = buffer.len();
        buffer.extend_from_slice(&op::encode(&Envelope::new(DOC, "local", 0, op.clone())));
        bounds.push(start..buffer.len());
    }
    let messages: Vec<&[u8]> = bounds.into_iter().map(|r| &buffer[r]).collect();

    let mut group = c.benchmark_group("automerge-paper");
    group.sample_size(10).measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("remote_stream", |b| {
        b.iter(|| {
            let mut state = Sequence::new();
            let mut decoder = Decoder::new();
            for bytes in &messages {
                let envelope = decoder.decode(bytes).expect("valid message");
                state.apply(&envelope.op).expect("applies");
            }
            black_box(state.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            for bytes in &messages {
                black_box(decoder.decode(bytes).expect("valid message"));
            }
        })
    });
    group.bench_function("batch_apply", |b| {
        b.iter(|| {
            let mut state = Sequence::new();
            for op in &ops {
                state.apply(op).expect("applies");
            }
            black_box(state.len())
        })
    });
    group.throughput(Throughput::Elements(trace.patch_count() as u64));
    group.bench_function("local_edit", |b| {
        b.iter(|| {
            let mut replica = Replica::new(doc_seed(DOC), 1);
            for patch in trace.txns.iter().flat_map(|t| &t.patches) {
                black_box(replica.local_edit(patch.0, patch.1, &patch.2).expect("edit"));
            }
            black_box(replica.len())
        })
    });
    group.finish();
}

criterion_group!(lseq, benches);
criterion_main!(lseq);
