//! The metrics listener: `/metrics` (Prometheus' text format) and `/health` (for probes and
//! load balancers: 200 while every partition's flushes go through, 503 with the partitions
//! whose flushes have failed for longer than `UNHEALTHY_AFTER`). One request per
//! connection (`Connection: close`), which is what scrapers and probes send.

use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A partition whose flushes have failed this long makes `/health` answer 503 (a
/// dependency outage: a balancer sends editors to a healthy region; the process keeps
/// retrying, so a liveness probe on it restarts nothing that would help).
const UNHEALTHY_AFTER: Duration = Duration::from_secs(60);

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Since when each partition's flushes have been failing.
static FAILING: LazyLock<Mutex<BTreeMap<String, Instant>>> = LazyLock::new(Mutex::default);

/// Notes that `partition`'s flushes fail (`true`) or went through (`false`).
pub(super) fn note_failing(partition: &str, failing: bool) {
    let mut failing_since = FAILING.lock().expect("health lock");
    if failing {
        failing_since.entry(partition.to_owned()).or_insert_with(Instant::now);
    } else {
        failing_since.remove(partition);
    }
}

/// The `/health` answer: status code and JSON body.
fn health() -> (u16, String) {
    let failing_since = FAILING.lock().expect("health lock");
    let failing: Vec<(&String, u64)> = failing_since
        .iter()
        .map(|(partition, since)| (partition, since.elapsed().as_secs()))
        .filter(|(_, seconds)| *seconds >= UNHEALTHY_AFTER.as_secs())
        .collect();
    let body = serde_json::json!({
        "status": if failing.is_empty() { "ok" } else { "failing" },
        "failing_partitions": failing.iter().map(|(p, s)| serde_json::json!({"partition": p, "failing_for_seconds": s})).collect::<Vec<_>>(),
    });
    (if failing.is_empty() { 200 } else { 503 }, body.to_string())
}

/// Serves the listener on `listener` until the process ends.
pub(super) async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let mut read = 0;
            // The request line and headers end with an empty line; a body is not expected.
            // A client that sends less within REQUEST_TIMEOUT is answered with what came.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while read < request.len() && !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut request[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
            let line = String::from_utf8_lossy(&request[..read]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (code, kind, body) = match path.split('?').next() {
                Some("/metrics") => (200, "text/plain; version=0.0.4", handle.render()),
                Some("/health") => {
                    let (code, body) = health();
                    (code, "application/json", body)
                }
                _ => (404, "text/plain", "try /metrics or /health\n".to_string()),
            };
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                _ => "Service Unavailable",
            };
            let head = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds `addr` and installs the recorder: the caller spawns [`serve`].
pub(super) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_partition_failing_for_a_while_makes_health_503() {
        super::note_failing("p-test", true);
        assert_eq!(super::health().0, 200, "failing for less than a minute is still healthy");
        super::FAILING
            .lock()
            .expect("lock")
            .insert("p-test".into(), std::time::Instant::now() - super::UNHEALTHY_AFTER);
        let (code, body) = super::health();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("\"partition\":\"p-test\""), "{body}");
        super::note_failing("p-test", false);
        assert_eq!(super::health().0, 200);
    }
}
