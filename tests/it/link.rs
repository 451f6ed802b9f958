//! A network link for the tests (this kernel has no `netem`): a TCP proxy on its own port
//! that delays what it carries by a one-way latency plus seeded jitter in each direction
//! (never reordering a stream), counts the bytes, and can be cut: while cut, the port
//! refuses connections and open ones are closed.
//!
//! In front of a Kafka broker (`Protocol::Kafka`) it also rewrites the broker addresses in
//! Metadata and FindCoordinator responses to its own, so a client that bootstrapped through
//! the link keeps talking through it instead of reaching the broker's advertised address.

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::{ApiKey, FindCoordinatorResponse, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Kafka,
}

/// One direction's delay: every chunk arrives `one_way + U(0, jitter)` after it was read,
/// and never before the chunk read before it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delay {
    pub one_way: Duration,
    pub jitter: Duration,
}

pub struct Link {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    bytes: Arc<AtomicU64>,
}

/// What a connection's two directions share: the correlation ids of Kafka requests in
/// flight, with their API key and version, so their responses can be decoded.
type InFlight = Arc<Mutex<HashMap<i32, (i16, i16)>>>;

impl Link {
    /// A link without delay.
    pub async fn start(target: String) -> Link {
        Link::with(target, Protocol::Tcp, Delay::default(), 0).await
    }

    pub async fn with(target: String, protocol: Protocol, delay: Delay, seed: u64) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind link");
        let addr = listener.local_addr().expect("addr");
        let (up, state) = watch::channel(true);
        let bytes = Arc::new(AtomicU64::new(0));
        let conn = Conn { addr, target, protocol, delay, bytes: bytes.clone() };
        tokio::spawn(serve(Some(listener), conn, state, seed));
        Link { addr, up, bytes }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send(up).expect("link running");
    }

    /// Bytes carried so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Conn {
    addr: SocketAddr,
    target: String,
    protocol: Protocol,
    delay: Delay,
    bytes: Arc<AtomicU64>,
}

async fn serve(mut listener: Option<TcpListener>, conn: Conn, mut state: watch::Receiver<bool>, seed: u64) {
    let mut connections = 0u64;
    loop {
        let Some(open) = &listener else {
            // Cut: nothing listens (connections are refused) until it is up again.
            if state.changed().await.is_err() {
                return;
            }
            if *state.borrow() {
                listener = Some(TcpListener::bind(conn.addr).await.expect("rebind link"));
            }
            continue;
        };
        tokio::select! {
            accepted = open.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections += 1;
                let (conn, mut state) = (conn.clone(), state.clone());
                let seed = seed.wrapping_mul(31).wrapping_add(connections);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&conn.target).await else { return };
                    tokio::select! {
                        () = carry(client, server, &conn, seed) => {}
                        _ = state.wait_for(|up| !up) => {} // cut
                    }
                });
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*state.borrow() {
                    listener = None;
                }
            }
        }
    }
}

/// Both directions of one connection, until either side closes.
async fn carry(client: TcpStream, server: TcpStream, conn: &Conn, seed: u64) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let in_flight = InFlight::default();
    let rewrite = (conn.protocol == Protocol::Kafka).then(|| (in_flight.clone(), conn.addr));
    let requests = (conn.protocol == Protocol::Kafka).then_some(in_flight);
    let up = direction(client_read, server_write, conn, seed, requests.map(Side::Requests));
    let down = direction(
        server_read,
        client_write,
        conn,
        seed ^ 0x5eed,
        rewrite.map(|(f, a)| Side::Responses(f, a)),
    );
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// How a Kafka direction treats its frames.
enum Side {
    /// Client to broker: remember each request's key and version.
    Requests(InFlight),
    /// Broker to client: rewrite broker addresses to the link's.
    Responses(InFlight, SocketAddr),
}

/// Reads `from` (whole Kafka frames, or chunks), delays, writes `to`, in order. Dropped
/// (a cut), it delivers nothing more.
async fn direction<R, W>(mut from: R, mut to: W, conn: &Conn, seed: u64, side: Option<Side>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (send, mut receive) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let deliver = async move {
        while let Some((at, bytes)) = receive.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let read = async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last = Instant::now();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            let chunk = match &side {
                None => match from.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => buf.split().to_vec(),
                },
                Some(side) => match read_frame(&mut from, &mut buf).await {
                    Some(frame) => side.pass(frame),
                    None => break,
                },
            };
            conn.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let jitter = conn.delay.jitter.mul_f64(rng.random::<f64>());
            last = last.max(Instant::now() + conn.delay.one_way + jitter);
            if send.send((last, chunk)).is_err() {
                break;
            }
        }
    };
    tokio::join!(read, deliver);
}

/// One size-prefixed Kafka frame (the prefix included), or `None` at the end.
async fn read_frame<R: AsyncRead + Unpin>(from: &mut R, buf: &mut BytesMut) -> Option<Vec<u8>> {
    loop {
        if buf.len() >= 4 {
            let size = usize::try_from(i32::from_be_bytes(buf[..4].try_into().ok()?)).ok()?;
            if buf.len() >= 4 + size {
                return Some(buf.split_to(4 + size).to_vec());
            }
        }
        match from.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

impl Side {
    fn pass(&self, frame: Vec<u8>) -> Vec<u8> {
        match self {
            Side::Requests(in_flight) => {
                if frame.len() >= 12 {
                    let key = i16::from_be_bytes([frame[4], frame[5]]);
                    let version = i16::from_be_bytes([frame[6], frame[7]]);
                    let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
                    in_flight.lock().expect("in flight").insert(correlation, (key, version));
                }
                frame
            }
            Side::Responses(in_flight, addr) => {
                let correlation = frame.get(4..8).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let request = correlation.and_then(|c| in_flight.lock().expect("in flight").remove(&c));
                match request {
                    Some((key, version)) => rewrite(&frame, key, version, *addr).unwrap_or(frame),
                    None => frame,
                }
            }
        }
    }
}

/// The response frame with every broker address replaced by `addr`, for the responses that
/// carry them; `None` leaves the frame as it is.
fn rewrite(frame: &[u8], key: i16, version: i16, addr: SocketAddr) -> Option<Vec<u8>> {
    let api = ApiKey::try_from(key).ok()?;
    if !matches!(api, ApiKey::Metadata | ApiKey::FindCoordinator) {
        return None;
    }
    let header_version = api.response_header_version(version);
    let mut body = &frame[4..];
    let header = ResponseHeader::decode(&mut body, header_version).ok()?;
    let host = || StrBytes::from_string(addr.ip().to_string());
    let port = i32::from(addr.port());
    let mut out = Vec::new();
    header.encode(&mut out, header_version).ok()?;
    if api == ApiKey::Metadata {
        let mut response = MetadataResponse::decode(&mut body, version).ok()?;
        for broker in &mut response.brokers {
            (broker.host, broker.port) = (host(), port);
        }
        response.encode(&mut out, version).ok()?;
    } else {
        let mut response = FindCoordinatorResponse::decode(&mut body, version).ok()?;
        (response.host, response.port) = (host(), port);
        for coordinator in &mut response.coordinators {
            (coordinator.host, coordinator.port) = (host(), port);
        }
        response.encode(&mut out, version).ok()?;
    }
    if body.has_remaining() {
        return None; // not what we decoded: pass it on untouched
    }
    let mut framed = i32::try_from(out.len()).ok()?.to_be_bytes().to_vec();
    framed.extend_from_slice(&out);
    Some(framed)
}

/// A Kafka client that bootstrapped through a link talks to the broker only through it: its
/// records pay the one-way delay, the link counts their bytes, and with the link cut the
/// client cannot deliver (it did not go around to the broker's advertised address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_client_behind_a_link_reaches_the_broker_only_through_it() {
    use docfold::log::kafka::KafkaLog;
    use docfold::log::{LogReader, LogWriter};
    let brokers = crate::services::kafka();
    let topic = format!("link-{}", crate::services::unique());
    KafkaLog::create_topic(&brokers, &topic, (1, 1), &[], &[]).await.expect("topic");
    let delay = Delay { one_way: Duration::from_millis(40), jitter: Duration::from_millis(10) };
    let link = Link::with(crate::services::host_port(&brokers), Protocol::Kafka, delay, 7).await;
    let via = link.addr.to_string();
    let timeout = [
        ("message.timeout.ms".to_string(), "3000".to_string()),
        ("reconnect.backoff.max.ms".to_string(), "500".to_string()),
    ];
    let log = KafkaLog::connect(&via, &topic, &timeout).expect("connect through the link");
    let mut writer = log.writer().expect("producer");
    let started = std::time::Instant::now();
    tokio::task::block_in_place(|| {
        writer.append(b"k", b"through the link").expect("append");
        writer.flush().expect("delivered through the link");
    });
    // Metadata, then the produce request and its answer: at least two round trips.
    assert!(started.elapsed() >= Duration::from_millis(4 * 40), "{:?}", started.elapsed());
    let carried = link.bytes();
    assert!(carried > 0, "the link carried the client's traffic");
    let mut reader = log.reader().expect("consumer");
    let mut records = Vec::new();
    tokio::task::block_in_place(|| {
        let since = std::time::Instant::now();
        while records.is_empty() && since.elapsed() < Duration::from_secs(10) {
            reader.read(0, 0, 10, &mut records).expect("read through the link");
        }
    });
    assert_eq!(records.first().map(|r| r.value.as_slice()), Some(&b"through the link"[..]));
    link.set_up(false);
    let cut = tokio::task::block_in_place(|| {
        writer.append(b"k", b"cut off").expect("append");
        writer.flush()
    });
    assert!(cut.is_err(), "with the link cut nothing is delivered (no way around it)");
    link.set_up(true);
    // A new producer session: tansu answers the old one's epoch bump after its timed-out
    // record with ProducerFenced, so a client starts over after a cut.
    let mut writer = log.writer().expect("producer");
    tokio::task::block_in_place(|| {
        writer.append(b"k", b"healed").expect("append");
        writer.flush().expect("delivered through the link once it is up again");
    });
    assert!(link.bytes() > carried);
}
