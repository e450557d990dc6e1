//! Peer roles for ipc-socket. Each role is named `socket-...`.
//!
//! - `socket-server --address A [--policy wait|drop-oldest|disconnect] [--max-connections N]
//!   [--heartbeat-ms MS] [--also B,C] [--http-file /PATH]`:
//!   a chat server (a publish/subscribe broker that also echoes requests), listening on A and
//!   on every address of `--also` (`--http-file` serves the text `served at /PATH` there on
//!   its `ws://` and `wss://` addresses). Prints `also address=B` per extra address, then
//!   `ready address=A`, then one line per connection event (`connected`, `closed conn=#n
//!   error=<kind>: <message>`, `rejected error=...`), and `ok` when its stdin closes.
//! - `socket-chat --address A --name NAME --count N [--expect a,b] [--progress K]`: joins the
//!   chat (subscribes to `chat`), prints `subscribed`, waits for `go` on stdin, publishes N
//!   lines while receiving everyone's, checks that every sender's lines arrive in order, and
//!   prints `ok received=.. senders=..` once every sender named in `--expect` (and itself)
//!   delivered N lines.
//! - `socket-watch --address A`: subscribes to `t` and prints `connected`, `disconnected`,
//!   `reconnected`, `got TEXT` as they happen; ends with `ok` after `got bye`.
//! - `socket-half-frame --address tcp:A`: sends a hello and half a frame, then waits to be
//!   killed.
//! - `socket-flood --address tcp:A --mode M [--connections K] [--count N] [--len L]
//!   [--every-ms MS]`: a hostile or broken client, speaking raw frames after a real
//!   handshake on each of K connections (in parallel), never reading after the hello:
//!   `ping` sends N pings; `large` sends N pings with an L-byte payload each; `request`
//!   sends N requests whose text is L bytes; `claim` sends
//!   a data header claiming L payload bytes and all but the last of them; `trickle` sends
//!   such a header and then one byte every MS ms; `silent` sends nothing and reads. For
//!   `claim` it prints `claimed` once every connection sent its bytes. Per connection it
//!   prints `end conn=i sent=BYTES how=done|write-failed|close code=C|eof` (`claim`,
//!   `trickle` and `silent` wait for the server to close), then `ok`. With `--hold true`,
//!   `ping` and `request` connections stay open, unread, after the flood: it prints
//!   `flooded` and waits for stdin to close before the `end` lines.
//! - `socket-probe --address A [--blocking true] [tls and token options]`: connects once
//!   (with [`Client`], or a blocking [`Connection`]), sends a request (blocking: a message)
//!   and waits for its echo, and prints `ok`, or `refused kind=<ErrorKind> error=<message>`
//!   if the connection or the handshake failed (see `crate::tls` for the options).
//! - `socket-blocking-server --address A --accepts N [tls and token options]`: a blocking
//!   [`Listener`] that runs N accepts one after the other. Prints `ready address=A`, then
//!   per accept `accepted certificate=<the client's certificate, or none>` and, once the
//!   client has gone after its messages were echoed, `closed`; or `rejected
//!   error=<kind>: <message>`. Then `ok`.
//! - `socket-echo-server --address A --mode echo|sink`, `socket-raw-echo --address A --mode
//!   echo|sink`: bench partners, see `bench/socket.rs` (the echo server takes the tls
//!   options of `crate::tls`); `socket-raw-tls-echo`: the raw rustls partner of
//!   `bench/tls.rs`.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_core::{ErrorKind, MessageType, Receiver, Sender};

use crate::bench::socket::{Blob, BlobRef, blob_config};
use ipc_socket::{
    Address, Client, ClientConfig, Connection, ConnectionConfig, Event, Heartbeat, Incoming,
    Listener, Policy, Server, ServerConfig,
};
use serde::{Deserialize, Serialize};

use super::Args;

/// One chat line: who sent it, its position in the sender's stream, and the text.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    /// The sender's name.
    pub from: String,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// The text.
    pub text: String,
}

/// The explicit wire name of [`ChatLine`], shared with the Python client.
pub const CHAT_TYPE: &str = "ipc-tests.ChatLine/1";

/// The connection settings of every chat role.
pub fn chat_config() -> ConnectionConfig {
    ConnectionConfig::new::<ChatLine>().with_message_type(MessageType::named(CHAT_TYPE))
}

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    match role {
        "socket-server" => Some(runtime().and_then(|rt| rt.block_on(server(args)))),
        "socket-chat" => Some(runtime().and_then(|rt| rt.block_on(chat(args)))),
        "socket-watch" => Some(runtime().and_then(|rt| rt.block_on(watch(args)))),
        "socket-half-frame" => Some(half_frame(args)),
        "socket-flood" => Some(flood(args)),
        "socket-echo-server" => Some(echo_server(args)),
        "socket-raw-echo" => Some(raw_echo(args)),
        "socket-raw-tls-echo" => Some(crate::bench::tls::raw_tls_echo(args)),
        "socket-probe" => Some(probe(args)),
        "socket-blocking-server" => Some(blocking_server(args)),
        _ => None,
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio runtime")
}

fn address(args: &Args) -> Result<Address> {
    Ok(args.text("address", "").parse::<Address>()?)
}

/// A line to stdout, flushed at once (the parent reads it to synchronise).
pub(super) fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Resolves when stdin reaches its end (the parent closed it or died).
pub(super) fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    rx
}

async fn server(args: &Args) -> Result<()> {
    let policy = match args.text("policy", "wait").as_str() {
        "wait" => Some(Policy::Wait),
        "drop-oldest" => Some(Policy::DropOldest),
        "disconnect" => Some(Policy::Disconnect),
        "default" => None,
        other => bail!("--policy {other}: expected wait, drop-oldest, disconnect or default"),
    };
    let heartbeat_ms: u64 = args.get("heartbeat-ms", 0)?;
    let mut connection = crate::tls::apply(args, chat_config())?;
    if heartbeat_ms != 0 {
        connection = connection.with_heartbeat(Heartbeat::new(
            Duration::from_millis(heartbeat_ms),
            Duration::from_millis(heartbeat_ms * 5),
        ));
    }
    let frame_timeout_ms: u64 = args.get("frame-timeout-ms", 0)?;
    if frame_timeout_ms != 0 {
        connection = connection.with_frame_timeout(Duration::from_millis(frame_timeout_ms));
    }
    let max_frame_len: u32 = args.get("max-frame-len", 0)?;
    if max_frame_len != 0 {
        connection =
            connection.with_limits(ipc_core::Limits::new().with_max_frame_len(max_frame_len));
    }
    // Requests are answered with their own text padded to this many bytes (0: as sent).
    let respond_len: usize = args.get("respond-len", 0)?;
    let mut config = ServerConfig::new(address(args)?, connection)
        .max_connections(args.get("max-connections", 1024)?);
    // `--also A,B`: more addresses for the same server (say a ws:// port beside a socket).
    for also in args.text("also", "").split(',').filter(|a| !a.is_empty()) {
        config = config.also_listen(also.parse::<Address>()?);
    }
    let http_file = args.text("http-file", "");
    if !http_file.is_empty() {
        let body = format!("served at {http_file}\n").into_bytes();
        config = config.with_http_file(http_file, "text/plain; charset=utf-8", body);
    }
    if let Some(policy) = policy {
        config = config.policy(policy);
    }
    let queue_bytes: usize = args.get("queue-bytes", 0)?;
    if queue_bytes != 0 {
        config = config.queue_bytes(queue_bytes);
    }
    let queue_capacity: usize = args.get("queue-capacity", 0)?;
    if queue_capacity != 0 {
        config = config.queue_capacity(queue_capacity);
    }
    let event_capacity: usize = args.get("event-capacity", 0)?;
    if event_capacity != 0 {
        config = config.event_capacity(event_capacity);
    }
    let mut server = Server::<ChatLine>::bind(config).await?;
    for also in &server.addresses()[1..] {
        say(format_args!("also address={also}"));
    }
    say(format_args!("ready address={}", server.address()));
    let handle = server.handle();
    let mut done = stdin_closed();
    loop {
        let event = tokio::select! {
            event = server.next_event() => event,
            _ = &mut done => break,
        };
        let Some(event) = event else { break };
        match event {
            Event::Connected { conn, peer } => {
                say(format_args!("connected conn={conn} peer={peer}"))
            }
            Event::Disconnected { conn, error: None } => {
                say(format_args!("closed conn={conn} normal"))
            }
            Event::Disconnected {
                conn,
                error: Some(err),
            } => say(format_args!(
                "closed conn={conn} error={}: {err}",
                err.kind()
            )),
            Event::Rejected { peer, error } => {
                say(format_args!(
                    "rejected peer={peer} error={}: {error}",
                    error.kind()
                ));
            }
            Event::Request {
                conn,
                id,
                mut message,
            } => {
                // Echo: the request comes back as the response (padded on request).
                if message.text.len() < respond_len {
                    let pad = respond_len - message.text.len();
                    message.text.extend(std::iter::repeat_n('.', pad));
                }
                if let Err(err) = handle.respond(conn, id, &message).await
                    && err.kind() == ErrorKind::TooLarge
                {
                    say(format_args!("respond failed conn={conn} error={err}"));
                }
            }
            Event::Message { conn, message } => {
                // `burst:N` asks for N messages at once (seq 0 to N-1); others are echoed.
                match message.text.strip_prefix("burst:").map(str::parse::<u64>) {
                    Some(Ok(n)) => {
                        for seq in 0..n {
                            let line = ChatLine {
                                from: "server".into(),
                                seq,
                                text: format!("burst {seq}"),
                            };
                            let _ = handle.send(conn, &line).await;
                        }
                    }
                    _ => {
                        let _ = handle.send(conn, &message).await;
                    }
                }
            }
            // `Event` is non-exhaustive: a later kind of event is reported, not ignored.
            other => say(format_args!("event {other:?}")),
        }
    }
    server.shutdown().await;
    say("ok");
    Ok(())
}

async fn chat(args: &Args) -> Result<()> {
    let name = args.text("name", "anon");
    let count: u64 = args.get("count", 1000)?;
    let progress: u64 = args.get("progress", 0)?;
    let mut expected: Vec<String> = args
        .text("expect", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !expected.contains(&name) {
        expected.push(name.clone());
    }
    let client = Arc::new(
        Client::<ChatLine>::connect(
            ClientConfig::new(address(args)?, crate::tls::apply(args, chat_config())?)
                .no_reconnect(),
        )
        .await?,
    );
    client.subscribe("chat").await?;
    say("subscribed");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read go from stdin")?;
    if line.trim() != "go" {
        bail!("expected `go` on stdin, got {line:?}");
    }
    let publisher = {
        let client = Arc::clone(&client);
        let name = name.clone();
        tokio::spawn(async move {
            for seq in 0..count {
                let line = ChatLine {
                    from: name.clone(),
                    seq,
                    text: format!("{name} says {seq}"),
                };
                client.publish("chat", &line).await?;
                if progress != 0 && (seq + 1).is_multiple_of(progress) {
                    say(format_args!("progress {}", seq + 1));
                }
            }
            Ok::<(), ipc_core::Error>(())
        })
    };
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut received: u64 = 0;
    let complete = |next: &HashMap<String, u64>| {
        expected
            .iter()
            .all(|sender| next.get(sender).copied().unwrap_or(0) >= count)
    };
    while !complete(&next) {
        let (topic, line) = match client.recv().await? {
            Incoming::Publication { topic, message } => (topic, message),
            other => bail!("unexpected {other:?}"),
        };
        if topic != "chat" {
            bail!("publication on unexpected topic {topic:?}");
        }
        let want = next.entry(line.from.clone()).or_insert(0);
        if line.seq != *want {
            bail!(ipc_core::Error::new(
                ErrorKind::Corrupted,
                format!(
                    "from {}: got line {} where line {} was due",
                    line.from, line.seq, *want
                )
            ));
        }
        if line.text != format!("{} says {}", line.from, line.seq) {
            bail!(ipc_core::Error::new(
                ErrorKind::Corrupted,
                format!(
                    "from {}: line {} has text {:?}",
                    line.from, line.seq, line.text
                )
            ));
        }
        *want += 1;
        received += 1;
    }
    publisher.await.context("publisher task")??;
    let mut senders: Vec<String> = next.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    senders.sort();
    match Arc::try_unwrap(client) {
        Ok(client) => client.close().await?,
        Err(_) => bail!("client still shared"),
    }
    say(format_args!(
        "ok received={received} senders={}",
        senders.join(",")
    ));
    Ok(())
}

async fn watch(args: &Args) -> Result<()> {
    let client =
        Client::<ChatLine>::connect(ClientConfig::new(address(args)?, chat_config())).await?;
    client.subscribe("t").await?;
    say("connected");
    loop {
        match client.recv().await? {
            Incoming::Disconnected(err) => say(format_args!("disconnected {err}")),
            Incoming::Reconnected => say("reconnected"),
            Incoming::Publication { message, .. } => {
                say(format_args!("got {}", message.text));
                if message.text == "bye" {
                    break;
                }
            }
            Incoming::Message(message) => say(format_args!("message {}", message.text)),
            // `Incoming` is non-exhaustive.
            other => say(format_args!("incoming {other:?}")),
        }
    }
    say(format_args!("ok connections={}", client.connections()));
    client.close().await?;
    Ok(())
}

/// `socket-half-frame --address tcp:A`: performs the handshake by hand, writes the first half
/// of a chat frame, prints `sent`, and waits for stdin to close (or for SIGKILL).
fn half_frame(args: &Args) -> Result<()> {
    let address = address(args)?;
    let Address::Tcp(host_port) = &address else {
        bail!("socket-half-frame needs a tcp: address");
    };
    let mut stream = std::net::TcpStream::connect(host_port.as_str())?;
    let limits = ipc_core::Limits::default();
    let mut bytes = Vec::new();
    ipc_core::Hello::new(MessageType::named(CHAT_TYPE), &limits).encode_frame(&mut bytes)?;
    let hello_len = bytes.len();
    let line = ChatLine {
        from: "half".into(),
        seq: 0,
        text: "x".repeat(1000),
    };
    ipc_core::encode_frame(&mut bytes, ipc_core::FrameKind::Data, 0, &line, &limits)?;
    let half = hello_len + (bytes.len() - hello_len) / 2;
    stream.write_all(&bytes[..half])?;
    stream.flush()?;
    say("sent");
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
    say("ok");
    Ok(())
}

/// `socket-echo-server --address A --mode echo|sink`: one blocking connection at a time;
/// `echo` sends every message back (round trips), `sink` counts messages until one of zero
/// bytes arrives and then answers it (streaming).
fn echo_server(args: &Args) -> Result<()> {
    let config = crate::tls::apply(args, blob_config())?;
    let listener = Listener::<Blob>::bind(&address(args)?, config)?;
    say(format_args!("ready address={}", listener.address()));
    let mode = args.text("mode", "echo");
    let mut conn: Connection<Blob> = listener.accept()?;
    let echo = mode == "echo";
    loop {
        if echo {
            let message = match conn.recv() {
                Ok(message) => message,
                Err(err) if err.is_peer_gone() => break,
                Err(err) => return Err(err.into()),
            };
            conn.send(&message)?;
            continue;
        }
        // Sink: borrow each message from the receive buffer (no allocation per message).
        let is_marker = match conn.recv_ref::<BlobRef<'_>>() {
            Ok(message) => message.bytes.is_empty(),
            Err(err) if err.is_peer_gone() => break,
            Err(err) => return Err(err.into()),
        };
        if is_marker {
            conn.send(&Blob { bytes: Vec::new() })?;
        }
    }
    say("ok");
    Ok(())
}

/// `socket-raw-echo --address A --mode echo|sink`: the raw baseline: length-prefixed byte
/// messages (u32 LE length + bytes) over a plain `UnixStream` / `TcpStream`, buffered.
fn raw_echo(args: &Args) -> Result<()> {
    let address = address(args)?;
    let mode = args.text("mode", "echo");
    match &address {
        Address::Tcp(host_port) => {
            let listener = std::net::TcpListener::bind(host_port.as_str())?;
            say(format_args!("ready address=tcp:{}", listener.local_addr()?));
            let (stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            raw_echo_loop(&stream, &mode)
        }
        Address::Path(path) => {
            let listener = std::os::unix::net::UnixListener::bind(path)?;
            say(format_args!("ready address={address}"));
            let (stream, _) = listener.accept()?;
            let outcome = raw_echo_loop(&stream, &mode);
            let _ = std::fs::remove_file(path);
            outcome
        }
        _ => bail!("raw echo needs a tcp: or unix: address"),
    }
}

fn raw_echo_loop<S>(stream: S, mode: &str) -> Result<()>
where
    S: Read + Write + Copy,
{
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, stream);
    let mut writer = std::io::BufWriter::with_capacity(64 * 1024, stream);
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            break;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > 16 * 1024 * 1024 {
            bail!("raw message of {len} bytes exceeds 16 MiB");
        }
        if mode != "echo" && len != 0 {
            // Sink: skip the message where it lies in the read buffer, as ipc-socket's sink
            // borrows it there; copying it out would slow the baseline down.
            let mut left = len;
            while left > 0 {
                let available = reader.fill_buf()?;
                if available.is_empty() {
                    bail!("raw stream ended inside a message of {len} bytes");
                }
                let n = available.len().min(left);
                reader.consume(n);
                left -= n;
            }
            continue;
        }
        buf.resize(len, 0);
        reader.read_exact(&mut buf)?;
        if mode == "echo" || len == 0 {
            writer.write_all(&(len as u32).to_le_bytes())?;
            writer.write_all(&buf)?;
            writer.flush()?;
        }
    }
    say("ok");
    Ok(())
}

/// How one flooding connection ended.
struct FloodEnd {
    sent: u64,
    how: String,
    /// The connection, kept open for `--hold true`.
    _stream: Option<std::net::TcpStream>,
}

/// `socket-flood`: see the module docs.
fn flood(args: &Args) -> Result<()> {
    let address = address(args)?;
    let Address::Tcp(host_port) = &address else {
        bail!("socket-flood needs a tcp: address");
    };
    let mode = args.text("mode", "ping");
    let connections: usize = args.get("connections", 1)?;
    let count: u64 = args.get("count", 1_000_000)?;
    let len: usize = args.get("len", 64)?;
    let every = Duration::from_millis(args.get("every-ms", 50)?);
    let (claimed_tx, claimed_rx) = std::sync::mpsc::channel::<()>();
    let mut threads = Vec::new();
    for _ in 0..connections {
        let host_port = host_port.clone();
        let mode = mode.clone();
        let claimed = claimed_tx.clone();
        threads.push(std::thread::spawn(move || {
            flood_one(&host_port, &mode, count, len, every, &claimed)
        }));
    }
    drop(claimed_tx);
    if mode == "claim" {
        // Every connection reports once its bytes are out (or it failed).
        let reported = claimed_rx.iter().take(connections).count();
        if reported == connections {
            say("claimed");
        }
    }
    let mut ends = Vec::new();
    for thread in threads {
        ends.push(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??,
        );
    }
    if args.text("hold", "false") == "true" {
        // The connections stay open, unread, until stdin closes.
        say("flooded");
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
    }
    for (i, end) in ends.into_iter().enumerate() {
        say(format_args!(
            "end conn={i} sent={} how={}",
            end.sent, end.how
        ));
    }
    say("ok");
    Ok(())
}

fn flood_one(
    host_port: &str,
    mode: &str,
    count: u64,
    len: usize,
    every: Duration,
    claimed: &std::sync::mpsc::Sender<()>,
) -> Result<FloodEnd> {
    let mut stream = std::net::TcpStream::connect(host_port)?;
    let limits = ipc_core::Limits::default();
    let mut hello = Vec::new();
    // Feature bit 0: this client sends requests, a messaging-pattern kind.
    ipc_core::Hello::new(MessageType::named(CHAT_TYPE), &limits)
        .with_features(1)
        .encode_frame(&mut hello)?;
    stream.write_all(&hello)?;
    // The server's hello.
    let mut decoder = ipc_core::FrameDecoder::new(limits);
    loop {
        if let Some(frame) = decoder.next_frame()? {
            if frame.kind() != ipc_core::FrameKind::Hello {
                bail!("expected the server's hello, got {:?}", frame.kind());
            }
            break;
        }
        let n = stream.read(decoder.read_buf())?;
        if n == 0 {
            bail!("server closed during the handshake");
        }
        decoder.commit(n);
    }
    let mut sent = 0u64;
    let written = |stream: &mut std::net::TcpStream, bytes: &[u8], sent: &mut u64| {
        let outcome = stream.write_all(bytes);
        if outcome.is_ok() {
            *sent += bytes.len() as u64;
        }
        outcome
    };
    match mode {
        "ping" | "request" | "large" => {
            let mut chunk = Vec::new();
            let mut frames_per_chunk = 0u64;
            while chunk.len() < 64 * 1024 {
                if mode == "ping" {
                    ipc_core::encode_raw_frame(
                        &mut chunk,
                        ipc_core::FrameKind::Ping,
                        frames_per_chunk as u32,
                        &[],
                        &limits,
                    )?;
                } else if mode == "large" {
                    // One ping frame whose payload has the largest length: really sent.
                    ipc_core::encode_raw_frame(
                        &mut chunk,
                        ipc_core::FrameKind::Ping,
                        frames_per_chunk as u32,
                        &vec![0u8; len],
                        &limits,
                    )?;
                    frames_per_chunk += 1;
                    break;
                } else {
                    let line = ChatLine {
                        from: "flood".into(),
                        seq: frames_per_chunk,
                        text: "x".repeat(len),
                    };
                    ipc_core::encode_frame(
                        &mut chunk,
                        ipc_core::FrameKind::Request,
                        frames_per_chunk as u32 + 1,
                        &line,
                        &limits,
                    )?;
                }
                frames_per_chunk += 1;
            }
            let mut frames = 0u64;
            while frames < count {
                if written(&mut stream, &chunk, &mut sent).is_err() {
                    return Ok(FloodEnd {
                        sent,
                        how: "write-failed".into(),
                        _stream: Some(stream),
                    });
                }
                frames += frames_per_chunk;
            }
            Ok(FloodEnd {
                sent,
                how: "done".into(),
                _stream: Some(stream),
            })
        }
        "claim" | "trickle" => {
            let header =
                ipc_core::FrameHeader::new(ipc_core::FrameKind::Data, 0, len as u32).to_bytes();
            let mut outcome = written(&mut stream, &header, &mut sent);
            if mode == "claim" {
                if outcome.is_ok() {
                    outcome = written(&mut stream, &vec![0u8; len.saturating_sub(1)], &mut sent);
                }
                let _ = claimed.send(());
                if outcome.is_err() {
                    return Ok(FloodEnd {
                        sent,
                        how: "write-failed".into(),
                        _stream: None,
                    });
                }
                return Ok(FloodEnd {
                    sent,
                    how: read_until_closed(&mut stream),
                    _stream: None,
                });
            }
            // Trickle: a reader thread watches for the server's close while bytes go out.
            let mut reader = stream.try_clone()?;
            let watcher = std::thread::spawn(move || read_until_closed(&mut reader));
            while outcome.is_ok() && !watcher.is_finished() && sent < (HEADER + len) as u64 {
                std::thread::sleep(every);
                outcome = written(&mut stream, &[0u8], &mut sent);
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let how = watcher
                .join()
                .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
            Ok(FloodEnd {
                sent,
                how,
                _stream: None,
            })
        }
        "silent" => Ok(FloodEnd {
            sent,
            how: read_until_closed(&mut stream),
            _stream: None,
        }),
        other => bail!("--mode {other}: expected ping, large, request, claim, trickle or silent"),
    }
}

const HEADER: usize = ipc_core::HEADER_LEN;

/// Reads until the server closes; `close code=C` if its last frame was a close, else `eof`.
fn read_until_closed(stream: &mut std::net::TcpStream) -> String {
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let limits = ipc_core::Limits::default();
    let mut rest = &received[..];
    let mut how = "eof".to_owned();
    while let Ok((frame, used)) = ipc_core::Frame::parse(rest, &limits) {
        if frame.kind() == ipc_core::FrameKind::Close
            && let Ok(close) = ipc_core::Close::decode(frame.payload())
        {
            how = format!("close code={}", close.code.0);
        }
        rest = &rest[used..];
    }
    how
}

fn probe(args: &Args) -> Result<()> {
    let address = address(args)?;
    let config = crate::tls::apply(args, chat_config())?;
    let line = ChatLine {
        from: "probe".into(),
        seq: 0,
        text: "are you there".into(),
    };
    let outcome: ipc_core::Result<()> = if args.get("blocking", false)? {
        Connection::<ChatLine>::connect(&address, config).and_then(|mut conn| {
            conn.send(&line)?;
            conn.flush()?;
            if conn.recv()? != line {
                return Err(ipc_core::Error::new(ErrorKind::Other, "wrong echo"));
            }
            conn.close()
        })
    } else {
        runtime()?.block_on(async {
            let client =
                Client::<ChatLine>::connect(ClientConfig::new(address, config).no_reconnect())
                    .await?;
            let echo = client.request(&line, Duration::from_secs(30)).await?;
            if echo != line {
                return Err(ipc_core::Error::new(ErrorKind::Other, "wrong echo"));
            }
            Ok(())
        })
    };
    match outcome {
        Ok(()) => say("ok"),
        Err(err) => say(format_args!("refused kind={:?} error={err}", err.kind())),
    }
    Ok(())
}

/// `socket-blocking-server --address A --accepts N`: see the module docs.
fn blocking_server(args: &Args) -> Result<()> {
    let config = crate::tls::apply(args, chat_config())?;
    let listener = Listener::<ChatLine>::bind(&address(args)?, config)?;
    say(format_args!("ready address={}", listener.address()));
    for _ in 0..args.get("accepts", 1u32)? {
        let mut conn = match listener.accept() {
            Ok(conn) => conn,
            Err(err) => {
                say(format_args!("rejected error={}: {err}", err.kind()));
                continue;
            }
        };
        match conn.peer_certificate() {
            Some(certificate) => say(format_args!("accepted certificate={certificate}")),
            None => say("accepted certificate=none"),
        }
        let echoed = (|| -> ipc_core::Result<()> {
            loop {
                let message = conn.recv()?;
                conn.send(&message)?;
                conn.flush()?;
            }
        })();
        match echoed {
            Err(err) if !err.is_peer_gone() => {
                say(format_args!("closed error={}: {err}", err.kind()))
            }
            _ => say("closed"),
        }
    }
    say("ok");
    Ok(())
}
