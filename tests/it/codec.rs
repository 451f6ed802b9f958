//! The identifier and envelope codecs: round trips, and bad input that must be refused
//! with a typed error, never a panic.

use docfold::lseq::{Ident, IdentError, InsertRun, Level, MAX_DEPTH, Op, OpError, OpId, Replica, base};
use docfold::op::{self, DecodeError, Decoder, Envelope, Limit};
use proptest::prelude::*;

fn ident() -> impl Strategy<Value = Ident> {
    prop::collection::vec(
        (any::<u64>(), prop::sample::select(vec![1u64, 2, u64::MAX]), any::<u64>()),
        1..=MAX_DEPTH,
    )
    .prop_map(|levels| {
        Ident(
            levels
                .into_iter()
                .enumerate()
                .map(|(d, (digit, site, counter))| Level { digit: digit % base(d), site, counter })
                .collect(),
        )
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (1..200usize, 0..4usize, "[a-z0-9:/-]{1,40}", "[a-z-]{0,20}", any::<i64>()).prop_map(
        |(chars, deletes, doc_id, region, time)| {
            let mut replica = Replica::new(11, 42);
            let text: String = (0..chars).map(|i| if i % 7 == 0 { 'é' } else { 'x' }).collect();
            replica.local_edit(0, 0, &text).expect("insert");
            let op = replica.local_edit(chars / 2, deletes.min(chars / 2), "yz").expect("edit");
            Envelope::new(doc_id, region, time, op)
        },
    )
}

fn sample_envelope() -> Envelope {
    let mut replica = Replica::new(1, 77);
    Envelope::new("doc-1", "eu-west-1", 1_700_000_000_000, replica.local_edit(0, 0, "hello").expect("insert"))
}

proptest! {
    #[test]
    fn identifiers_round_trip(id in ident()) {
        prop_assert_eq!(Ident::decode(&id.encode()), Ok(id));
    }

    #[test]
    fn envelopes_round_trip_in_binary_and_json(envelope in envelope()) {
        prop_assert_eq!(op::decode(&op::encode(&envelope)), Ok(envelope.clone()));
        prop_assert_eq!(op::decode_json(&op::encode_json(&envelope)), Ok(envelope));
    }

    /// The fold's reusing decoder agrees with the reference decoder on valid messages,
    /// corrupted ones, and messages that follow each other through the same decoder.
    #[test]
    fn the_stream_decoder_matches_the_reference(
        envelopes in prop::collection::vec(envelope(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut decoder = Decoder::new();
        for envelope in &envelopes {
            let mut bytes = op::encode(envelope);
            for (at, byte) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= byte;
            }
            let reference = op::decode(&bytes);
            let streamed = decoder.decode(&bytes).cloned();
            prop_assert_eq!(reference.is_ok(), streamed.is_ok(), "{:?} vs {:?}", reference, streamed);
            if let (Ok(a), Ok(b)) = (reference, streamed) {
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = op::decode(&bytes);
        let _ = Decoder::new().decode(&bytes);
        let _ = Ident::decode(&bytes);
    }

    /// A cut inside a field is an error; a cut between fields is a shorter message
    /// (protobuf has no end marker; the log frames messages), but never the original.
    #[test]
    fn truncated_messages_never_decode_to_the_original(envelope in envelope(), cut in 0.0..1.0f64) {
        let bytes = op::encode(&envelope);
        let cut = (cut * bytes.len() as f64) as usize;
        prop_assert_ne!(op::decode(&bytes[..cut]), Ok(envelope));
    }

    #[test]
    fn messages_cut_inside_a_run_are_errors(envelope in envelope(), cut in 1..6usize) {
        let bytes = op::encode(&envelope);
        let error = op::decode(&bytes[..bytes.len() - cut]).expect_err("cut inside the last field");
        prop_assert!(matches!(error, DecodeError::Malformed(_)), "{}", error);
    }

    #[test]
    fn truncated_identifiers_are_errors(id in ident(), cut in 0.0..1.0f64) {
        let bytes = id.encode();
        let cut = (cut * bytes.len() as f64) as usize;
        prop_assert!(Ident::decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn an_identifier_deeper_than_the_cap_is_refused() {
    let deep = Ident((0..=MAX_DEPTH).map(|_| Level { digit: 1, site: 1, counter: 1 }).collect());
    assert_eq!(Ident::decode(&deep.encode()), Err(IdentError::TooDeep { depth: MAX_DEPTH as u64 + 1 }));
    assert!(IdentError::TooDeep { depth: 49 }.to_string().contains("max_ident_depth = 48"));
    let mut envelope = sample_envelope();
    envelope.op.deletes.push(deep);
    let error = op::decode(&op::encode(&envelope)).expect_err("too deep");
    assert!(
        matches!(error, DecodeError::BadIdent { ref field, error: IdentError::TooDeep { .. } } if field == "deletes[0]"),
        "{error}"
    );
}

#[test]
fn a_digit_outside_its_base_is_refused() {
    // depth 1, one site, digit folded to distance 16 from the low edge: base 32 allows 0..=15.
    let bytes = [1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 32, 5];
    assert_eq!(Ident::decode(&bytes), Err(IdentError::DigitOutOfBase { depth: 0 }));
    let bad = Ident(vec![Level { digit: 32, site: 7, counter: 5 }]);
    assert_eq!(bad.validate(), Err(IdentError::DigitOutOfBase { depth: 0 }));
    let mut envelope = sample_envelope();
    envelope.op.deletes.push(bad);
    let error = op::decode_json(&op::encode_json(&envelope)).expect_err("bad digit");
    assert!(matches!(error, DecodeError::Invalid(OpError::DeleteIdent { index: 0, .. })), "{error}");
}

#[test]
fn an_unknown_schema_version_is_refused() {
    let mut envelope = sample_envelope();
    envelope.schema_version = 2;
    let error = op::decode(&op::encode(&envelope)).expect_err("version 2");
    assert_eq!(error, DecodeError::UnknownSchemaVersion { found: 2, supported: 1 });
    assert_eq!(op::decode_json(&op::encode_json(&envelope)), Err(error));
}

#[test]
fn oversized_messages_and_fields_name_their_limit() {
    let error = op::decode(&vec![0u8; Limit::MessageBytes.max() + 1]).expect_err("too large");
    assert_eq!(
        error,
        DecodeError::OverLimit { limit: Limit::MessageBytes, actual: Limit::MessageBytes.max() + 1 }
    );
    assert!(error.to_string().contains("max_message_bytes = 4194304"), "{error}");
    let mut envelope = sample_envelope();
    envelope.doc_id = "d".repeat(300);
    let error = op::decode(&op::encode(&envelope)).expect_err("long doc id");
    assert!(error.to_string().contains("max_doc_id_bytes = 256"), "{error}");
}

/// An op of site 9 inserting `text` as one run whose first digit is `digit`.
fn run_op(op_site: u64, digit: u64, text: String) -> Op {
    let start = Ident(vec![Level { digit, site: 9, counter: 1 }]);
    Op { id: OpId { site: op_site, counter: 1 }, inserts: vec![InsertRun { start, text }], deletes: vec![] }
}

#[test]
fn a_run_longer_than_the_limit_is_refused() {
    let op = run_op(9, 1, "a".repeat(docfold::lseq::MAX_RUN_CHARS + 1));
    let error = op::decode(&op::encode(&Envelope::new("d", "", 0, op))).expect_err("long run");
    assert!(matches!(error, DecodeError::Invalid(OpError::RunTooLong { run: 0, .. })), "{error}");
    assert!(error.to_string().contains("max_run_chars = 65536"), "{error}");
}

#[test]
fn a_run_past_its_base_or_of_another_site_is_refused() {
    assert_eq!(run_op(9, 30, "abc".into()).validate(), Err(OpError::RunPastBase { run: 0 }));
    assert_eq!(run_op(8, 1, "a".into()).validate(), Err(OpError::ForeignRun { run: 0 }));
}

#[test]
fn malformed_json_is_an_error_not_a_panic() {
    for text in [
        "",
        "{",
        "[]",
        r#"{"schema_version":1}"#,
        r#"{"schema_version":1,"doc_id":"d","op":{"id":{"site":"zz","counter":1}}}"#,
    ] {
        assert!(op::decode_json(text).is_err(), "{text}");
    }
}
