//! Convergence properties of the LSEQ core: replicas editing concurrently, ops delivered
//! in any order with duplicates and deletes before their inserts.

use docfold::lseq::{
    ApplyError, DepthExhausted, EditError, Ident, InsertRun, Level, MAX_COUNTER, MAX_DEPTH, MAX_EDIT_DELETES,
    MAX_PENDING_TOMBSTONES, Op, OpError, OpId, Replica, Rng, Sequence, allocate,
};
use proptest::prelude::*;

/// One step of a random editing session.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// Replica `replica` edits at `pos` (scaled to its length), deleting up to `delete`.
    Edit { replica: usize, pos: f64, delete: usize, text: String },
    /// Replica `replica` receives the op with index `op` (scaled to the ops so far).
    Receive { replica: usize, op: f64 },
}

pub(crate) fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..5usize, 0.0..=1.0f64, 0..4usize, "[a-zé€😀]{0,6}")
            .prop_map(|(replica, pos, delete, text)| Step::Edit { replica, pos, delete, text }),
        2 => (0..5usize, 0.0..1.0f64).prop_map(|(replica, op)| Step::Receive { replica, op }),
    ]
}

/// Runs the session; returns the replicas and every op made.
pub(crate) fn run(replica_count: usize, steps: &[Step]) -> (Vec<Replica>, Vec<Op>) {
    let mut replicas: Vec<Replica> = (0..replica_count).map(|i| Replica::new(7, 100 + i as u64)).collect();
    let mut ops: Vec<Op> = Vec::new();
    for step in steps {
        match step {
            Step::Edit { replica, pos, delete, text } => {
                let r = &mut replicas[replica % replica_count];
                let pos = (pos * r.len() as f64) as usize;
                let delete = (*delete).min(r.len() - pos);
                if delete == 0 && text.is_empty() {
                    continue;
                }
                ops.push(r.local_edit(pos, delete, text).expect("edit within the document"));
            }
            Step::Receive { replica, op } if !ops.is_empty() => {
                let op = &ops[(op * ops.len() as f64) as usize];
                replicas[replica % replica_count].apply(op).expect("valid op");
            }
            Step::Receive { .. } => {}
        }
    }
    (replicas, ops)
}

/// `ops` in a shuffled order with some repeated (seeded by `order`).
pub(crate) fn delivery(ops: &[Op], order: &[u32]) -> Vec<Op> {
    let mut keyed: Vec<(u32, &Op)> = ops.iter().zip(order.iter().cycle()).map(|(op, k)| (*k, op)).collect();
    let repeats: Vec<(u32, &Op)> =
        keyed.iter().filter(|(k, _)| k % 3 == 0).map(|(k, op)| (k / 3, *op)).collect();
    keyed.extend(repeats);
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, op)| op.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replicas_converge_in_any_delivery_order(
        replica_count in 2..=5usize,
        steps in prop::collection::vec(step(), 1..60),
        orders in prop::collection::vec(prop::collection::vec(any::<u32>(), 1..40), 6),
    ) {
        let (mut replicas, ops) = run(replica_count, &steps);
        let mut fold = Sequence::new();
        for op in delivery(&ops, &orders[5]) {
            fold.apply(&op).expect("valid op");
        }
        fold.check_invariants();
        for (i, replica) in replicas.iter_mut().enumerate() {
            for op in delivery(&ops, &orders[i]) {
                replica.apply(&op).expect("valid op");
            }
            replica.check_invariants();
            prop_assert_eq!(replica.text(), fold.text(), "replica {} text", i);
            prop_assert_eq!(replica.sequence().entries(), fold.entries(), "replica {} identifiers", i);
        }
        prop_assert_eq!(fold.pending_tombstones(), 0, "every delete found its insert");
        let entries = fold.entries();
        prop_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "text order is identifier order");
    }

    #[test]
    fn applying_an_op_twice_changes_nothing(steps in prop::collection::vec(step(), 1..40)) {
        let (_, ops) = run(3, &steps);
        let mut state = Sequence::new();
        for op in &ops {
            state.apply(op).expect("valid op");
            let before = state.entries();
            let again = state.apply(op).expect("valid op");
            prop_assert!(!again.changed(), "second apply changed the state: {:?}", again);
            prop_assert_eq!(state.entries(), before);
        }
        state.check_invariants();
    }

    /// Local edits do what a plain string splice does.
    #[test]
    fn local_edits_match_a_string_model(edits in prop::collection::vec((0.0..=1.0f64, 0..5usize, "[a-z\n😀]{0,8}"), 1..80)) {
        let mut replica = Replica::new(3, 9);
        let mut model: Vec<char> = Vec::new();
        let mut fold = Sequence::new();
        for (pos, delete, text) in edits {
            let pos = (pos * model.len() as f64) as usize;
            let delete = delete.min(model.len() - pos);
            if delete == 0 && text.is_empty() {
                continue;
            }
            let op = replica.local_edit(pos, delete, &text).expect("edit within the document");
            fold.apply(&op).expect("valid op");
            model.splice(pos..pos + delete, text.chars());
            prop_assert_eq!(replica.text(), model.iter().collect::<String>());
        }
        replica.check_invariants();
        prop_assert_eq!(fold.text(), replica.text());
    }

    /// Several users typing at carets of their own in one replica (as `docfold loadgen`'s
    /// users share their document's): each edit near one caret, typing or backspacing,
    /// moves the others as an editor would; the replica does what the string splices do.
    #[test]
    fn several_carets_in_one_replica_match_a_string_model(
        edits in prop::collection::vec((0..4usize, -3..4i64, 0..3usize, "[a-z😀]{0,6}"), 1..150)
    ) {
        let mut replica = Replica::new(5, 2);
        let mut model: Vec<char> = Vec::new();
        let mut carets = [0usize; 4];
        for (user, step, delete, text) in edits {
            let pos = (carets[user] as i64 + step).clamp(0, model.len() as i64) as usize;
            let delete = delete.min(pos);
            let at = pos - delete;
            if delete == 0 && text.is_empty() {
                continue;
            }
            replica.local_edit(at, delete, &text).expect("edit within the document");
            let typed = text.chars().count();
            model.splice(at..at + delete, text.chars());
            for caret in &mut carets {
                if *caret >= at + delete {
                    *caret = *caret - delete + typed;
                } else if *caret > at {
                    *caret = at;
                }
            }
            carets[user] = at + typed;
            prop_assert_eq!(replica.text(), model.iter().collect::<String>());
        }
        replica.check_invariants();
    }
}

#[test]
fn a_delete_before_its_insert_is_honoured() {
    let mut author = Replica::new(1, 1);
    let insert = author.local_edit(0, 0, "abc").expect("insert");
    let delete = author.local_edit(1, 1, "").expect("delete");
    let mut fold = Sequence::new();
    let outcome = fold.apply(&delete).expect("valid");
    assert_eq!((outcome.tombstoned, fold.pending_tombstones()), (1, 1));
    fold.apply(&insert).expect("valid");
    assert_eq!(fold.text(), "ac");
    assert_eq!(fold.pending_tombstones(), 0);
    fold.check_invariants();
}

#[test]
fn an_edit_outside_the_document_is_refused() {
    let mut replica = Replica::new(1, 1);
    replica.local_edit(0, 0, "ab").expect("insert");
    let error = replica.local_edit(1, 5, "").expect_err("past the end");
    assert_eq!(error.to_string(), "edit at 1 deleting 5 is outside the document of length 2");
    assert!(replica.local_edit(3, 0, "x").is_err());
    assert!(replica.local_edit(0, 0, "").is_err());
}

#[test]
fn long_pastes_are_split_into_runs_that_fit() {
    let mut replica = Replica::new(5, 5);
    let text: String = (0..200_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let op = replica.local_edit(0, 0, &text).expect("paste");
    assert!(op.inserts.len() > 1);
    assert!(op.inserts.iter().all(|r| r.text.chars().count() <= docfold::lseq::MAX_RUN_CHARS));
    let mut fold = Sequence::new();
    fold.apply(&op).expect("valid");
    assert_eq!(fold.text(), text);
}

/// An op of `site` deleting `count` characters nobody has inserted (yet).
fn deletes_of_unknown(site: u64, first: u64, count: u64) -> Op {
    let deletes =
        (first..first + count).map(|c| Ident(vec![Level { digit: 3, site: 77, counter: c }])).collect();
    Op { id: OpId { site, counter: first }, inserts: vec![], deletes }
}

#[test]
fn tombstones_are_bounded_and_an_op_over_the_bound_changes_nothing() {
    let mut fold = Sequence::new();
    let per_op = MAX_EDIT_DELETES as u64;
    for i in 0..(MAX_PENDING_TOMBSTONES as u64 / per_op) {
        fold.apply(&deletes_of_unknown(1, 1 + i * per_op, per_op)).expect("within the bound");
    }
    assert_eq!(fold.pending_tombstones(), MAX_PENDING_TOMBSTONES);
    let mut over = deletes_of_unknown(2, 1_000_000, 1);
    let mut author = Replica::new(1, 2);
    over.inserts = author.local_edit(0, 0, "kept out").expect("insert").inserts;
    over.id = OpId { site: 2, counter: over.inserts[0].start.last().counter };
    let error = fold.apply(&over).expect_err("over the bound");
    assert_eq!(error, ApplyError::TombstoneLimit { needed: 1, held: MAX_PENDING_TOMBSTONES });
    assert!(error.to_string().contains("max_pending_tombstones = 65536"), "{error}");
    assert_eq!((fold.text(), fold.pending_tombstones()), (String::new(), MAX_PENDING_TOMBSTONES));
    fold.check_invariants();
}

#[test]
fn no_identifier_deeper_than_the_cap_is_allocated() {
    // Two characters adjacent at the deepest level: nothing fits between them.
    let left = Ident((0..MAX_DEPTH as u64).map(|c| Level { digit: 1, site: 1, counter: c + 1 }).collect());
    let right = left.run_member(1);
    let refused = allocate(left.levels(), Some(right.levels()), 1, (5, 100), 0, &mut Rng::new(1));
    assert_eq!(refused, Err(DepthExhausted));

    let pair = Op {
        id: OpId { site: 1, counter: MAX_DEPTH as u64 },
        inserts: vec![InsertRun { start: left, text: "ab".into() }],
        deletes: vec![],
    };
    let mut replica = Replica::new(0, 5);
    replica.apply(&pair).expect("valid");
    assert_eq!(replica.local_edit(1, 0, "x"), Err(EditError::DepthExhausted(DepthExhausted)));
    assert!(DepthExhausted.to_string().contains("max_ident_depth"));
    assert_eq!(replica.text(), "ab");
    replica.local_edit(2, 0, "c").expect("room after the pair");
    replica.check_invariants();
}

#[test]
fn an_editor_pushed_to_the_counter_limit_refuses_edits_instead_of_panicking() {
    let mut remote = Replica::new(0, 8);
    let mut op = remote.local_edit(0, 0, "z").expect("insert");
    op.inserts[0].start.0[0].counter = MAX_COUNTER;
    op.id.counter = MAX_COUNTER;
    let mut replica = Replica::new(0, 9);
    replica.apply(&op).expect("valid: at the limit");
    let refused = replica.local_edit(1, 0, "a").expect_err("counter past the limit");
    assert!(
        matches!(refused, EditError::Refused(ApplyError::Invalid(OpError::CounterTooLarge))),
        "{refused}"
    );
    assert_eq!(replica.text(), "z");
}
