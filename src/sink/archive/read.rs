//! Reading the archive back as log records, for a replay when the log's retention has
//! passed: a record's rows (one per insert run and deleted identifier, in `item` order)
//! hold everything its op envelope had, so the envelope is rebuilt and encoded again.
//! Records that were not ops (dead letters) have no rows: a replay from the archive skips
//! them, as the fold did.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use object_store::path::Path as Key;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::sync::Arc;

use super::parse_file_name;
use crate::log::{Record, TimestampType};
use crate::lseq::{Ident, InsertRun, Op, OpId};
use crate::op::{Envelope, SCHEMA_VERSION};
use crate::sink::SinkError;
use crate::sink::objects::Objects;

/// One file of the archive: records `first..=last` of a partition of the job's own topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveFile {
    pub key: Key,
    pub first: u64,
    pub last: u64,
}

/// The files of `partition` of the job's own topic, by first offset.
pub async fn files(objects: &Objects, partition: u32) -> Result<Vec<ArchiveFile>, SinkError> {
    let wanted = format!("partition={partition}");
    let mut files: Vec<ArchiveFile> = objects
        .list(&Key::from("ops"))
        .await?
        .into_iter()
        .filter(|key| key.parts().any(|part| part.as_ref() == wanted))
        .filter_map(|key| {
            let (topic, first, last) = parse_file_name(key.filename()?)?;
            topic.is_empty().then_some(ArchiveFile { key: key.clone(), first, last })
        })
        .collect();
    files.sort_by_key(|f| f.first);
    Ok(files)
}

fn corrupt(key: &Key, message: impl std::fmt::Display) -> SinkError {
    SinkError::Corrupt { sink: "archive", message: format!("{key}: {message}") }
}

/// The records of one archive file, in offset order, named `topic`.
pub fn records(key: &Key, bytes: Bytes, topic: &Arc<str>) -> Result<Vec<Record>, SinkError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.with_batch_size(65_536).build())
        .map_err(|e| corrupt(key, e))?;
    let mut records: Vec<Record> = Vec::new();
    let mut building: Option<(Record, Envelope)> = None;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(key, e))?;
        let columns = Columns::of(&batch).map_err(|e| corrupt(key, e))?;
        for row in 0..batch.num_rows() {
            let offset = columns.offset.value(row) as u64;
            if building.as_ref().is_none_or(|(record, _)| record.offset != offset) {
                records.extend(building.take().map(encode));
                building = Some(columns.start(row, topic).map_err(|e| corrupt(key, e))?);
            }
            let (_, envelope) = building.as_mut().expect("started above");
            columns.add(row, &mut envelope.op).map_err(|e| corrupt(key, e))?;
        }
    }
    records.extend(building.map(encode));
    Ok(records)
}

fn encode((mut record, envelope): (Record, Envelope)) -> Record {
    record.value = crate::op::encode(&envelope);
    record
}

/// The columns a record is rebuilt from.
struct Columns<'a> {
    doc_id: &'a arrow_array::StringArray,
    offset: &'a arrow_array::PrimitiveArray<Int64Type>,
    item: &'a arrow_array::PrimitiveArray<Int32Type>,
    site: &'a arrow_array::StringArray,
    counter: &'a arrow_array::PrimitiveArray<Int64Type>,
    origin_region: &'a arrow_array::StringArray,
    kind: &'a arrow_array::StringArray,
    ident: &'a arrow_array::BinaryArray,
    text: &'a arrow_array::StringArray,
    client_time: &'a arrow_array::PrimitiveArray<TimestampMillisecondType>,
    ingest_time: &'a arrow_array::PrimitiveArray<TimestampMillisecondType>,
    ingest_time_type: &'a arrow_array::StringArray,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Columns<'a>, String> {
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("no column {name}"));
        let strings = |name: &str| -> Result<&'a arrow_array::StringArray, String> {
            let array = batch.column_by_name(name).ok_or_else(|| format!("no column {name}"))?;
            array.as_string_opt::<i32>().ok_or_else(|| format!("column {name} is not text"))
        };
        let typed = |name: &str| format!("column {name} has another type");
        Ok(Columns {
            doc_id: strings("doc_id")?,
            offset: column("offset")?.as_primitive_opt().ok_or_else(|| typed("offset"))?,
            item: column("item")?.as_primitive_opt().ok_or_else(|| typed("item"))?,
            site: strings("site")?,
            counter: column("counter")?.as_primitive_opt().ok_or_else(|| typed("counter"))?,
            origin_region: strings("origin_region")?,
            kind: strings("kind")?,
            ident: column("ident")?.as_binary_opt().ok_or_else(|| typed("ident"))?,
            text: strings("text")?,
            client_time: column("client_time")?.as_primitive_opt().ok_or_else(|| typed("client_time"))?,
            ingest_time: column("ingest_time")?.as_primitive_opt().ok_or_else(|| typed("ingest_time"))?,
            ingest_time_type: strings("ingest_time_type")?,
        })
    }

    /// A record and its envelope, from the first row of its offset (no inserts or deletes yet).
    fn start(&self, row: usize, topic: &Arc<str>) -> Result<(Record, Envelope), String> {
        let site = u64::from_str_radix(self.site.value(row), 16).map_err(|e| format!("site: {e}"))?;
        let counter = u64::try_from(self.counter.value(row)).map_err(|e| format!("counter: {e}"))?;
        let doc_id = self.doc_id.value(row);
        let envelope = Envelope {
            schema_version: SCHEMA_VERSION,
            doc_id: doc_id.into(),
            origin_region: self.origin_region.value(row).into(),
            client_time_ms: self.client_time.value(row),
            op: Op { id: OpId { site, counter }, inserts: Vec::new(), deletes: Vec::new() },
        };
        let timestamp_type = match self.ingest_time_type.value(row) {
            "create" => TimestampType::Create,
            _ => TimestampType::LogAppend,
        };
        let record = Record {
            topic: topic.clone(),
            offset: self.offset.value(row) as u64,
            timestamp_ms: self.ingest_time.value(row),
            timestamp_type,
            key: doc_id.as_bytes().to_vec(),
            value: Vec::new(),
            headers: Vec::new(),
        };
        Ok((record, envelope))
    }

    /// Adds row `row` (an insert run or a deleted identifier) to its op.
    fn add(&self, row: usize, op: &mut Op) -> Result<(), String> {
        let expected = op.inserts.len() + op.deletes.len();
        if self.item.value(row) as usize != expected {
            return Err(format!(
                "offset {}: item {} where {expected} was due",
                self.offset.value(row),
                self.item.value(row)
            ));
        }
        let ident = Ident::decode(self.ident.value(row)).map_err(|e| format!("ident: {e}"))?;
        match self.kind.value(row) {
            "insert" if !self.text.is_null(row) => {
                op.inserts.push(InsertRun { start: ident, text: self.text.value(row).into() })
            }
            "delete" => op.deletes.push(ident),
            kind => return Err(format!("offset {}: a row of kind {kind:?}", self.offset.value(row))),
        }
        Ok(())
    }
}
