//! The archive's rows: one per insert run and one per deleted identifier, in log order,
//! collected column by column and encoded as Parquet (schema: `schemas/archive/ops.md`).

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::sync::{Arc, LazyLock};

use crate::log::Record;
use crate::op::Envelope;

/// The archive's Arrow schema (the Parquet schema follows from it).
pub static SCHEMA: LazyLock<Arc<Schema>> = LazyLock::new(|| {
    let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("item", DataType::Int32, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("counter", DataType::Int64, false),
        Field::new("origin_region", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("ident", DataType::Binary, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("client_time", utc(), false),
        Field::new("ingest_time", utc(), false),
        Field::new("ingest_time_type", DataType::Utf8, false),
        Field::new("source_topic", DataType::Utf8, false),
    ]))
});

/// Rows being collected for one file.
#[derive(Default)]
pub struct Rows {
    doc_id: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    item: Int32Builder,
    site: StringBuilder,
    counter: Int64Builder,
    origin_region: StringBuilder,
    kind: StringBuilder,
    ident: BinaryBuilder,
    text: StringBuilder,
    client_time: TimestampMillisecondBuilder,
    ingest_time: TimestampMillisecondBuilder,
    ingest_time_type: StringBuilder,
    source_topic: StringBuilder,
    len: usize,
    /// Bytes of the rows' values (before encoding and compression).
    bytes: u64,
    ident_buf: Vec<u8>,
    /// The last site seen and its hex form (consecutive ops are mostly one editor's).
    site_hex: (u64, String),
}

impl Rows {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds the rows of one record. Returns how many.
    pub fn push(&mut self, partition: u32, record: &Record, envelope: &Envelope) -> usize {
        let op = &envelope.op;
        if self.site_hex.1.is_empty() || self.site_hex.0 != op.id.site {
            self.site_hex = (op.id.site, format!("{:016x}", op.id.site));
        }
        let site = self.site_hex.1.as_str();
        let mut item = 0;
        let inserts = op.inserts.iter().map(|run| (&run.start, Some(run.text.as_str())));
        let deletes = op.deletes.iter().map(|ident| (ident, None));
        for (ident, text) in inserts.chain(deletes) {
            self.ident_buf.clear();
            ident.encode_into(&mut self.ident_buf);
            self.doc_id.append_value(&envelope.doc_id);
            self.partition.append_value(partition as i32);
            self.offset.append_value(record.offset as i64);
            self.item.append_value(item);
            self.site.append_value(site);
            self.counter.append_value(op.id.counter as i64);
            self.origin_region.append_value(&envelope.origin_region);
            self.kind.append_value(if text.is_some() { "insert" } else { "delete" });
            self.ident.append_value(&self.ident_buf);
            self.text.append_option(text);
            self.client_time.append_value(envelope.client_time_ms);
            self.ingest_time.append_value(record.timestamp_ms);
            self.ingest_time_type.append_value(record.timestamp_type.as_str());
            self.source_topic.append_value(&*record.topic);
            self.bytes += (envelope.doc_id.len()
                + envelope.origin_region.len()
                + record.topic.len()
                + self.ident_buf.len()
                + text.map_or(0, str::len)
                + 64) as u64;
            item += 1;
        }
        self.len += item as usize;
        item as usize
    }

    /// The collected rows as a batch; the builders start over.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.doc_id.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.item.finish()),
            Arc::new(self.site.finish()),
            Arc::new(self.counter.finish()),
            Arc::new(self.origin_region.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.ident.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.client_time.finish().with_timezone("UTC")),
            Arc::new(self.ingest_time.finish().with_timezone("UTC")),
            Arc::new(self.ingest_time_type.finish()),
            Arc::new(self.source_topic.finish()),
        ];
        self.len = 0;
        self.bytes = 0;
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the builders follow SCHEMA")
    }
}

/// Encodes a batch as one Parquet file: zstd, identifiers prefix-coded (consecutive
/// identifiers share most of their bytes), offsets and counters delta-coded.
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let delta = |props: parquet::file::properties::WriterPropertiesBuilder, column: &str, encoding| {
        props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), encoding)
    };
    let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?));
    props = delta(props, "ident", Encoding::DELTA_BYTE_ARRAY);
    for column in ["offset", "counter", "client_time", "ingest_time"] {
        props = delta(props, column, Encoding::DELTA_BINARY_PACKED);
    }
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props.build()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}
