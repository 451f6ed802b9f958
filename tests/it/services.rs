//! Where the real services are. `./scripts/test` starts them (scripts/services) and exports
//! their addresses; a test that needs one and cannot reach it fails, it never skips.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn reachable(addr: &str) -> bool {
    addr.parse().is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn require(name: &str, var: &str, default: &str, addr_of: impl Fn(&str) -> String) -> String {
    let value = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let addr = addr_of(&value);
    assert!(
        reachable(&addr),
        "{name} is not reachable at {addr} ({var}={value}). Start the services with ./scripts/services up \
         (./scripts/test does it); tests never skip a missing service."
    );
    value
}

/// Kafka bootstrap servers (tansu), e.g. `127.0.0.1:9092`.
pub fn kafka() -> String {
    require("Kafka (tansu)", "DOCFOLD_TEST_KAFKA", "127.0.0.1:9092", |v| v.to_string())
}

/// A PostgreSQL URL of a server where the tests may create databases.
pub fn postgres_server() -> String {
    require("PostgreSQL", "DOCFOLD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres", |v| {
        let host = v.split('@').nth(1).unwrap_or(v);
        host.split('/').next().unwrap_or(host).to_string()
    })
}

/// A fresh PostgreSQL database for one test: its URL.
pub async fn postgres_database(name: &str) -> String {
    use sqlx::Executor;
    let server = postgres_server();
    let database = format!("docfold_{}_{}", name, unique());
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&server).await.expect("connect to PostgreSQL");
    admin.execute(format!("CREATE DATABASE {database}").as_str()).await.expect("create test database");
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{database}")
}

/// A name no other test (or earlier run) uses.
pub fn unique() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % (1 << 40))
}

/// A fresh temporary folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("docfold-{name}-{}", unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// DynamoDB Local's endpoint, e.g. `http://127.0.0.1:8000`.
pub fn dynamodb() -> String {
    require("DynamoDB Local", "DOCFOLD_TEST_DYNAMODB", "http://127.0.0.1:8000", host_port)
}

/// The Redis URL, e.g. `redis://127.0.0.1:6379`.
pub fn redis() -> String {
    require("Redis", "DOCFOLD_TEST_REDIS", "redis://127.0.0.1:6379", host_port)
}

/// The S3 server's endpoint and a bucket the tests share (created if missing; each test
/// writes under its own prefix).
pub fn s3_bucket() -> (String, String) {
    let endpoint = require("the S3 server", "DOCFOLD_TEST_S3", "http://127.0.0.1:9000", host_port);
    create_bucket(&endpoint, "docfold-test");
    (endpoint, "docfold-test".into())
}

/// Creates `bucket` on the S3 server at `endpoint` unless it exists.
pub fn create_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(host_port(endpoint)).expect("connect to the S3 server");
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        host_port(endpoint)
    );
    stream.write_all(request.as_bytes()).expect("create bucket");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.contains("BucketAlreadyOwnedByYou"),
        "create bucket: {answer}"
    );
}

/// The tansu binary scripts/services installed (the outage test runs a broker of its own).
pub fn tansu() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("DOCFOLD_TEST_TANSU").unwrap_or_else(|_| ".services/bin/tansu".into()));
    assert!(
        path.is_file(),
        "no tansu at {} (DOCFOLD_TEST_TANSU); ./scripts/services up installs it",
        path.display()
    );
    path
}

/// The Python with pyarrow and DuckDB that scripts/services installs.
/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

/// A tansu broker of the test's own on `port`, with `storage` (`memory://tansu/`, `s3://…`);
/// returns once it accepts connections.
pub fn start_tansu(port: u16, storage: &str, env: &[(&str, &str)]) -> std::process::Child {
    use std::time::{Duration, Instant};
    let listener = format!("tcp://127.0.0.1:{port}");
    let child = std::process::Command::new(tansu())
        .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
        .args(["--storage-engine", storage])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tansu");
    let since = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(since.elapsed() < Duration::from_secs(10), "tansu did not open port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The response (headers and body) to `GET path` on 127.0.0.1:`port`, if it answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The Prometheus page on `port` once `ready` says it holds what the test waits for
/// (within 20 s).
pub fn scrape_until(port: u16, ready: impl Fn(&str) -> bool) -> String {
    let scrape = || http_get(port, "/metrics");
    let since = std::time::Instant::now();
    loop {
        if let Some(body) = scrape().filter(|b| ready(b)) {
            return body;
        }
        assert!(since.elapsed().as_secs() < 20, "the metrics on port {port} never held what was awaited");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The value of metric `name` with every one of `labels` in a Prometheus page.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let prefix = format!("{name}{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub fn python() -> String {
    let python = std::env::var("DOCFOLD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pyarrow, duckdb"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import pyarrow and duckdb (DOCFOLD_TEST_PYTHON); ./scripts/services up installs them"
    );
    python
}

/// `host:port` of a URL like `scheme://host:port/…`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// A PostgreSQL cluster of a test's own (Debian's initdb and pg_ctl, from
/// `DOCFOLD_TEST_PG_BIN`), so the test may restart or stop it; stopped when dropped.
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    settings: String,
}

impl PgCluster {
    pub fn start(name: &str) -> PgCluster {
        PgCluster::start_with(name, "", None)
    }

    /// A cluster started with extra `-c name=value` `settings` and, when given, this
    /// `pg_hba.conf` in place of initdb's.
    pub fn start_with(name: &str, settings: &str, hba: Option<&str>) -> PgCluster {
        let bin = PathBuf::from(std::env::var("DOCFOLD_TEST_PG_BIN").unwrap_or_else(|_| {
            let found = std::fs::read_dir("/usr/lib/postgresql")
                .ok()
                .and_then(|d| d.flatten().map(|e| e.path()).max());
            found.map(|p| p.join("bin").display().to_string()).unwrap_or_default()
        }));
        assert!(
            bin.join("initdb").is_file(),
            "no PostgreSQL server binaries at {} (DOCFOLD_TEST_PG_BIN); ./scripts/services up installs them",
            bin.display()
        );
        let dir = temp_dir(name);
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let cluster = PgCluster { bin, data: dir.join("data"), port, settings: settings.into() };
        if is_root() {
            let status = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the cluster's folder to postgres");
        }
        let data = cluster.data.display().to_string();
        cluster.pg(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
        );
        if let Some(hba) = hba {
            std::fs::write(cluster.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        cluster.pg_ctl("start", &[]);
        cluster
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast`: every connection is cut (SQLSTATE 57P01), the server comes back.
    pub fn restart_fast(&self) {
        self.pg_ctl("restart", &["-m", "fast"]);
    }

    fn pg_ctl(&self, action: &str, extra: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
            self.port,
            self.data.parent().expect("cluster folder").display(),
            self.settings
        );
        let data = self.data.display().to_string();
        let log = self.data.parent().expect("cluster folder").join("pg.log").display().to_string();
        let mut args = vec!["-D", &data, "-l", &log, "-w", "-o", &options, action];
        args.extend_from_slice(extra);
        self.pg("pg_ctl", &args);
    }

    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = command.args(args).output().expect("run a PostgreSQL tool");
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = std::panic::catch_unwind(|| self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]));
    }
}

/// Gives a file to the `postgres` user (the server reads its key and certificate as it).
pub fn give_to_postgres(path: &Path) {
    if is_root() {
        let status = std::process::Command::new("chown").arg("postgres:postgres").arg(path).status();
        assert!(status.is_ok_and(|s| s.success()), "chown {} to postgres", path.display());
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
