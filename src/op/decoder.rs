//! The fold's decoder: reads the wire format straight into a reused envelope, so that
//! decoding a stream allocates nothing once warm. Same result as [`super::decode`], the
//! reference decoder built on the generated types (a property test holds them equal).

use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use super::Envelope;
use super::codec::check;
use super::limits::{DecodeError, Limit};
use crate::lseq::{Ident, InsertRun, Op, OpId};

/// Decodes messages one after another into the same memory.
pub struct Decoder {
    envelope: Envelope,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

fn malformed(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

/// The next length-delimited field's bytes.
fn field<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = decode_varint(buf).map_err(malformed)?;
    if len > buf.len() as u64 {
        return Err(malformed("buffer underflow"));
    }
    let (head, tail) = buf.split_at(len as usize);
    *buf = tail;
    Ok(head)
}

fn text(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| malformed("invalid string value: data is not UTF-8 encoded"))
}

impl Decoder {
    pub fn new() -> Decoder {
        let op = Op { id: OpId { site: 0, counter: 0 }, inserts: Vec::new(), deletes: Vec::new() };
        Decoder { envelope: Envelope::new(String::new(), String::new(), 0, op) }
    }

    /// The envelope last decoded (partly filled when that decode failed).
    pub fn last(&self) -> &Envelope {
        &self.envelope
    }

    /// Decodes and validates one binary message.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<&Envelope, DecodeError> {
        Limit::MessageBytes.check(bytes.len())?;
        let e = &mut self.envelope;
        e.schema_version = 0;
        e.doc_id.clear();
        e.origin_region.clear();
        e.client_time_ms = 0;
        e.op.id = OpId { site: 0, counter: 0 };
        let (mut runs, mut deletes) = (0, 0);
        let mut buf = bytes;
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf).map_err(malformed)?;
            match (tag, wire_type) {
                (1, WireType::Varint) => {
                    e.schema_version = decode_varint(&mut buf).map_err(malformed)? as u32
                }
                (2, WireType::LengthDelimited) => replace(&mut e.doc_id, text(field(&mut buf)?)?),
                (3, WireType::SixtyFourBit) if buf.len() >= 8 => e.op.id.site = buf.get_u64_le(),
                (4, WireType::Varint) => e.op.id.counter = decode_varint(&mut buf).map_err(malformed)?,
                (5, WireType::LengthDelimited) => replace(&mut e.origin_region, text(field(&mut buf)?)?),
                (6, WireType::Varint) => {
                    e.client_time_ms = decode_varint(&mut buf).map_err(malformed)? as i64
                }
                (7, WireType::LengthDelimited) => {
                    if runs == e.op.inserts.len() {
                        e.op.inserts.push(InsertRun { start: Ident(Vec::new()), text: String::new() });
                    }
                    decode_run(field(&mut buf)?, &mut e.op.inserts[runs], runs)?;
                    runs += 1;
                }
                (8, WireType::LengthDelimited) => {
                    if deletes == e.op.deletes.len() {
                        e.op.deletes.push(Ident(Vec::new()));
                    }
                    let bytes = field(&mut buf)?;
                    e.op.deletes[deletes].decode_from(bytes).map_err(DecodeError::delete_ident(deletes))?;
                    deletes += 1;
                }
                (1..=8, _) => {
                    return Err(malformed(format!("field {tag} has wire type {wire_type:?}")));
                }
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(malformed)?,
            }
        }
        e.op.inserts.truncate(runs);
        e.op.deletes.truncate(deletes);
        check(&self.envelope)?;
        Ok(&self.envelope)
    }
}

fn replace(target: &mut String, value: &str) {
    target.clear();
    target.push_str(value);
}

fn decode_run(mut buf: &[u8], run: &mut InsertRun, index: usize) -> Result<(), DecodeError> {
    run.start.0.clear();
    run.text.clear();
    let mut has_ident = false;
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(malformed)?;
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => {
                let bytes = field(&mut buf)?;
                run.start.decode_from(bytes).map_err(DecodeError::insert_ident(index))?;
                has_ident = true;
            }
            (2, WireType::LengthDelimited) => replace(&mut run.text, text(field(&mut buf)?)?),
            (1..=2, _) => {
                return Err(malformed(format!("field {tag} has wire type {wire_type:?}")));
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(malformed)?,
        }
    }
    if !has_ident {
        // Same as the reference decoder: an absent ident is empty bytes.
        run.start.decode_from(&[]).map_err(DecodeError::insert_ident(index))?;
    }
    Ok(())
}
