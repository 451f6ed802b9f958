//! Binary (protobuf) and JSON codecs of the envelope. Both decoders end in the same checks.

use prost::Message;

use super::limits::{DecodeError, Limit};
use super::wire;
use super::{Envelope, SCHEMA_VERSION};
use crate::lseq::{Ident, InsertRun, Op, OpId};

pub fn encode(envelope: &Envelope) -> Vec<u8> {
    to_wire(envelope).encode_to_vec()
}

pub fn encode_json(envelope: &Envelope) -> String {
    serde_json::to_string(envelope).expect("envelopes always serialise")
}

/// Decodes and validates one binary message.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    Limit::MessageBytes.check(bytes.len())?;
    let message = wire::OpEnvelope::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let envelope = from_wire(message)?;
    check(&envelope)?;
    Ok(envelope)
}

/// Decodes and validates one JSON message.
pub fn decode_json(text: &str) -> Result<Envelope, DecodeError> {
    Limit::MessageBytes.check(text.len())?;
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
    check(&envelope)?;
    Ok(envelope)
}

pub(super) fn check(envelope: &Envelope) -> Result<(), DecodeError> {
    if envelope.schema_version != SCHEMA_VERSION {
        return Err(DecodeError::UnknownSchemaVersion {
            found: envelope.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    if envelope.doc_id.is_empty() {
        return Err(DecodeError::EmptyDocId);
    }
    Limit::DocIdBytes.check(envelope.doc_id.len())?;
    Limit::RegionBytes.check(envelope.origin_region.len())?;
    envelope.op.validate()?;
    Ok(())
}

fn to_wire(envelope: &Envelope) -> wire::OpEnvelope {
    let op = &envelope.op;
    wire::OpEnvelope {
        schema_version: envelope.schema_version,
        doc_id: envelope.doc_id.clone(),
        site: op.id.site,
        counter: op.id.counter,
        origin_region: envelope.origin_region.clone(),
        client_time_ms: envelope.client_time_ms,
        inserts: op
            .inserts
            .iter()
            .map(|r| wire::InsertRun { ident: r.start.encode(), text: r.text.clone() })
            .collect(),
        deletes: op.deletes.iter().map(Ident::encode).collect(),
    }
}

fn from_wire(message: wire::OpEnvelope) -> Result<Envelope, DecodeError> {
    let mut inserts = Vec::with_capacity(message.inserts.len());
    for (i, run) in message.inserts.into_iter().enumerate() {
        let start = Ident::decode(&run.ident).map_err(DecodeError::insert_ident(i))?;
        inserts.push(InsertRun { start, text: run.text });
    }
    let mut deletes = Vec::with_capacity(message.deletes.len());
    for (i, bytes) in message.deletes.iter().enumerate() {
        deletes.push(Ident::decode(bytes).map_err(DecodeError::delete_ident(i))?);
    }
    Ok(Envelope {
        schema_version: message.schema_version,
        doc_id: message.doc_id,
        origin_region: message.origin_region,
        client_time_ms: message.client_time_ms,
        op: Op { id: OpId { site: message.site, counter: message.counter }, inserts, deletes },
    })
}
