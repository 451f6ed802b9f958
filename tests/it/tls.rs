//! TLS to the store and the cache: servers of the test's own, started with a certificate the
//! test signs with a CA of its own. docfold connects verifying the certificate and the host
//! name, and is refused when it trusts another CA. The Kafka client is built with TLS and
//! SASL (SCRAM, OAUTHBEARER).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use docfold::config::InvalidationsConfig;
use docfold::sink::invalidate::{Invalidation, RedisCache};
use docfold::store::Store;

use crate::services::{self, PgCluster, temp_dir};

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 it signed,
/// made with the openssl command (PEM files in `dir`).
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certificates {
    fn make(dir: &Path, name: &str) -> Certificates {
        let file = |suffix: &str| format!("{name}-{suffix}");
        let subject = format!("/CN=docfold test CA {name}");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-keyout",
                &file("ca.key"),
                "-out",
                &file("ca.pem"),
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &file("server.key"),
                "-out",
                &file("server.csr"),
            ],
        );
        std::fs::write(dir.join(file("san.ext")), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            .expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &file("server.csr"),
                "-CA",
                &file("ca.pem"),
                "-CAkey",
                &file("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &file("san.ext"),
                "-out",
                &file("server.pem"),
            ],
        );
        Certificates {
            ca: dir.join(file("ca.pem")),
            cert: dir.join(file("server.pem")),
            key: dir.join(file("server.key")),
        }
    }
}

#[tokio::test]
async fn postgres_over_tls_is_verified_and_a_wrong_ca_is_refused() {
    let dir = temp_dir("tls-pg");
    let ours = Certificates::make(&dir, "ours");
    let other = Certificates::make(&dir, "other");
    for file in [&ours.cert, &ours.key] {
        services::give_to_postgres(file);
    }
    std::fs::set_permissions(&ours.key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    let settings =
        format!("-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", ours.cert.display(), ours.key.display());
    // Only TLS connections over TCP are let in.
    let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
    let cluster = PgCluster::start_with("tls-pg-cluster", &settings, Some(hba));
    let url = |query: &str| format!("{}?{query}", cluster.url());

    let verified = url(&format!("sslmode=verify-full&sslrootcert={}", ours.ca.display()));
    let store = Store::open(&verified).await.expect("verify-full with the server's CA connects");
    assert_eq!(store.checkpoint("tls", 0).await.expect("a query over TLS"), None);

    let Err(plain) = Store::open(&url("sslmode=disable")).await else { panic!("the server takes TLS only") };
    assert!(plain.to_string().contains("no encryption") || plain.to_string().contains("pg_hba"), "{plain}");

    let wrong = url(&format!("sslmode=verify-full&sslrootcert={}", other.ca.display()));
    let started = Instant::now();
    let Err(refused) = Store::open(&wrong).await else { panic!("a certificate of another CA is refused") };
    let message = refused.to_string();
    assert!(message.to_lowercase().contains("certificate"), "names the certificate: {message}");
    assert!(started.elapsed() < Duration::from_secs(20), "refused at once, not retried until the timeout");
}

/// A Redis server of the test's own on a TLS port only; killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(certificates: &Certificates) -> TlsRedis {
        let binary = std::env::var("DOCFOLD_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = services::free_port();
        let child = Command::new(&binary)
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&certificates.cert)
            .arg("--tls-key-file")
            .arg(&certificates.key)
            .arg("--tls-ca-cert-file")
            .arg(&certificates.ca)
            .args(["--tls-auth-clients", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {binary} (DOCFOLD_TEST_REDIS_SERVER; ./scripts/services up): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server with TLS did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsRedis { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cache_config(ca: &Path) -> InvalidationsConfig {
    InvalidationsConfig { redis_ca_file: Some(ca.into()), ..InvalidationsConfig::default() }
}

#[tokio::test]
async fn redis_over_tls_is_verified_and_a_wrong_ca_is_refused() {
    let dir = temp_dir("tls-redis");
    let ours = Certificates::make(&dir, "ours");
    let other = Certificates::make(&dir, "other");
    let server = TlsRedis::start(&ours);
    let url = format!("rediss://localhost:{}/", server.port);
    let item = Invalidation {
        doc_id: "doc-tls".into(),
        version: 3,
        region: "local".into(),
        ..Invalidation::default()
    };

    let cache = RedisCache::open(&url, &cache_config(&ours.ca)).expect("open");
    let held = RedisCache::open(&url, &cache_config(&ours.ca)).expect("open");
    let mut conn = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(&ours.ca).expect("ca")) },
    )
    .expect("client")
    .get_multiplexed_async_connection()
    .await
    .expect("the test's own TLS connection");
    let _: () = redis::cmd("HSET")
        .arg(held.key("doc-tls"))
        .arg("version")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("cache an old version");
    assert_eq!(cache.invalidate(std::slice::from_ref(&item)).await.expect("invalidate over TLS"), 1);

    let wrong = RedisCache::open(&url, &cache_config(&other.ca)).expect("opens lazily");
    let Err(refused) = wrong.invalidate(&[item]).await else {
        panic!("a certificate of another CA is refused")
    };
    assert!(refused.to_string().to_lowercase().contains("certificate"), "names the certificate: {refused}");
    assert!(
        !refused.is_retryable(),
        "a wrong CA is a setting to fix, not an outage to wait out: {refused:?}"
    );
}

#[test]
fn the_kafka_client_speaks_tls_and_sasl() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::BaseProducer;
    let features = rdkafka::util::get_rdkafka_version();
    for (protocol, mechanism) in
        [("SSL", None), ("SASL_SSL", Some("SCRAM-SHA-512")), ("SASL_SSL", Some("OAUTHBEARER"))]
    {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1").set("security.protocol", protocol);
        if let Some(mechanism) = mechanism {
            config.set("sasl.mechanism", mechanism);
            if mechanism.starts_with("SCRAM") {
                config.set("sasl.username", "u").set("sasl.password", "p");
            } else {
                config.set("sasl.oauthbearer.config", "principal=docfold");
                config.set("enable.sasl.oauthbearer.unsecure.jwt", "true");
            }
        }
        let built: Result<BaseProducer, _> = config.create();
        assert!(
            built.is_ok(),
            "librdkafka {features:?} builds a {protocol} {mechanism:?} client: {:?}",
            built.err()
        );
    }
}
