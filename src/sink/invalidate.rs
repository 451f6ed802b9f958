//! Cache invalidations, sent after the projections they announce are written:
//! - on the `doc-invalidations` topic (compacted; key = doc id, value = JSON
//!   `{"doc_id","version","region"}`), for every region's caches;
//! - to the regional Redis: one script per document that deletes the cached hash at
//!   `<key_prefix><doc id>` unless it already holds this (generation, version) or a newer
//!   one (with `preload`: writes the new text, version and generation there instead), and
//!   publishes the same JSON on `<channel>`.
//!
//! Invalidations carry the version, so a cache drops one older than what it holds; a
//! redelivery re-sends them harmlessly. A live replay's new generation
//! (`store::Owner::generation`) drops what it touches whatever its version.

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::{SinkError, TopicSink};
use crate::config::{InvalidationsConfig, JobConfig, redact_url};

/// One document's new version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub doc_id: String,
    pub version: u64,
    pub region: String,
    /// The writer partition's replay generation (absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// When the oldest record this version adds to the last one announced was folded, and
    /// when the projection was written (ms since the epoch, the pipeline's clock; absent
    /// when not known): a reader that knows when that record was published splits its
    /// latency into stages.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folded_ms: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub projected_ms: i64,
    /// The new text, for a cache that preloads (never on the topic or the channel).
    #[serde(skip)]
    pub text: Option<String>,
}

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// KEYS[1] = cached key; ARGV = version, generation, channel, message[, text to preload].
/// A missing hash field reads as `false`; a hash from before generations is generation 0.
const SCRIPT: &str = r"
local held = redis.call('HMGET', KEYS[1], 'version', 'generation')
local version, generation = tonumber(ARGV[1]), tonumber(ARGV[2])
local held_generation = tonumber(held[2] or '0')
local changed = 0
if not held[1] or held_generation < generation
   or (held_generation == generation and tonumber(held[1]) < version) then
  if ARGV[5] then
    redis.call('HSET', KEYS[1], 'version', ARGV[1], 'generation', ARGV[2], 'text', ARGV[5])
    changed = 1
  else
    changed = redis.call('DEL', KEYS[1])
  end
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return changed
";

fn redis_failed(error: redis::RedisError) -> SinkError {
    let message = error.to_string();
    use redis::ServerErrorKind as Reply;
    // A server loading its dataset, a replica during failover, a cluster mid-resharding:
    // routine, so retried like a dropped connection.
    let routine = matches!(
        error.kind(),
        redis::ErrorKind::Server(
            Reply::BusyLoading | Reply::ReadOnly | Reply::TryAgain | Reply::ClusterDown | Reply::MasterDown
        )
    );
    if is_tls_refusal(&error) {
        // A certificate no trusted CA signed, or for another host: a setting to fix, not an outage.
        return SinkError::Refused { sink: "redis", message };
    }
    if routine
        || error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
    {
        SinkError::Unavailable { sink: "redis", message }
    } else {
        SinkError::Refused { sink: "redis", message }
    }
}

/// Whether the TLS handshake refused the server's certificate. redis keeps rustls' error only
/// as text (behind an `Arc<dyn Error>`), so its message is what there is to go by; the TLS
/// test pins it.
fn is_tls_refusal(error: &redis::RedisError) -> bool {
    error.to_string().contains("invalid peer certificate")
}

/// The regional cache.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    script: redis::Script,
    key_prefix: String,
    channel: String,
}

impl RedisCache {
    /// Connects lazily: a cache that is down at start is retried like any other outage.
    pub fn open(url: &str, config: &InvalidationsConfig) -> Result<RedisCache, SinkError> {
        let bad_url = |e: redis::RedisError| SinkError::Config(format!("redis URL {}: {e}", redact_url(url)));
        // rustls needs one process-wide crypto provider, and this build links two (ring for
        // sqlx and redis, aws-lc-rs for the AWS SDK): choose ring (a second call is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &config.redis_ca_file {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    SinkError::Config(format!("invalidations.redis_ca_file {}: {e}", path.display()))
                })?;
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(url, certificates).map_err(bad_url)?
            }
            None => redis::Client::open(url).map_err(bad_url)?,
        };
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, settings).map_err(redis_failed)?;
        Ok(RedisCache {
            connection,
            script: redis::Script::new(SCRIPT),
            key_prefix: config.key_prefix.clone(),
            channel: config.channel.clone(),
        })
    }

    /// The key a document is cached at.
    pub fn key(&self, doc_id: &str) -> String {
        format!("{}{doc_id}", self.key_prefix)
    }

    /// Runs the script for each invalidation, pipelined. Returns how many cached entries
    /// were dropped or preloaded.
    pub async fn invalidate(&self, items: &[Invalidation]) -> Result<u64, SinkError> {
        let mut pipe = redis::pipe();
        for item in items {
            let message = serde_json::to_string(item).expect("plain struct");
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(self.key(&item.doc_id))
                .arg(item.version)
                .arg(item.generation)
                .arg(&self.channel)
                .arg(message);
            if let Some(text) = &item.text {
                pipe.arg(text);
            }
        }
        let mut connection = self.connection.clone();
        let dropped: Result<Vec<u64>, _> = pipe.query_async(&mut connection).await;
        let dropped = match dropped {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(&mut connection).await.map_err(redis_failed)?;
                pipe.query_async(&mut connection).await.map_err(redis_failed)?
            }
            other => other.map_err(redis_failed)?,
        };
        Ok(dropped.iter().sum())
    }
}

/// Both channels of invalidations.
#[derive(Clone, Default)]
pub struct Invalidator {
    topic: Option<TopicSink>,
    redis: Option<RedisCache>,
    /// `preload_max_bytes` when the cache preloads.
    preload: Option<usize>,
}

impl Invalidator {
    pub fn open(config: &JobConfig) -> Result<Invalidator, SinkError> {
        let settings = &config.invalidations;
        let topic = (!settings.topic.is_empty())
            .then(|| TopicSink::open(config, &settings.topic, "invalidations topic"))
            .transpose()?;
        let redis =
            settings.redis.as_ref().map(|url| RedisCache::open(url.expose(), settings)).transpose()?;
        let preload = (settings.preload && redis.is_some()).then_some(settings.preload_max_bytes);
        Ok(Invalidator { topic, redis, preload })
    }

    pub fn is_off(&self) -> bool {
        self.topic.is_none() && self.redis.is_none()
    }

    /// Whether the regional cache answers (`None`: no cache configured).
    pub async fn ping_cache(&self) -> Option<Result<(), SinkError>> {
        let cache = self.redis.as_ref()?;
        let mut connection = cache.connection.clone();
        Some(redis::cmd("PING").query_async::<String>(&mut connection).await.map(drop).map_err(redis_failed))
    }

    pub async fn send(&self, items: &[Invalidation]) -> Result<(), SinkError> {
        if items.is_empty() {
            return Ok(());
        }
        if let Some(topic) = &self.topic {
            let records = items
                .iter()
                .map(|i| (i.doc_id.as_bytes().to_vec(), serde_json::to_vec(i).expect("plain struct")))
                .collect();
            topic.send(records).await?;
        }
        if let Some(redis) = &self.redis {
            redis.invalidate(items).await?;
        }
        Ok(())
    }
}

impl super::Sink for Invalidator {
    fn name(&self) -> &'static str {
        "invalidations"
    }

    fn write<'a>(&'a self, changes: &'a super::Changes<'a>) -> BoxFuture<'a, Result<u64, SinkError>> {
        Box::pin(async move {
            // Invalidations go out after the projections they announce: those are written.
            let projected_ms = crate::store::now_ms();
            let items: Vec<Invalidation> = changes
                .docs
                .iter()
                .map(|(doc_id, doc)| Invalidation {
                    doc_id: doc_id.to_string(),
                    version: doc.version,
                    region: doc.region.clone(),
                    generation: changes.generation,
                    folded_ms: doc.folded_ms,
                    projected_ms,
                    text: self.preload.and_then(|max| Some(doc.state.text()).filter(|t| t.len() <= max)),
                })
                .collect();
            self.send(&items).await?;
            tracing::debug!(
                event = "invalidations",
                partition = changes.partition,
                docs = items.len(),
                "invalidations sent"
            );
            crate::telemetry::invalidations(items.len() as u64);
            if let Some(folded_at) = changes.folded_at
                && !items.is_empty()
            {
                crate::telemetry::invalidation_delay(folded_at.elapsed().as_secs_f64());
            }
            Ok(items.len() as u64)
        })
    }
}
