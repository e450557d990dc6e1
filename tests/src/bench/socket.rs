//! Cross-process benchmarks of ipc-socket, with their raw baselines.
//!
//! The bench process is the client; an `ipc-peer` process is the server
//! (`socket-echo-server` for ipc-socket, `socket-raw-echo` for the raw baselines). Over a
//! local socket file and over TCP on 127.0.0.1:
//!
//! - round trip of a 64-byte message, beside a raw ping-pong of length-prefixed bytes over a
//!   plain `UnixStream` / `TcpStream`;
//! - streaming 64-byte and 64 KiB messages, beside a buffered stream of length-prefixed
//!   bytes (`BufWriter` of 64 KiB, one write per message, like ipc-socket's 64 KiB flush
//!   threshold and one frame per message);
//! - the tokio API beside the blocking one, for both.

use std::io::{BufReader, BufWriter, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::{MessageType, Receiver, Sender};
use ipc_socket::{Address, AsyncConnection, Connection, ConnectionConfig};
use serde::{Deserialize, Serialize};

use super::{Effort, Figure};
use crate::{Peer, TempDir};

const WAIT: Duration = Duration::from_secs(120);

/// The message of the benchmark roles: a byte payload (`serde_bytes`, one copy).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// [`Blob`]'s borrowing twin: the same wire format, decoded in place.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef<'a> {
    /// The bytes, borrowed from the receive buffer.
    #[serde(with = "serde_bytes")]
    pub bytes: &'a [u8],
}

/// The connection settings of the benchmark roles: no heartbeats (a bench measures only the
/// data path).
pub fn blob_config() -> ConnectionConfig {
    ConnectionConfig::new::<Blob>()
        .with_message_type(MessageType::named("ipc-tests.Blob/1"))
        .without_heartbeat()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Local,
    Tcp,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Local => "unix socket",
            Transport::Tcp => "tcp 127.0.0.1",
        }
    }

    fn raw_name(self) -> &'static str {
        match self {
            Transport::Local => "UnixStream",
            Transport::Tcp => "TcpStream",
        }
    }
}

/// A server process and the address it listens on.
struct Server {
    peer: Peer,
    address: Address,
    _dir: Option<TempDir>,
}

fn spawn_server(role: &str, mode: &str, transport: Transport) -> Result<Server> {
    let (address, dir) = match transport {
        Transport::Tcp => ("tcp:127.0.0.1:0".to_owned(), None),
        Transport::Local => {
            let dir = TempDir::new("ipc-bench")?;
            let path = dir.path().join("s.sock");
            (format!("unix:{}", path.display()), Some(dir))
        }
    };
    let mut peer = Peer::spawn_role(
        format!("{role} {mode}"),
        role,
        ["--address", &address, "--mode", mode],
    )?;
    let bound = peer.expect_prefixed("ready address=", WAIT)?;
    Ok(Server {
        peer,
        address: bound.parse()?,
        _dir: dir,
    })
}

impl Server {
    fn finish(mut self) -> Result<()> {
        self.peer.wait_success(WAIT)
    }
}

struct Counts {
    round_trips: u64,
    small: u64,
    large: u64,
}

fn counts(effort: Effort) -> Counts {
    match effort {
        Effort::Quick => Counts {
            round_trips: 2_000,
            small: 20_000,
            large: 200,
        },
        Effort::Full => Counts {
            round_trips: 50_000,
            small: 1_000_000,
            large: 5_000,
        },
    }
}

/// Measures ipc-socket's figures and their baselines.
///
/// The machine may be shared, so every figure is the best of several runs (`Full`: 5; round
/// trips also keep their fastest batch), and the runs of a figure and of its baseline are
/// interleaved so that both see the same noise.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let counts = counts(effort);
    let reps = match effort {
        Effort::Quick => 1,
        Effort::Full => 5,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let mut figures = Vec::new();
    for transport in [Transport::Local, Transport::Tcp] {
        let label = transport.label();
        let (mut raw_rt, mut ipc_rt, mut async_rt) = (Duration::MAX, Duration::MAX, Duration::MAX);
        for _ in 0..reps {
            raw_rt = raw_rt.min(raw_round_trip(transport, counts.round_trips)?);
            ipc_rt = ipc_rt.min(ipc_round_trip(transport, counts.round_trips)?);
            async_rt =
                async_rt.min(runtime.block_on(async_round_trip(transport, counts.round_trips))?);
        }
        figures.push(latency(
            format!("round trip, {label}"),
            ipc_rt,
            format!("raw {} ping-pong", transport.raw_name()),
            raw_rt,
        ));
        figures.push(latency(
            format!("round trip async, {label}"),
            async_rt,
            "ipc-socket blocking round trip".to_owned(),
            ipc_rt,
        ));
        let sizes = [
            (64usize, counts.small),
            (1024, counts.small / 8),
            (64 * 1024, counts.large),
        ];
        for (size, count) in sizes {
            let (mut raw, mut ipc, mut async_) = (Duration::MAX, Duration::MAX, Duration::MAX);
            for _ in 0..reps {
                raw = raw.min(raw_stream(transport, size, count)?);
                ipc = ipc.min(ipc_stream(transport, size, count)?);
                async_ = async_.min(runtime.block_on(async_stream(transport, size, count))?);
            }
            figures.push(throughput(
                format!("stream, {label}"),
                size,
                count,
                ipc,
                format!(
                    "raw buffered {} of length-prefixed bytes",
                    transport.raw_name()
                ),
                raw,
            ));
            figures.push(throughput(
                format!("stream async, {label}"),
                size,
                count,
                async_,
                "ipc-socket blocking stream".to_owned(),
                ipc,
            ));
        }
    }
    // WebSocket, beside raw tokio-tungstenite (`bench/ws.rs`).
    figures.extend(super::ws::run(effort)?);
    // TLS over TCP, beside raw tokio-rustls and beside plain TCP (bench/tls.rs).
    figures.extend(super::tls::run(effort)?);
    Ok(figures)
}

/// An ipc-socket round-trip figure of 64-byte messages beside its baseline.
pub(super) fn latency(
    case: impl Into<String>,
    per_op: Duration,
    baseline_name: impl Into<String>,
    baseline: Duration,
) -> Figure {
    Figure {
        mechanism: "ipc-socket".to_owned(),
        case: case.into(),
        payload_bytes: 64,
        metric: "latency".to_owned(),
        value: per_op.as_nanos() as f64,
        unit: "ns".to_owned(),
        baseline_name: baseline_name.into(),
        baseline_value: baseline.as_nanos() as f64,
    }
}

/// An ipc-socket stream figure of `count` messages of `size` bytes beside its baseline:
/// msg/s, or MB/s from 1 KiB up.
pub(super) fn throughput(
    case: impl Into<String>,
    size: usize,
    count: u64,
    elapsed: Duration,
    baseline_name: impl Into<String>,
    baseline: Duration,
) -> Figure {
    let (value, base, unit) = if size >= 1024 {
        let bytes = (size as u64 * count) as f64;
        (
            bytes / elapsed.as_secs_f64() / 1e6,
            bytes / baseline.as_secs_f64() / 1e6,
            "MB/s",
        )
    } else {
        (
            count as f64 / elapsed.as_secs_f64(),
            count as f64 / baseline.as_secs_f64(),
            "msg/s",
        )
    };
    Figure {
        mechanism: "ipc-socket".to_owned(),
        case: case.into(),
        payload_bytes: size as u64,
        metric: "throughput".to_owned(),
        value,
        unit: unit.to_owned(),
        baseline_name: baseline_name.into(),
        baseline_value: base,
    }
}

/// The per-operation time of the fastest of 20 batches of a loop: a shared machine's bursts
/// of load hit some batches, rarely all of them.
struct BestBatch {
    size: u64,
    done: u64,
    started: Instant,
    best: Duration,
}

impl BestBatch {
    fn new(n: u64) -> BestBatch {
        BestBatch {
            size: (n / 20).max(1),
            done: 0,
            started: Instant::now(),
            best: Duration::MAX,
        }
    }

    fn tick(&mut self) {
        self.done += 1;
        if self.done == self.size {
            let per_op = self.started.elapsed() / self.size as u32;
            self.best = self.best.min(per_op);
            self.done = 0;
            self.started = Instant::now();
        }
    }

    fn best(&self) -> Duration {
        self.best
    }
}

/// A raw stream to a `socket-raw-echo` server.
enum RawStream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl RawStream {
    fn connect(address: &Address) -> Result<RawStream> {
        Ok(match address {
            Address::Tcp(host_port) => {
                let stream = std::net::TcpStream::connect(host_port.as_str())?;
                stream.set_nodelay(true)?;
                RawStream::Tcp(stream)
            }
            Address::Path(path) => RawStream::Unix(std::os::unix::net::UnixStream::connect(path)?),
            _ => bail!("raw streams need a tcp: or unix: address"),
        })
    }
}

/// Per-round-trip time of a raw ping-pong: one write of length + payload, buffered reads.
fn raw_round_trip(transport: Transport, n: u64) -> Result<Duration> {
    let server = spawn_server("socket-raw-echo", "echo", transport)?;
    let per_op = {
        let stream = RawStream::connect(&server.address)?;
        match &stream {
            RawStream::Unix(s) => raw_ping_pong(s, n)?,
            RawStream::Tcp(s) => raw_ping_pong(s, n)?,
        }
    };
    server.finish()?;
    Ok(per_op)
}

fn raw_ping_pong<S: Read + Write + Copy>(stream: S, n: u64) -> Result<Duration> {
    let mut message = Vec::with_capacity(68);
    message.extend_from_slice(&64u32.to_le_bytes());
    message.extend_from_slice(&[7u8; 64]);
    let mut writer = stream;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut reply = [0u8; 68];
    let mut timer = BestBatch::new(n);
    for _ in 0..n {
        writer.write_all(&message)?;
        reader.read_exact(&mut reply)?;
        timer.tick();
    }
    Ok(timer.best())
}

/// Time to stream `count` raw messages of `size` bytes and get the end marker back.
fn raw_stream(transport: Transport, size: usize, count: u64) -> Result<Duration> {
    let server = spawn_server("socket-raw-echo", "sink", transport)?;
    let elapsed = {
        let stream = RawStream::connect(&server.address)?;
        match &stream {
            RawStream::Unix(s) => raw_stream_on(s, size, count)?,
            RawStream::Tcp(s) => raw_stream_on(s, size, count)?,
        }
    };
    server.finish()?;
    Ok(elapsed)
}

fn raw_stream_on<S: Read + Write + Copy>(stream: S, size: usize, count: u64) -> Result<Duration> {
    // Length and payload in one buffer, written with one call, as ipc-socket writes a frame:
    // two calls would cost a 64 KiB message an extra system call for its 4-byte length
    // (`BufWriter` passes writes of its capacity or more straight through), slowing the
    // baseline down, not ipc-socket.
    let mut message = Vec::with_capacity(4 + size);
    message.extend_from_slice(&(size as u32).to_le_bytes());
    message.resize(4 + size, 7u8);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    let mut reader = stream;
    let started = Instant::now();
    for _ in 0..count {
        writer.write_all(&message)?;
    }
    writer.write_all(&0u32.to_le_bytes())?;
    writer.flush()?;
    let mut marker = [0u8; 4];
    reader.read_exact(&mut marker)?;
    Ok(started.elapsed())
}

fn ipc_round_trip(transport: Transport, n: u64) -> Result<Duration> {
    let server = spawn_server("socket-echo-server", "echo", transport)?;
    let per_op = {
        let mut conn = Connection::<Blob>::connect(&server.address, blob_config())?;
        let message = Blob {
            bytes: vec![7u8; 64],
        };
        let mut timer = BestBatch::new(n);
        for _ in 0..n {
            conn.send(&message)?;
            let reply = conn.recv()?; // recv flushes the request first
            if reply.bytes.len() != 64 {
                bail!("echo of {} bytes, sent 64", reply.bytes.len());
            }
            timer.tick();
        }
        let elapsed = timer.best();
        conn.close()?;
        elapsed
    };
    server.finish()?;
    Ok(per_op)
}

fn ipc_stream(transport: Transport, size: usize, count: u64) -> Result<Duration> {
    let server = spawn_server("socket-echo-server", "sink", transport)?;
    let elapsed = {
        let mut conn = Connection::<Blob>::connect(&server.address, blob_config())?;
        let message = Blob {
            bytes: vec![7u8; size],
        };
        let started = Instant::now();
        for _ in 0..count {
            conn.send(&message)?;
        }
        conn.send(&Blob { bytes: Vec::new() })?;
        let marker = conn.recv()?;
        if !marker.bytes.is_empty() {
            bail!("expected the empty end marker back");
        }
        let elapsed = started.elapsed();
        conn.close()?;
        elapsed
    };
    server.finish()?;
    Ok(elapsed)
}

async fn async_round_trip(transport: Transport, n: u64) -> Result<Duration> {
    let server = spawn_server("socket-echo-server", "echo", transport)?;
    let per_op = {
        let mut conn = AsyncConnection::<Blob>::connect(&server.address, blob_config()).await?;
        let message = Blob {
            bytes: vec![7u8; 64],
        };
        let mut timer = BestBatch::new(n);
        for _ in 0..n {
            conn.send(&message).await?;
            let reply = conn.recv().await?;
            if reply.bytes.len() != 64 {
                bail!("echo of {} bytes, sent 64", reply.bytes.len());
            }
            timer.tick();
        }
        let elapsed = timer.best();
        conn.close().await?;
        elapsed
    };
    server.finish()?;
    Ok(per_op)
}

async fn async_stream(transport: Transport, size: usize, count: u64) -> Result<Duration> {
    let server = spawn_server("socket-echo-server", "sink", transport)?;
    let conn = AsyncConnection::<Blob>::connect(&server.address, blob_config()).await?;
    let elapsed = stream_to_sink(conn, size, count).await?;
    server.finish()?;
    Ok(elapsed)
}

/// Streams `count` messages of `size` bytes to a sink server, then an empty end marker,
/// and waits for the sink to echo the marker (so every message was read); the time from
/// the first send to the echo. Closes the connection.
pub(super) async fn stream_to_sink(
    mut conn: AsyncConnection<Blob>,
    size: usize,
    count: u64,
) -> Result<Duration> {
    let message = Blob {
        bytes: vec![7u8; size],
    };
    let started = Instant::now();
    for _ in 0..count {
        conn.send(&message).await?;
    }
    conn.send(&Blob { bytes: Vec::new() }).await?;
    let marker = conn.recv().await?;
    if !marker.bytes.is_empty() {
        bail!("expected the empty end marker back");
    }
    let elapsed = started.elapsed();
    conn.close().await?;
    Ok(elapsed)
}
