//! Object storage by URL: `file://DIR` (a local folder, the embedded default) or
//! `s3://BUCKET[/PREFIX]` (any S3 API; endpoint override for local servers). Every key the
//! sinks write is relative to the URL's root.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use std::sync::Arc;
use std::time::Duration;

use super::SinkError;
use crate::config::ObjectsConfig;

/// A parsed `objects.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectsUrl {
    Folder(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl ObjectsUrl {
    pub fn parse(url: &str) -> Result<ObjectsUrl, SinkError> {
        let bad = |reason: &str| SinkError::Config(format!("object storage URL {url:?}: {reason}"));
        match url.split_once("://") {
            Some(("file", dir)) if !dir.is_empty() => Ok(ObjectsUrl::Folder(dir.into())),
            Some(("s3", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("the bucket is missing"));
                }
                Ok(ObjectsUrl::S3 { bucket: bucket.into(), prefix: prefix.trim_matches('/').into() })
            }
            _ => Err(bad("expected file://DIR or s3://BUCKET[/PREFIX]")),
        }
    }
}

/// A key as docfold stored it (`Key::to_string`, already percent-encoded) parsed back;
/// `Key::from` would encode it a second time.
pub fn stored_key(sink: &'static str, key: &str) -> Result<Key, SinkError> {
    Key::parse(key)
        .map_err(|e| SinkError::Corrupt { sink, message: format!("stored object key {key:?}: {e}") })
}

/// Object storage, cheap to clone.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
}

fn failed(action: &str, key: &Key) -> impl FnOnce(object_store::Error) -> SinkError {
    let what = format!("{action} {key}");
    move |error| SinkError::from_object_store(&what, error)
}

impl Objects {
    pub fn open(config: &ObjectsConfig) -> Result<Objects, SinkError> {
        let store: Arc<dyn ObjectStore> = match ObjectsUrl::parse(config.url.expose())? {
            ObjectsUrl::Folder(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| SinkError::Config(format!("object folder {}: {e}", dir.display())))?;
                Arc::new(
                    LocalFileSystem::new_with_prefix(&dir).map_err(|e| SinkError::Config(e.to_string()))?,
                )
            }
            ObjectsUrl::S3 { bucket, prefix } => {
                // Fail a request within seconds so the pipeline's own backoff takes over (the
                // default retries for up to three minutes, with the partition waiting).
                let retry = RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(10),
                };
                let client = ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(60));
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(endpoint) = &config.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                let region = config.aws_region.clone().or_else(|| std::env::var("AWS_REGION").ok());
                builder = builder.with_region(region.unwrap_or_else(|| "us-east-1".into()));
                let s3 = builder.build().map_err(|e| SinkError::Config(e.to_string()))?;
                if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix.as_str())) }
            }
        };
        Ok(Objects { store })
    }

    /// `s3://BUCKET/…`: creates the bucket unless it exists (in the configured region);
    /// `file://`: nothing to create. Returns whether it created one.
    pub async fn create_bucket(config: &ObjectsConfig) -> Result<bool, SinkError> {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        let ObjectsUrl::S3 { bucket, .. } = ObjectsUrl::parse(config.url.expose())? else { return Ok(false) };
        let shared = super::aws_config(config.endpoint.as_deref(), config.aws_region.clone()).await;
        let s3 =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.endpoint.is_some()).build();
        let client = aws_sdk_s3::Client::from_conf(s3);
        if client.head_bucket().bucket(&bucket).send().await.is_ok() {
            return Ok(false);
        }
        let mut request = client.create_bucket().bucket(&bucket);
        if let Some(region) = shared.region().map(|r| r.to_string()).filter(|r| r != "us-east-1") {
            let location = BucketLocationConstraint::from(region.as_str());
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder().location_constraint(location).build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(false),
            Err(e) => Err(SinkError::Refused {
                sink: "objects",
                message: format!("creating bucket {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(e)),
            }),
        }
    }

    /// Writes `bytes` at `key` (replacing it): in one request, or in parts of `part_bytes`
    /// when larger. Either way the object appears whole or not at all.
    pub async fn put(&self, key: &Key, bytes: Bytes, part_bytes: usize) -> Result<(), SinkError> {
        if bytes.len() <= part_bytes {
            self.store.put(key, PutPayload::from(bytes)).await.map_err(failed("writing", key))?;
            return Ok(());
        }
        let upload = self.store.put_multipart(key).await.map_err(failed("starting upload of", key))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, part_bytes);
        parts.put(bytes);
        parts.finish().await.map_err(failed("uploading", key))?;
        Ok(())
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get(&self, key: &Key) -> Result<Option<Bytes>, SinkError> {
        match self.store.get(key).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(failed("reading", key))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed("reading", key)(e)),
        }
    }

    /// Deletes the object at `key` (a missing one is no error).
    pub async fn delete(&self, key: &Key) -> Result<(), SinkError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed("deleting", key)(e)),
        }
    }

    /// Every key under `prefix` (recursively), sorted.
    pub async fn list(&self, prefix: &Key) -> Result<Vec<Key>, SinkError> {
        let mut keys: Vec<Key> = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(failed("listing", prefix))?;
        keys.sort();
        Ok(keys)
    }
}
