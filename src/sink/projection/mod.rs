//! Projections: the read model, one item per document (text, version, length, updated
//! time, origin region). Writes are conditional on (generation, version), so a stored
//! version never decreases and a redelivery rewrites nothing, while a live replay (a new
//! generation, `docfold replay --live`) rewrites every document it touches; texts over `inline_max_bytes` go to object storage and the item
//! holds a pointer. Backends by URL: `sqlite://PATH` (embedded) and `dynamodb://TABLE`.

pub(crate) mod dynamodb;
mod sqlite;

use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::path::Path as Key;
use std::future::Future;

use super::SinkError;
use super::objects::{Objects, stored_key};
use crate::config::ProjectionConfig;

pub use dynamodb::DynamoProjections;
pub use sqlite::SqliteProjections;

/// A document's projection as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projection {
    pub doc_id: String,
    pub body: Body,
    pub version: u64,
    /// The writer partition's replay generation: compared before the version.
    pub generation: u64,
    /// Length in Unicode code points.
    pub chars: u64,
    pub updated_ms: i64,
    /// Region of the last op folded into the document.
    pub region: String,
    /// The writer's lease epoch (`projection.writer = "leader"`): refused over a newer one.
    pub epoch: Option<u64>,
}

/// Whether this region may write the global projection table now, at which epoch
/// (`RoleMachine::admit` on the region's role as its lease loop last left it).
pub type LeaderGate =
    std::sync::Arc<dyn Fn() -> Result<u64, crate::region::role::WriteRefused> + Send + Sync>;

/// The text, or where it is when it is too large for an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Text(String),
    /// Key (relative to the object storage root) of an object holding the UTF-8 text.
    Pointer(String),
}

impl Body {
    /// The body from an item's `text` and `text_ref` attributes (exactly one is set).
    fn stored(doc_id: &str, text: Option<String>, text_ref: Option<String>) -> Result<Body, SinkError> {
        match (text, text_ref) {
            (Some(text), None) => Ok(Body::Text(text)),
            (None, Some(key)) => Ok(Body::Pointer(key)),
            _ => Err(SinkError::Corrupt {
                sink: "projections",
                message: format!("document {doc_id:?} has neither or both of text and text_ref"),
            }),
        }
    }
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Items written.
    pub written: u64,
    /// Items skipped because the stored (generation, version) was already at least as new.
    pub stale: u64,
}

/// A projection backend.
pub trait ProjectionStore: Send + Sync {
    /// Creates the table if it does not exist.
    fn create(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Writes each item unless the stored (generation, version) is already ≥ its own.
    fn put(&self, items: &[Projection]) -> impl Future<Output = Result<Written, SinkError>> + Send;
    fn get(&self, doc_id: &str) -> impl Future<Output = Result<Option<Projection>, SinkError>> + Send;
}

/// A parsed `projection.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectionUrl {
    None,
    Sqlite(String),
    DynamoDb { table: String },
}

impl ProjectionUrl {
    pub fn parse(url: &str) -> Result<ProjectionUrl, SinkError> {
        match url.split_once("://") {
            _ if url.is_empty() => Ok(ProjectionUrl::None),
            Some(("sqlite", path)) if !path.is_empty() => Ok(ProjectionUrl::Sqlite(url.into())),
            Some(("dynamodb", table)) if !table.is_empty() && !table.contains('/') => {
                Ok(ProjectionUrl::DynamoDb { table: table.into() })
            }
            _ => Err(SinkError::Config(format!(
                "projection URL {url:?}: expected sqlite://PATH, dynamodb://TABLE or empty"
            ))),
        }
    }
}

/// The configured backend.
pub enum Backend {
    Sqlite(SqliteProjections),
    DynamoDb(DynamoProjections),
}

impl ProjectionStore for Backend {
    async fn create(&self) -> Result<(), SinkError> {
        match self {
            Backend::Sqlite(b) => b.create().await,
            Backend::DynamoDb(b) => b.create().await,
        }
    }

    async fn put(&self, items: &[Projection]) -> Result<Written, SinkError> {
        match self {
            Backend::Sqlite(b) => b.put(items).await,
            Backend::DynamoDb(b) => b.put(items).await,
        }
    }

    async fn get(&self, doc_id: &str) -> Result<Option<Projection>, SinkError> {
        match self {
            Backend::Sqlite(b) => b.get(doc_id).await,
            Backend::DynamoDb(b) => b.get(doc_id).await,
        }
    }
}

/// Projections with large texts moved to object storage.
pub struct Projections {
    backend: Backend,
    objects: Objects,
    inline_max_bytes: usize,
    /// Set with `projection.writer = "leader"`: items are written only while this gate
    /// admits, carrying its epoch.
    leader: std::sync::OnceLock<LeaderGate>,
}

/// Where a text too large for an item is kept: one object per (document, version); the two
/// newest are kept, so a reader holding the previous pointer still finds its text.
pub fn text_key(doc_id: &str, version: u64) -> Key {
    text_folder(doc_id).join(format!("{version:020}.txt"))
}

fn text_folder(doc_id: &str) -> Key {
    Key::from_iter(["projections".to_string(), format!("doc={doc_id}")])
}

impl Projections {
    /// Opens the configured backend; `None` when `projection.url` is empty.
    pub async fn open(config: &ProjectionConfig, objects: Objects) -> Result<Option<Projections>, SinkError> {
        let backend = match ProjectionUrl::parse(config.url.expose())? {
            ProjectionUrl::None => return Ok(None),
            ProjectionUrl::Sqlite(url) => Backend::Sqlite(SqliteProjections::open(&url).await?),
            ProjectionUrl::DynamoDb { table } => {
                Backend::DynamoDb(DynamoProjections::open(config, &table).await)
            }
        };
        Ok(Some(Projections {
            backend,
            objects,
            inline_max_bytes: config.inline_max_bytes,
            leader: std::sync::OnceLock::new(),
        }))
    }

    /// From now on write only as the lease holder, at its epoch (`projection.writer =
    /// "leader"`). Set once; a second gate is ignored.
    pub fn write_as_leader(&self, gate: LeaderGate) {
        let _ = self.leader.set(gate);
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Writes the items (texts over the inline limit first go to object storage). Once
    /// the items point at the new texts, the older texts of those documents are deleted.
    pub async fn put(&self, mut items: Vec<Projection>) -> Result<Written, SinkError> {
        let mut outlined = Vec::new();
        for item in &mut items {
            if let Body::Text(text) = &item.body
                && text.len() > self.inline_max_bytes
            {
                let key = text_key(&item.doc_id, item.version);
                self.objects.put(&key, Bytes::from(text.clone()), usize::MAX).await?;
                item.body = Body::Pointer(key.to_string());
                outlined.push(item.doc_id.clone());
            }
        }
        let written = self.backend.put(&items).await?;
        for doc_id in outlined {
            self.delete_older_texts(&doc_id).await;
        }
        Ok(written)
    }

    /// Deletes the texts of `doc_id` older than the two newest: the item points at the
    /// newest, and a reader that read the item before this write may still fetch the one
    /// before it. A failure leaves them for the next write.
    async fn delete_older_texts(&self, doc_id: &str) {
        let result = async {
            let mut keys = self.objects.list(&text_folder(doc_id)).await?;
            keys.truncate(keys.len().saturating_sub(2));
            for key in keys {
                self.objects.delete(&key).await?;
            }
            Ok::<(), SinkError>(())
        };
        if let Err(error) = result.await {
            tracing::warn!(doc_id, %error, "deleting old projection texts failed; retried at the next write");
        }
    }

    /// A document's projection with its text (fetched from object storage if needed).
    pub async fn get_text(&self, doc_id: &str) -> Result<Option<(Projection, String)>, SinkError> {
        let Some(item) = self.backend.get(doc_id).await? else { return Ok(None) };
        let text = match &item.body {
            Body::Text(text) => text.clone(),
            Body::Pointer(key) => {
                let bytes = self.objects.get(&stored_key("projections", key)?).await?.ok_or_else(|| {
                    SinkError::Corrupt {
                        sink: "projections",
                        message: format!("document {doc_id:?} points at {key}, which does not exist"),
                    }
                })?;
                String::from_utf8(bytes.to_vec())
                    .map_err(|e| SinkError::Corrupt { sink: "projections", message: format!("{key}: {e}") })?
            }
        };
        Ok(Some((item, text)))
    }
}

impl crate::sink::Sink for Projections {
    fn name(&self) -> &'static str {
        "projections"
    }

    /// Each changed document's text and version, written only over an older version.
    fn write<'a>(&'a self, changes: &'a crate::sink::Changes<'a>) -> BoxFuture<'a, Result<u64, SinkError>> {
        Box::pin(async move {
            if changes.docs.is_empty() {
                return Ok(0);
            }
            let epoch = match self.leader.get().map(|admit| admit()) {
                None => None,
                Some(Ok(epoch)) => Some(epoch),
                Some(Err(refused)) => {
                    tracing::debug!(%refused, "the global projection table is the lease holder's to write");
                    crate::telemetry::projection_writes(0, changes.docs.len() as u64);
                    return Ok(0);
                }
            };
            let updated_ms = crate::store::now_ms();
            let items = changes
                .docs
                .iter()
                .map(|(doc_id, doc)| Projection {
                    doc_id: doc_id.to_string(),
                    body: Body::Text(doc.state.text()),
                    version: doc.version,
                    generation: changes.generation,
                    chars: doc.state.len() as u64,
                    updated_ms,
                    region: doc.region.clone(),
                    epoch,
                })
                .collect();
            let written = self.put(items).await?;
            crate::telemetry::projection_writes(written.written, written.stale);
            Ok(written.written)
        })
    }
}
