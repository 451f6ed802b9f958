//! Every real editing trace replays, through the codec, to exactly its `endContent`.

use std::path::PathBuf;

use docfold::lseq::{Replica, doc_seed};
use docfold::op::{self, Decoder, Envelope};
use docfold::trace::{Trace, replay, replay_through_codec};

fn trace(name: &str) -> Trace {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces").join(name);
    Trace::read(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn replays_exactly(name: &str) {
    let trace = trace(name);
    let report = replay_through_codec(&trace, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(report.messages >= trace.patch_count(), "at least one message per patch");
    if let Some(d) = report.divergence(&trace.end_content) {
        panic!("{name} diverges at {}: got {:?}, expected {:?}", d.at, d.got, d.want);
    }
}

#[test]
fn automerge_paper_replays_to_end_content() {
    replays_exactly("automerge-paper.json.gz");
}

#[test]
fn rustcode_replays_to_end_content() {
    replays_exactly("rustcode.json.gz");
}

#[test]
fn sveltecomponent_replays_to_end_content() {
    replays_exactly("sveltecomponent.json.gz");
}

#[test]
fn friendsforever_replays_to_end_content() {
    replays_exactly("friendsforever.json.gz");
}

/// The concurrent trace under several document seeds (allocation strategies), merged
/// into editor replicas in opposite orders: all converge to `endContent`.
#[test]
fn friendsforever_converges_in_any_order_and_seed() {
    let trace = trace("friendsforever.json.gz");
    for doc in ["a", "b", "c", "d"] {
        let ops = replay(&trace, doc_seed(doc)).expect("replays").ops;
        let mut forward = Replica::new(doc_seed(doc), 1);
        let mut backward = Replica::new(doc_seed(doc), 2);
        for op in &ops {
            forward.apply(op).expect("applies");
        }
        for op in ops.iter().rev() {
            backward.apply(op).expect("applies");
        }
        forward.check_invariants();
        backward.check_invariants();
        assert_eq!(forward.sequence().entries(), backward.sequence().entries(), "doc {doc}: replicas differ");
        assert!(forward.text() == trace.end_content, "doc {doc}: text differs from endContent");
    }
}

/// Over a real stream, the fold's reusing decoder decodes every message exactly as the
/// reference decoder does.
#[test]
fn the_stream_decoder_matches_the_reference_on_a_real_stream() {
    let trace = trace("friendsforever.json.gz");
    let ops = replay(&trace, doc_seed("stream")).expect("replays").ops;
    let mut decoder = Decoder::new();
    for (i, op) in ops.into_iter().enumerate() {
        let bytes = op::encode(&Envelope::new("stream", "eu", i as i64, op));
        let reference = op::decode(&bytes).expect("valid");
        assert_eq!(decoder.decode(&bytes).expect("valid"), &reference, "message {i}");
    }
}
