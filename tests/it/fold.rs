//! The fold's storage: a state restored from its snapshot at any point, then fed the rest
//! of the ops, equals the state that saw every op (arroyo's restore-at-k smoke test).

use docfold::fold::snapshot::{self, SnapshotError};
use docfold::fold::{Doc, Folded, PartitionFold};
use docfold::lseq::Sequence;
use docfold::op::{Envelope, encode};
use proptest::prelude::*;

use crate::lseq_props::{delivery, run, step};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Regions fold the same ops in different orders (mirrors deliver them as they come,
    /// with repeats): a document's version must depend on the ops, not on that order, or
    /// two regions' projections of one op set could not be compared (`projection.version`).
    #[test]
    fn a_documents_version_is_the_same_in_any_order_the_ops_arrive(
        steps in prop::collection::vec(step(), 1..60),
        first in prop::collection::vec(any::<u32>(), 1..60),
        second in prop::collection::vec(any::<u32>(), 1..60),
    ) {
        let (_, ops) = run(3, &steps);
        let fold = |order: &[u32]| {
            let mut fold = PartitionFold::new();
            fold.insert("d".into(), Doc::default());
            for (i, op) in delivery(&ops, order).into_iter().enumerate() {
                fold.fold(i as u64, &encode(&Envelope::new("d", "r", 0, op))).expect("folds");
            }
            let doc = fold.get("d").expect("held");
            (doc.version, doc.state.text())
        };
        prop_assert_eq!(fold(&first), fold(&second));
    }

    /// Incremental snapshots: a full state at k, deltas of the records k..j in random
    /// pieces, then the tail j..: the same state, byte for byte, as the fold of every op.
    #[test]
    fn a_full_state_plus_deltas_plus_the_tail_equals_the_full_fold(
        steps in prop::collection::vec(step(), 1..60),
        order in prop::collection::vec(any::<u32>(), 1..60),
        cuts in (0.0..=1.0f64, 0.0..=1.0f64),
        pieces in prop::collection::vec(1usize..8, 1..10),
    ) {
        let (_, ops) = run(3, &steps);
        let ops = delivery(&ops, &order);
        let mut full = Sequence::new();
        for op in &ops {
            full.apply(op).expect("valid op");
        }
        let (a, b) = ((cuts.0 * ops.len() as f64) as usize, (cuts.1 * ops.len() as f64) as usize);
        let (k, j) = (a.min(b), a.max(b));
        let mut head = Sequence::new();
        for op in &ops[..k] {
            head.apply(op).expect("valid op");
        }
        let records: Vec<Vec<u8>> = ops[k..j].iter().map(|op| encode(&Envelope::new("d", "r", 0, op.clone()))).collect();
        let mut deltas = Vec::new();
        let mut rest = records.as_slice();
        for &size in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at(size.min(rest.len()));
            let mut delta = Vec::new();
            piece.iter().for_each(|record| snapshot::push_delta(&mut delta, record));
            deltas.push(delta);
            rest = after;
        }
        let loaded = snapshot::apply_deltas(&snapshot::encode(&head), &deltas).expect("deltas apply");
        let mut restored = snapshot::decode(&loaded).expect("decodes");
        for op in &ops[j..] {
            restored.apply(op).expect("valid op");
        }
        restored.check_invariants();
        prop_assert_eq!(snapshot::encode(&restored), snapshot::encode(&full), "same state, same bytes");
    }

    #[test]
    fn restore_at_any_point_then_the_tail_equals_the_full_fold(
        steps in prop::collection::vec(step(), 1..60),
        order in prop::collection::vec(any::<u32>(), 1..60),
        cut in 0.0..=1.0f64,
    ) {
        let (_, ops) = run(3, &steps);
        let ops = delivery(&ops, &order);
        let mut full = Sequence::new();
        for op in &ops {
            full.apply(op).expect("valid op");
        }
        let k = (cut * ops.len() as f64) as usize;
        let mut head = Sequence::new();
        for op in &ops[..k] {
            head.apply(op).expect("valid op");
        }
        let mut restored = snapshot::decode(&snapshot::encode(&head)).expect("own snapshot decodes");
        prop_assert_eq!(restored.entries(), head.entries());
        for op in &ops[k..] {
            restored.apply(op).expect("valid op");
        }
        restored.check_invariants();
        prop_assert_eq!(restored.text(), full.text());
        prop_assert_eq!(restored.entries(), full.entries());
        prop_assert_eq!(restored.pending_tombstones(), full.pending_tombstones());
        prop_assert_eq!(snapshot::encode(&restored), snapshot::encode(&full), "same state, same bytes");
        // Re-delivering everything to the restored state changes nothing (seen counters survived).
        for op in &ops {
            prop_assert!(!restored.apply(op).expect("valid op").changed());
        }
    }

    #[test]
    fn damaged_snapshots_are_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = snapshot::decode(&bytes);
    }
}

#[test]
fn a_truncated_or_foreign_snapshot_is_refused() {
    let (replicas, _) = run(2, &(0..30).map(|_| step_edit()).collect::<Vec<_>>());
    let bytes = snapshot::encode(replicas[0].sequence());
    assert!(bytes.len() > 20);
    let cut = snapshot::decode(&bytes[..bytes.len() - 3]);
    assert!(cut.is_err(), "a cut snapshot must not load: {cut:?}");
    let mut future = bytes.clone();
    future[1] = 9; // field 1 (format_version) = 9
    assert!(matches!(snapshot::decode(&future), Err(SnapshotError::UnknownFormat { found: 9 })));
}

fn step_edit() -> crate::lseq_props::Step {
    crate::lseq_props::Step::Edit { replica: 0, pos: 1.0, delete: 0, text: "ab".into() }
}

#[test]
fn the_partition_fold_asks_for_cold_documents_counts_versions_and_evicts_clean_ones() {
    let (_, ops) = run(1, &(0..3).map(|_| step_edit()).collect::<Vec<_>>());
    let record = |doc: &str, op: usize| encode(&Envelope::new(doc, "r", 0, ops[op].clone()));
    let mut fold = PartitionFold::new();
    assert_eq!(fold.fold(0, &record("a", 0)).expect("decodes"), Folded::NeedDoc("a".into()));
    fold.insert("a".into(), Doc::default());
    assert_eq!(fold.fold(0, &record("a", 0)).expect("folds"), Folded::Applied { changed: true });
    assert_eq!(fold.fold(1, &record("a", 0)).expect("folds"), Folded::Applied { changed: false });
    assert_eq!(fold.get("a").expect("held").version, 2, "two characters inserted; a duplicate adds none");
    assert_eq!(fold.get("a").expect("held").offset, 1);
    fold.insert("b".into(), Doc::default());
    fold.fold(2, &record("b", 1)).expect("folds");
    assert!(fold.fold(3, b"not an op").is_err(), "garbage is an error");
    assert_eq!(fold.dirty_count(), 2);
    assert_eq!(fold.evict(0, usize::MAX), 0, "dirty documents are never evicted");
    fold.mark_clean();
    fold.fold(4, &record("b", 2)).expect("folds");
    assert_eq!(fold.evict(1, usize::MAX), 1);
    assert!(fold.get("a").is_none() && fold.get("b").is_some(), "the least recently touched clean one goes");
}
