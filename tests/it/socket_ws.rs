//! `ws://` addresses: one server process listening on a socket file and a WebSocket port,
//! chat across both transports, blocking connections over WebSocket, and bad input over
//! WebSocket (text, an over-limit message, a frame cut across messages, fragmented messages,
//! a wrong `Origin`, garbage after the upgrade, plain HTTP, a client that never reads), each
//! of which closes only its own connection while the server keeps serving the others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_core::{FrameDecoder, FrameKind, Limits, MessageType, Receiver, Sender};
use ipc_socket::{Address, Client, ClientConfig, Connection, ConnectionConfig, Incoming, Listener};
use ipc_tests::roles::{CHAT_TYPE, ChatLine, chat_config};
use ipc_tests::{Peer, TempDir, Watchdog};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::{ClientRequestBuilder, Message, WebSocket};

const WAIT: Duration = Duration::from_secs(60);

/// A chat server process on a socket file and `ws://127.0.0.1:0/ipc`, with `extra` flags.
fn server(dir: &TempDir, extra: &[&str]) -> Result<(Peer, String, String)> {
    let unix = format!("unix:{}", dir.path().join("chat.sock").display());
    let mut args = vec!["--address", &unix, "--also", "ws://127.0.0.1:0/ipc"];
    args.extend_from_slice(extra);
    let mut command = Peer::role_command("socket-server", args)?;
    command.stdin(Stdio::piped());
    let mut server = Peer::spawn("server", command)?;
    let ws = server.expect_prefixed("also address=", WAIT)?;
    let unix = server.expect_prefixed("ready address=", WAIT)?;
    Ok((server, unix, ws))
}

fn host_port(ws: &str) -> Result<String> {
    let rest = ws.strip_prefix("ws://").context("ws address")?;
    Ok(rest.split('/').next().unwrap_or_default().to_owned())
}

#[test]
fn a_unix_client_and_a_websocket_client_chat_through_one_server() -> Result<()> {
    let _watchdog = Watchdog::new("chat across unix and ws", WAIT * 2);
    let dir = TempDir::new("ws-chat")?;
    let (mut server, unix, ws) = server(&dir, &[])?;
    let mut peers = Vec::new();
    for (name, address) in [("native", &unix), ("web", &ws)] {
        let mut command = Peer::role_command(
            "socket-chat",
            [
                "--address",
                address.as_str(),
                "--name",
                name,
                "--count",
                "300",
                "--expect",
                "native,web",
            ],
        )?;
        command.stdin(Stdio::piped());
        let mut peer = Peer::spawn(name, command)?;
        assert_eq!(peer.expect_line(WAIT)?, "subscribed");
        peers.push(peer);
    }
    for peer in &mut peers {
        writeln!(peer.stdin().context("stdin")?, "go")?;
    }
    for peer in &mut peers {
        let ok = peer.expect_prefixed("ok ", WAIT)?;
        assert_eq!(ok, "received=600 senders=native:300,web:300");
        peer.wait_success(WAIT)?;
    }
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    Ok(())
}

#[test]
fn a_blocking_connection_runs_over_websocket_with_large_frames() -> Result<()> {
    let _watchdog = Watchdog::new("blocking ws", WAIT);
    let config = ConnectionConfig::new::<Vec<u8>>();
    let address: Address = "ws://127.0.0.1:0/echo".parse()?;
    let listener = Listener::<Vec<u8>>::bind(&address, config.clone())?;
    let address = listener.address().clone();
    let echo = std::thread::spawn(move || -> ipc_core::Result<()> {
        let mut conn = listener.accept()?;
        loop {
            match conn.recv() {
                Ok(bytes) => {
                    conn.send(&bytes)?;
                    conn.flush()?;
                }
                Err(err) if err.kind() == ipc_core::ErrorKind::PeerClosed => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    });
    let mut client = Connection::<Vec<u8>>::connect(&address, config)?;
    // Small ones travel grouped, large ones (past 64 KiB and tungstenite's buffers) alone.
    for len in [0, 1, 100, 70_000, 3 * 1024 * 1024, 5] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        client.send(&bytes)?;
        client.flush()?;
        assert_eq!(client.recv()?, bytes, "len {len}");
    }
    for i in 0..500u32 {
        client.send(&i.to_le_bytes().to_vec())?;
    }
    client.flush()?;
    for i in 0..500u32 {
        assert_eq!(client.recv()?, i.to_le_bytes().to_vec());
    }
    client.close()?;
    echo.join().expect("echo thread")?;
    Ok(())
}

/// A raw WebSocket to the server, with an optional `Origin`.
fn raw_ws(ws: &str, origin: Option<&str>) -> Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect(host_port(ws)?)?;
    stream.set_read_timeout(Some(WAIT))?;
    let mut request = ClientRequestBuilder::new(ws.parse()?);
    if let Some(origin) = origin {
        request = request.with_header("Origin", origin);
    }
    match tungstenite::client::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(err) => bail!("websocket upgrade: {err}"),
    }
}

fn hello_frame() -> Result<Vec<u8>> {
    let mut hello = Vec::new();
    ipc_core::Hello::new(MessageType::named(CHAT_TYPE), &Limits::default())
        .with_features(1)
        .encode_frame(&mut hello)?;
    Ok(hello)
}

/// Exchanges ipc hellos over a raw WebSocket.
fn raw_handshake(socket: &mut WebSocket<TcpStream>) -> Result<()> {
    socket.send(Message::binary(hello_frame()?))?;
    let mut decoder = FrameDecoder::new(Limits::default());
    loop {
        match socket.read()? {
            Message::Binary(bytes) => {
                decoder.read_buf()[..bytes.len()].copy_from_slice(&bytes);
                decoder.commit(bytes.len());
                let frame = decoder.next_frame()?.context("a whole hello")?;
                assert_eq!(frame.kind(), FrameKind::Hello);
                return Ok(());
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("expected the server's hello, got {other:?}"),
        }
    }
}

/// Reads until the server closes: the ipc close frame's reason and the WebSocket close code.
fn closed_with(socket: &mut WebSocket<TcpStream>) -> Result<(String, Option<CloseCode>)> {
    let mut reason = String::new();
    loop {
        match socket.read() {
            Ok(Message::Binary(bytes)) => {
                let (frame, _) = ipc_core::Frame::parse(&bytes, &Limits::default())?;
                if frame.kind() == FrameKind::Close {
                    reason = ipc_core::Close::decode(frame.payload())?.reason;
                }
            }
            Ok(Message::Close(close)) => return Ok((reason, close.map(|c| c.code))),
            Ok(_) => {}
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => {
                return Ok((reason, None));
            }
            Err(tungstenite::Error::Io(err)) => {
                return Ok((format!("{reason} (io: {err})"), None));
            }
            Err(err) => bail!("reading the close: {err} (ipc close reason so far: {reason:?})"),
        }
    }
}

/// The server still serves: a ws client and a unix client each get their request echoed.
async fn still_serving(ws: &str, unix: &str) -> Result<()> {
    for address in [ws, unix] {
        let client = Client::<ChatLine>::connect(
            ClientConfig::new(address.parse()?, chat_config()).no_reconnect(),
        )
        .await?;
        let line = ChatLine {
            from: "probe".into(),
            seq: 7,
            text: format!("still there over {address}?"),
        };
        let echo = client.request(&line, Duration::from_secs(10)).await?;
        assert_eq!(echo, line);
        client.close().await?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[test]
fn bad_input_over_websocket_closes_only_that_connection() -> Result<()> {
    let _watchdog = Watchdog::new("bad input over ws", WAIT * 3);
    let dir = TempDir::new("ws-bad")?;
    let (mut server, unix, ws) = server(
        &dir,
        &[
            "--max-frame-len",
            "1000",
            "--policy",
            "disconnect",
            "--queue-capacity",
            "64",
        ],
    )?;
    let rt = runtime()?;
    // A bystander that stays connected through it all and must see the last publication.
    let bystander = rt.block_on(async {
        let client = Client::<ChatLine>::connect(
            ClientConfig::new(ws.parse()?, chat_config()).no_reconnect(),
        )
        .await?;
        client.subscribe("chat").await?;
        anyhow::Ok(client)
    })?;

    // A text message.
    let mut socket = raw_ws(&ws, None)?;
    raw_handshake(&mut socket)?;
    socket.send(Message::text("hello"))?;
    let (reason, code) = closed_with(&mut socket)?;
    assert_eq!(
        reason,
        "websocket text message of 5 bytes (only binary messages carry frames)"
    );
    assert_eq!(code, Some(CloseCode::Unsupported));
    rt.block_on(still_serving(&ws, &unix))?;

    // The same before the hellos: the handshake's verdict, with the same close codes.
    let mut socket = raw_ws(&ws, None)?;
    socket.send(Message::text("no hello"))?;
    let (reason, code) = closed_with(&mut socket)?;
    assert_eq!(
        reason,
        "websocket text message of 8 bytes (only binary messages carry frames)"
    );
    assert_eq!(code, Some(CloseCode::Unsupported));

    // A message over the limit (1000-byte frames: messages up to 64 KiB), announced by a
    // WebSocket header claiming 1 GiB of which only a few bytes follow: refused from the
    // header, before anything is buffered.
    let mut socket = raw_ws(&ws, None)?;
    raw_handshake(&mut socket)?;
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4, 9, 9, 9, 9]);
    socket.get_mut().write_all(&header)?;
    let (reason, code) = closed_with(&mut socket)?;
    assert!(reason.contains("exceeds limit of 65536"), "{reason}");
    assert_eq!(code, Some(CloseCode::Size));
    rt.block_on(still_serving(&ws, &unix))?;

    // A frame cut across two messages.
    let mut data = Vec::new();
    ipc_core::encode_frame(
        &mut data,
        FrameKind::Data,
        0,
        &ChatLine {
            from: "cut".into(),
            seq: 0,
            text: "in two".into(),
        },
        &Limits::default(),
    )?;
    let mut socket = raw_ws(&ws, None)?;
    raw_handshake(&mut socket)?;
    socket.send(Message::binary(data[..10].to_vec()))?;
    socket.send(Message::binary(data[10..].to_vec()))?;
    let (reason, code) = closed_with(&mut socket)?;
    assert!(
        reason.contains("ends inside a frame header at byte 0"),
        "{reason}"
    );
    assert_eq!(code, Some(CloseCode::Protocol));
    rt.block_on(still_serving(&ws, &unix))?;

    // A fragmented message (two WebSocket frames) of whole ipc frames is one message: a
    // request sent that way is answered.
    let mut request = Vec::new();
    let line = ChatLine {
        from: "frag".into(),
        seq: 1,
        text: "fragmented".into(),
    };
    ipc_core::encode_frame(
        &mut request,
        FrameKind::Request,
        5,
        &line,
        &Limits::default(),
    )?;
    let mut socket = raw_ws(&ws, None)?;
    raw_handshake(&mut socket)?;
    socket.send(Message::Frame(Frame::message(
        request[..7].to_vec(),
        OpCode::Data(Data::Binary),
        false,
    )))?;
    socket.send(Message::Frame(Frame::message(
        request[7..].to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))?;
    loop {
        let Message::Binary(bytes) = socket.read()? else {
            continue;
        };
        let (frame, _) = ipc_core::Frame::parse(&bytes, &Limits::default())?;
        if frame.kind() == FrameKind::Response {
            assert_eq!(frame.id(), 5);
            assert_eq!(frame.decode::<ChatLine>()?, line);
            break;
        }
    }
    socket.close(None)?;

    // Garbage after the upgrade: not WebSocket frames at all. The ipc close frame says why;
    // the stream is then closed (tungstenite sends no WebSocket close after bytes it cannot
    // parse).
    let mut socket = raw_ws(&ws, None)?;
    socket
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\n\r\n garbage \xff\xfe")?;
    let (reason, code) = closed_with(&mut socket)?;
    assert!(
        reason.starts_with("websocket: WebSocket protocol error"),
        "{reason}"
    );
    assert!(matches!(code, None | Some(CloseCode::Protocol)), "{code:?}");
    rt.block_on(still_serving(&ws, &unix))?;

    // A wrong Origin: refused before the upgrade with 403; the page's own origin and
    // non-browser clients (no Origin) are let in.
    let hp = host_port(&ws)?;
    match raw_ws(&ws, Some("http://evil.example")) {
        Ok(_) => bail!("a foreign origin was let in"),
        Err(err) => assert!(err.to_string().contains("403"), "{err}"),
    }
    raw_ws(&ws, Some(&format!("http://{hp}")))?.close(None)?;

    // Plain HTTP: not an upgrade, or another path.
    for (request, status) in [
        ("GET /ipc HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 426"),
        ("GET /other HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404"),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405",
        ),
        ("\x16\x03\x01 not http at all\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let mut stream = TcpStream::connect(&hp)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        assert!(answer.starts_with(status), "{request:?}: {answer}");
    }
    rt.block_on(still_serving(&ws, &unix))?;

    // A client that never reads: it asks for a burst and reads nothing; the server (queue
    // of 64 frames, policy disconnect) closes it as too slow.
    let mut socket = raw_ws(&ws, None)?;
    raw_handshake(&mut socket)?;
    let mut burst = Vec::new();
    let ask = ChatLine {
        from: "slow".into(),
        seq: 0,
        text: "burst:200000".into(),
    };
    ipc_core::encode_frame(&mut burst, FrameKind::Data, 0, &ask, &Limits::default())?;
    socket.send(Message::binary(burst))?;
    // The earlier bad clients' lines come first.
    while !server
        .expect_prefixed("closed conn=", WAIT)?
        .contains("too slow")
    {}
    drop(socket);
    rt.block_on(still_serving(&ws, &unix))?;

    // The bystander saw none of it and still receives.
    rt.block_on(async {
        let publisher = Client::<ChatLine>::connect(
            ClientConfig::new(unix.parse()?, chat_config()).no_reconnect(),
        )
        .await?;
        let line = ChatLine {
            from: "unix".into(),
            seq: 0,
            text: "the end".into(),
        };
        publisher.publish("chat", &line).await?;
        match bystander.recv().await? {
            Incoming::Publication { topic, message } => {
                assert_eq!((topic.as_str(), &message), ("chat", &line));
            }
            other => bail!("unexpected {other:?}"),
        }
        publisher.close().await?;
        bystander.close().await?;
        anyhow::Ok(())
    })?;
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    Ok(())
}

#[test]
fn connection_limits_origins_and_files_of_a_websocket_server() -> Result<()> {
    let _watchdog = Watchdog::new("ws limits and http", WAIT);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = ipc_socket::ServerConfig::new("ws://127.0.0.1:0/ipc".parse()?, chat_config())
            .max_connections(1)
            .with_allowed_origins(["https://app.example"])
            .with_http_file("/", "text/html; charset=utf-8", &b"<p>hi</p>"[..]);
        let mut server = ipc_socket::Server::<ChatLine>::bind(config).await?;
        let ws = server.address().to_string();
        let client_config =
            ClientConfig::new(server.address().clone(), chat_config()).no_reconnect();
        let first = Client::<ChatLine>::connect(client_config.clone()).await?;
        // The second is refused over WebSocket as over TCP: close code 6 and why.
        let err = Client::<ChatLine>::connect(client_config.clone())
            .await
            .err()
            .context("a second connection over the limit of 1 was accepted")?;
        assert!(
            err.to_string().contains("maximum of 1 connections"),
            "{err}"
        );
        first.close().await?;
        // Its slot is free once the server saw it leave.
        loop {
            match server.next_event().await.context("server stopped")? {
                ipc_socket::Event::Disconnected { .. } => break,
                _ => continue,
            }
        }
        let ws_for_raw = ws.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // Listed origins are let in besides the page's own; others are refused.
            let hp = host_port(&ws_for_raw)?;
            raw_ws(&ws_for_raw, Some("https://app.example"))?.close(None)?;
            let refused = raw_ws(&ws_for_raw, Some("https://other.example"));
            assert!(refused.is_err_and(|err| err.to_string().contains("403")));
            // The file, with its content type; HEAD without the body.
            for (method, body) in [("GET", "<p>hi</p>"), ("HEAD", "")] {
                let mut stream = TcpStream::connect(&hp)?;
                stream.set_read_timeout(Some(WAIT))?;
                write!(stream, "{method} / HTTP/1.1\r\nHost: {hp}\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
                assert!(
                    answer.contains("Content-Type: text/html; charset=utf-8\r\n"),
                    "{answer}"
                );
                assert!(answer.contains("Content-Length: 9\r\n"), "{answer}");
                assert!(answer.ends_with(&format!("\r\n\r\n{body}")), "{answer}");
            }
            Ok(())
        })
        .await??;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// The server's resident and peak memory in bytes (`VmRSS`, `VmHWM`).
fn memory(peer: &Peer) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", peer.pid()))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(key))
            .with_context(|| format!("no {key} in /proc status"))?;
        Ok(line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()?
            * 1024)
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

#[test]
fn websocket_messages_claiming_the_largest_length_stay_within_the_memory_bound() -> Result<()> {
    let _watchdog = Watchdog::new("ws length claims", WAIT);
    const MAX_FRAME_LEN: u64 = 256 * 1024;
    const QUEUE_BYTES: u64 = 256 * 1024;
    const CONNECTIONS: u64 = 16;
    let dir = TempDir::new("ws-claims")?;
    let max = MAX_FRAME_LEN.to_string();
    let queue = QUEUE_BYTES.to_string();
    let (mut server, _unix, ws) = server(
        &dir,
        &[
            "--max-frame-len",
            &max,
            "--queue-bytes",
            &queue,
            "--heartbeat-ms",
            "200",
        ],
    )?;
    let (baseline, _) = memory(&server)?;
    // Each connection sends a WebSocket header claiming a message of the largest length
    // (max_frame_len + 16) and all of it but the last byte, then stalls: nothing reaches the
    // frame reader, so the heartbeat timeout (1 s) closes it.
    let message_len = MAX_FRAME_LEN + 16;
    let mut sockets = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut socket = raw_ws(&ws, None)?;
        raw_handshake(&mut socket)?;
        let mut claim = vec![0x82, 0xff];
        claim.extend_from_slice(&message_len.to_be_bytes());
        claim.extend_from_slice(&[0, 0, 0, 0]);
        claim.resize(claim.len() + message_len as usize - 1, 0);
        socket.get_mut().write_all(&claim)?;
        sockets.push(socket);
    }
    for _ in 0..CONNECTIONS {
        let line = server.expect_prefixed("closed conn=", WAIT)?;
        assert!(line.contains("heartbeat"), "{line}");
    }
    let (rss, peak) = memory(&server)?;
    // The crate README's bound for these limits (1024 frames per queue), plus its
    // WebSocket addition, plus 4 MiB of allocator and runtime slack.
    let per_connection = MAX_FRAME_LEN + QUEUE_BYTES + 80 * 1024 + 64 * 1024;
    let per_websocket = 3 * MAX_FRAME_LEN + 256 * 1024;
    let limit = CONNECTIONS * (per_connection + per_websocket) + 4 * 1024 * 1024;
    println!("16 ws claims: baseline {baseline}, peak {peak}, after {rss}, bound {limit} bytes");
    assert!(
        peak <= baseline + limit,
        "peak {peak} over baseline {baseline} + {limit}"
    );
    assert!(
        rss <= baseline + limit,
        "after {rss} over {baseline} + {limit}"
    );
    drop(sockets);
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    Ok(())
}
