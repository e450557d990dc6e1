//! WebSocket rows of the ipc-socket bench, beside a raw tokio-tungstenite baseline doing the
//! same work in the same run.
//!
//! The bench process is the client (tokio); an `ipc-peer` process is the server, blocking in
//! both cases: `socket-echo-server` on a `ws://` address for ipc-socket, `socket-raw-ws`
//! (plain tungstenite: binary messages echoed, or read until an empty one) for the baseline.
//!
//! - round trip of a 64-byte message: ipc `AsyncConnection` send + recv beside a raw
//!   tokio-tungstenite send (flushed) and read of a 64-byte binary message;
//! - streaming 64-byte and 64 KiB messages: ipc-socket (which groups small frames into
//!   messages of up to 64 KiB) beside raw tokio-tungstenite `feed`ing one binary message
//!   per payload (tungstenite buffers the writes) and flushing at the end; both end with an
//!   end marker that comes back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_core::Stream as _;
use futures_sink::Sink as _;
use ipc_socket::{Address, AsyncConnection};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;

use super::socket::{Blob, blob_config, latency, stream_to_sink, throughput};
use super::{Effort, Figure};
use crate::Peer;

const WAIT: Duration = Duration::from_secs(120);

struct Server {
    peer: Peer,
    address: Address,
}

fn spawn_server(role: &str, mode: &str) -> Result<Server> {
    let mut peer = Peer::spawn_role(
        format!("{role} {mode}"),
        role,
        ["--address", "ws://127.0.0.1:0/bench", "--mode", mode],
    )?;
    let bound = peer.expect_prefixed("ready address=", WAIT)?;
    Ok(Server {
        peer,
        address: bound.parse()?,
    })
}

/// Measures the WebSocket figures and their raw baselines (interleaved runs, best of each).
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let (round_trips, small, large, reps) = match effort {
        Effort::Quick => (2_000, 20_000, 200, 1),
        Effort::Full => (20_000, 500_000, 2_000, 5),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let mut figures = Vec::new();
    let (mut raw_rt, mut ipc_rt) = (Duration::MAX, Duration::MAX);
    for _ in 0..reps {
        raw_rt = raw_rt.min(runtime.block_on(raw_round_trip(round_trips))?);
        ipc_rt = ipc_rt.min(runtime.block_on(ipc_round_trip(round_trips))?);
    }
    figures.push(latency(
        "round trip async, websocket",
        ipc_rt,
        "raw tokio-tungstenite ping-pong",
        raw_rt,
    ));
    for (size, count) in [(64usize, small), (64 * 1024, large)] {
        let (mut raw, mut ipc) = (Duration::MAX, Duration::MAX);
        for _ in 0..reps {
            raw = raw.min(runtime.block_on(raw_stream(size, count))?);
            ipc = ipc.min(runtime.block_on(ipc_stream(size, count))?);
        }
        figures.push(throughput(
            "stream async, websocket",
            size,
            count,
            ipc,
            "raw tokio-tungstenite stream of binary messages",
            raw,
        ));
    }
    Ok(figures)
}

/// The fastest batch's per-operation time (a shared machine's bursts hit some batches).
fn best_batch(times: &[Duration], batch: u64) -> Duration {
    times.iter().min().copied().unwrap_or(Duration::MAX) / batch as u32
}

async fn ipc_round_trip(n: u64) -> Result<Duration> {
    let server = spawn_server("socket-echo-server", "echo")?;
    let mut conn = AsyncConnection::<Blob>::connect(&server.address, blob_config()).await?;
    let message = Blob {
        bytes: vec![7u8; 64],
    };
    let batch = (n / 20).max(1);
    let mut times = Vec::new();
    for _ in 0..n / batch {
        let started = Instant::now();
        for _ in 0..batch {
            conn.send(&message).await?;
            let reply = conn.recv().await?;
            if reply.bytes.len() != 64 {
                bail!("echo of {} bytes, sent 64", reply.bytes.len());
            }
        }
        times.push(started.elapsed());
    }
    conn.close().await?;
    let mut peer = server.peer;
    peer.wait_success(WAIT)?;
    Ok(best_batch(&times, batch))
}

async fn ipc_stream(size: usize, count: u64) -> Result<Duration> {
    let server = spawn_server("socket-echo-server", "sink")?;
    let conn = AsyncConnection::<Blob>::connect(&server.address, blob_config()).await?;
    let elapsed = stream_to_sink(conn, size, count).await?;
    let mut peer = server.peer;
    peer.wait_success(WAIT)?;
    Ok(elapsed)
}

type RawWs = WebSocketStream<tokio::net::TcpStream>;

async fn raw_connect(address: &Address) -> Result<RawWs> {
    let Address::WebSocket { host_port, path } = address else {
        bail!("raw websocket needs a ws:// address");
    };
    let stream = tokio::net::TcpStream::connect(host_port.as_str()).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{host_port}{path}"), stream).await?;
    Ok(ws)
}

async fn send(ws: &mut RawWs, message: Message) -> Result<()> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *ws).poll_ready(cx)).await?;
    std::pin::Pin::new(&mut *ws).start_send(message)?;
    Ok(())
}

async fn flush(ws: &mut RawWs) -> Result<()> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *ws).poll_flush(cx)).await?;
    Ok(())
}

async fn next_binary(ws: &mut RawWs) -> Result<tungstenite::Bytes> {
    loop {
        let item = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *ws).poll_next(cx)).await;
        match item.context("raw server closed")?? {
            Message::Binary(bytes) => return Ok(bytes),
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
}

async fn raw_close(mut ws: RawWs, server: Server) -> Result<()> {
    send(&mut ws, Message::Close(None)).await?;
    flush(&mut ws).await?;
    drop(ws);
    let mut peer = server.peer;
    peer.wait_success(WAIT)
}

async fn raw_round_trip(n: u64) -> Result<Duration> {
    let server = spawn_server("socket-raw-ws", "echo")?;
    let mut ws = raw_connect(&server.address).await?;
    let payload = tungstenite::Bytes::from(vec![7u8; 64]);
    let batch = (n / 20).max(1);
    let mut times = Vec::new();
    for _ in 0..n / batch {
        let started = Instant::now();
        for _ in 0..batch {
            send(&mut ws, Message::Binary(payload.clone())).await?;
            flush(&mut ws).await?;
            let reply = next_binary(&mut ws).await?;
            if reply.len() != 64 {
                bail!("echo of {} bytes, sent 64", reply.len());
            }
        }
        times.push(started.elapsed());
    }
    raw_close(ws, server).await?;
    Ok(best_batch(&times, batch))
}

async fn raw_stream(size: usize, count: u64) -> Result<Duration> {
    let server = spawn_server("socket-raw-ws", "sink")?;
    let mut ws = raw_connect(&server.address).await?;
    let payload = tungstenite::Bytes::from(vec![7u8; size]);
    let started = Instant::now();
    for _ in 0..count {
        send(&mut ws, Message::Binary(payload.clone())).await?;
    }
    send(&mut ws, Message::Binary(tungstenite::Bytes::new())).await?;
    flush(&mut ws).await?;
    let marker = next_binary(&mut ws).await?;
    if !marker.is_empty() {
        bail!("expected the empty end marker back");
    }
    let elapsed = started.elapsed();
    raw_close(ws, server).await?;
    Ok(elapsed)
}

/// `socket-raw-ws --address ws://HOST:PORT/PATH --mode echo|sink`: the raw baseline server,
/// plain blocking tungstenite on one connection: `echo` sends every binary message back,
/// `sink` reads them until an empty one and sends that back.
pub(crate) fn raw_server(address: &Address, mode: &str) -> Result<()> {
    let Address::WebSocket { host_port, path } = address else {
        bail!("socket-raw-ws needs a ws:// address");
    };
    let listener = std::net::TcpListener::bind(host_port.as_str())?;
    println!("ready address=ws://{}{path}", listener.local_addr()?);
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut ws = tungstenite::accept(stream).map_err(|err| anyhow::anyhow!("{err}"))?;
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(err) => return Err(err.into()),
        };
        match message {
            Message::Binary(bytes) if mode == "echo" || bytes.is_empty() => {
                ws.send(Message::Binary(bytes))?;
            }
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => {
                // Answered by tungstenite; read on until it reports the end.
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    println!("ok");
    Ok(())
}
