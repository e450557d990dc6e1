//! Bad input against a live ipc-socket server in another process: every case ends in a
//! closed connection with a clear error on the server's side, and the server keeps serving.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_core::{
    CloseCode, Frame, FrameHeader, FrameKind, Hello, Limits, MessageType, PROTOCOL_VERSION,
};
use ipc_socket::{Client, ClientConfig};
use ipc_tests::{Peer, Watchdog};
use proptest::prelude::*;

const WAIT: Duration = Duration::from_secs(60);

use ipc_tests::roles::chat_config as config;
use ipc_tests::roles::{CHAT_TYPE, ChatLine};

struct Live {
    server: Peer,
    host_port: String,
    runtime: tokio::runtime::Runtime,
    client: Client<ChatLine>,
}

impl Live {
    fn start() -> Result<Live> {
        let mut command = Peer::role_command("socket-server", ["--address", "tcp:127.0.0.1:0"])?;
        command.stdin(Stdio::piped());
        let mut server = Peer::spawn("server", command)?;
        let address = server.expect_prefixed("ready address=", WAIT)?;
        let host_port = address
            .strip_prefix("tcp:")
            .context("tcp address")?
            .to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime.block_on(Client::<ChatLine>::connect(
            ClientConfig::new(address.parse()?, config()).no_reconnect(),
        ))?;
        let mut live = Live {
            server,
            host_port,
            runtime,
            client,
        };
        live.server.expect_prefixed("connected", WAIT)?;
        Ok(live)
    }

    /// The well-behaved client still gets its requests answered.
    fn still_serving(&self, n: u64) -> Result<()> {
        let line = ChatLine {
            from: "good".into(),
            seq: n,
            text: "still there?".into(),
        };
        let reply = self
            .runtime
            .block_on(self.client.request(&line, Duration::from_secs(10)))?;
        if reply != line {
            bail!("echo {reply:?} differs from {line:?}");
        }
        Ok(())
    }

    /// Sends `bytes` on a fresh raw connection, half-closes it, and returns everything the
    /// server sent back before closing.
    fn send_raw(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut stream = TcpStream::connect(&self.host_port)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        // The server may close before reading everything: a failed write is fine.
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(Shutdown::Write);
        let mut reply = Vec::new();
        match stream.read_to_end(&mut reply) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(err) => return Err(err).context("read until the server closes"),
        }
        Ok(reply)
    }

    /// The server's next report of a closed or refused connection (skipping `connected`).
    fn next_failure(&mut self) -> Result<String> {
        loop {
            let line = self.server.expect_line(WAIT)?;
            if line.starts_with("connected") {
                continue;
            }
            if line.starts_with("closed") || line.starts_with("rejected") {
                return Ok(line);
            }
            bail!("unexpected server line {line:?}");
        }
    }
}

fn hello(type_name: &str) -> Vec<u8> {
    hello_with(type_name, 0)
}

/// Feature bit 0: the messaging patterns.
const PATTERNS: u32 = 1;
/// Feature bit 1: batch frames.
const BATCHES: u32 = 2;

fn hello_with(type_name: &str, features: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Hello::new(MessageType::named(type_name.to_owned()), &Limits::default())
        .with_features(features)
        .encode_frame(&mut out)
        .unwrap();
    out
}

/// The reason of the last close frame the server sent.
fn close_reason(reply: &[u8]) -> Option<String> {
    let limits = Limits::default();
    let mut rest = reply;
    let mut last = None;
    while let Ok((frame, used)) = Frame::parse(rest, &limits) {
        if frame.kind() == FrameKind::Close {
            last = ipc_core::Close::decode(frame.payload())
                .ok()
                .map(|c| c.reason);
        }
        rest = &rest[used..];
    }
    last
}

/// The close code of the last frame the server sent, if it sent a close.
fn close_code(reply: &[u8]) -> Option<CloseCode> {
    let limits = Limits::default();
    let mut rest = reply;
    let mut last = None;
    while let Ok((frame, used)) = Frame::parse(rest, &limits) {
        if frame.kind() == FrameKind::Close {
            last = ipc_core::Close::decode(frame.payload())
                .ok()
                .map(|c| c.code);
        }
        rest = &rest[used..];
    }
    last
}

#[test]
fn every_kind_of_bad_input_closes_only_that_connection() -> Result<()> {
    let _watchdog = Watchdog::new("bad input cases", WAIT);
    let mut live = Live::start()?;
    let limits = Limits::default();
    let good_hello = hello(CHAT_TYPE);
    let mut data = Vec::new();
    ipc_core::encode_frame(
        &mut data,
        FrameKind::Data,
        0,
        &ChatLine {
            from: "x".into(),
            seq: 1,
            text: "y".into(),
        },
        &limits,
    )?;

    let mut wrong_version_hello = good_hello.clone();
    wrong_version_hello[2] = PROTOCOL_VERSION + 1;
    let mut over_limit = good_hello.clone();
    over_limit.extend_from_slice(&FrameHeader::new(FrameKind::Data, 0, u32::MAX).to_bytes());
    let mut truncated = good_hello.clone();
    truncated.extend_from_slice(&data[..data.len() - 3]);
    let mut wrong_version_frame = good_hello.clone();
    let mut bad = data.clone();
    bad[2] = 7;
    wrong_version_frame.extend_from_slice(&bad);
    let mut undecodable = good_hello.clone();
    ipc_core::encode_raw_frame(&mut undecodable, FrameKind::Data, 0, &[9, b'a'], &limits)?;
    let mut unknown_kind = good_hello.clone();
    let mut bad = data.clone();
    bad[3] = 0x7E;
    unknown_kind.extend_from_slice(&bad);
    let patterns_hello = hello_with(CHAT_TYPE, PATTERNS);
    let mut request_without_bit = good_hello.clone();
    request_without_bit.extend_from_slice(&frame_of(FrameKind::Request, 1, &data)?);
    let mut request_id_zero = patterns_hello.clone();
    request_id_zero.extend_from_slice(&frame_of(FrameKind::Request, 0, &data)?);
    let mut bad_topic = patterns_hello.clone();
    ipc_core::encode_raw_frame(
        &mut bad_topic,
        FrameKind::Publish,
        0,
        &[200, 0, b'c'],
        &limits,
    )?;

    let cases: Vec<(&str, Vec<u8>, &str, Option<CloseCode>)> = vec![
        (
            "http garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "rejected",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
        (
            "wrong version hello",
            wrong_version_hello,
            "rejected",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
        (
            "another message type",
            hello("someone.Else/9"),
            "rejected",
            Some(CloseCode::TYPE_MISMATCH),
        ),
        (
            "length over the limit",
            over_limit,
            "error=too large",
            Some(CloseCode::TOO_LARGE),
        ),
        ("truncated frame", truncated, "error=truncated", None),
        (
            "wrong version frame",
            wrong_version_frame,
            "error=unsupported version",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
        (
            "not a ChatLine",
            undecodable,
            "error=decode error",
            Some(CloseCode::DECODE_ERROR),
        ),
        (
            "unknown kind",
            unknown_kind,
            "error=protocol violation",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
        (
            "bad publish topic",
            bad_topic,
            "error=protocol violation",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
        (
            "request from a client without feature bit 0",
            request_without_bit,
            "does not set feature bit 0",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
        (
            "request id 0",
            request_id_zero,
            "request with id 0",
            Some(CloseCode::PROTOCOL_ERROR),
        ),
    ];
    for (n, (what, bytes, report, code)) in cases.into_iter().enumerate() {
        let reply = live.send_raw(&bytes)?;
        let line = live.next_failure()?;
        assert!(
            line.contains(report),
            "{what}: server reported {line:?}, wanted {report:?}"
        );
        if let Some(code) = code {
            assert_eq!(close_code(&reply), Some(code), "{what}: {line}");
        }
        live.still_serving(n as u64)?;
    }
    Ok(())
}

/// The data frame `data` (a whole frame) re-framed as `kind` with `id`.
fn frame_of(kind: FrameKind, id: u32, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let payload = &data[ipc_core::HEADER_LEN..];
    ipc_core::encode_raw_frame(&mut out, kind, id, payload, &Limits::default())?;
    Ok(out)
}

#[test]
fn a_decode_error_names_the_agreed_message_type() -> Result<()> {
    let _watchdog = Watchdog::new("decode error reason", WAIT);
    let mut live = Live::start()?;
    let mut undecodable = hello(CHAT_TYPE);
    ipc_core::encode_raw_frame(
        &mut undecodable,
        FrameKind::Data,
        0,
        &[9, b'a'],
        &Limits::default(),
    )?;
    let reply = live.send_raw(&undecodable)?;
    live.next_failure()?;
    let reason = close_reason(&reply).context("a close frame")?;
    assert!(
        reason.starts_with(&format!(
            "payload of 2 bytes does not decode as {CHAT_TYPE}: "
        )),
        "{reason}"
    );
    live.still_serving(0)?;
    Ok(())
}

#[test]
fn hello_and_close_are_accepted_above_a_small_max_frame_len() -> Result<()> {
    let _watchdog = Watchdog::new("small limit hello", WAIT);
    let mut command = Peer::role_command(
        "socket-server",
        ["--address", "tcp:127.0.0.1:0", "--max-frame-len", "64"],
    )?;
    command.stdin(Stdio::piped());
    let mut server = Peer::spawn("server", command)?;
    let address = server.expect_prefixed("ready address=", WAIT)?;
    let host_port = address.strip_prefix("tcp:").context("tcp address")?;
    // A hello of 18 + 1000 bytes, over the server's 64: it is read, and then refused for
    // its message type (code 3), not for its size (code 4).
    let long_name = "x".repeat(1000);
    let mut stream = TcpStream::connect(host_port)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(&hello(&long_name))?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert_eq!(close_code(&reply), Some(CloseCode::TYPE_MISMATCH));
    let line = server.expect_prefixed("rejected", WAIT)?;
    assert!(line.contains("type mismatch"), "{line}");
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    server.wait_success(WAIT)?;
    Ok(())
}

/// Reads whole frames from `stream` until `n_messages` data messages arrived; returns them
/// with the number of data and batch frames that carried them.
fn read_messages(
    stream: &mut TcpStream,
    n_messages: usize,
) -> Result<(Vec<ChatLine>, usize, usize)> {
    let (mut messages, mut n_data, mut n_batch) = (Vec::new(), 0, 0);
    while messages.len() < n_messages {
        let mut header = [0u8; ipc_core::HEADER_LEN];
        stream.read_exact(&mut header)?;
        let header = FrameHeader::parse(&header, &Limits::default())?;
        let mut payload = vec![0u8; header.len() as usize];
        stream.read_exact(&mut payload)?;
        match header.kind() {
            FrameKind::Data => {
                n_data += 1;
                messages.push(ipc_core::decode(&payload)?);
            }
            FrameKind::Batch => {
                n_batch += 1;
                let mut rest = &payload[..];
                while !rest.is_empty() {
                    let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                    messages.push(ipc_core::decode(&rest[2..2 + len])?);
                    rest = &rest[2 + len..];
                }
            }
            FrameKind::Ping | FrameKind::Pong | FrameKind::Hello => {}
            other => bail!("unexpected {other:?} frame"),
        }
    }
    Ok((messages, n_data, n_batch))
}

#[test]
fn the_server_batches_data_frames_for_clients_that_accept_batches() -> Result<()> {
    let _watchdog = Watchdog::new("server batches", WAIT);
    let live = Live::start()?;
    for (features, batches) in [(PATTERNS | BATCHES, true), (PATTERNS, false)] {
        let mut stream = TcpStream::connect(&live.host_port)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(&hello_with(CHAT_TYPE, features))?;
        let mut burst = Vec::new();
        let line = ChatLine {
            from: "raw".into(),
            seq: 0,
            text: "burst:500".into(),
        };
        ipc_core::encode_frame(&mut burst, FrameKind::Data, 0, &line, &Limits::default())?;
        stream.write_all(&burst)?;
        let (messages, n_data, n_batch) = read_messages(&mut stream, 500)?;
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (0..500).collect::<Vec<u64>>(), "features {features}");
        println!("features {features}: {n_data} data frames, {n_batch} batch frames");
        if batches {
            // 500 small messages queued at once: what waits together for the writer goes in
            // batches (how many depends on scheduling; the old server sent 500 data frames).
            assert!(
                n_batch > 0 && n_data + n_batch < 500,
                "{n_data} + {n_batch}"
            );
        } else {
            assert_eq!((n_data, n_batch), (500, 0));
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_take_the_server_down() -> Result<()> {
    let _watchdog = Watchdog::new("arbitrary bytes", Duration::from_secs(300));
    let live = std::cell::RefCell::new(Live::start()?);
    let good_hello = hello(CHAT_TYPE);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let n = std::cell::Cell::new(0u64);
    let strategy = (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..4096),
    );
    let outcome = runner.run(&strategy, |(after_hello, garbage)| {
        let mut bytes = if after_hello {
            good_hello.clone()
        } else {
            Vec::new()
        };
        bytes.extend_from_slice(&garbage);
        let mut live = live.borrow_mut();
        live.send_raw(&bytes)
            .map_err(|err| TestCaseError::fail(format!("{err:#}")))?;
        let line = live
            .next_failure()
            .map_err(|err| TestCaseError::fail(format!("{err:#}")))?;
        prop_assert!(line.contains("error="), "{}", line);
        n.set(n.get() + 1);
        live.still_serving(n.get())
            .map_err(|err| TestCaseError::fail(format!("{err:#}")))?;
        Ok(())
    });
    if let Err(err) = outcome {
        bail!("{err}");
    }
    let mut live = live.into_inner();
    live.server.close_stdin();
    live.server.expect_prefixed("ok", WAIT)?;
    live.server.wait_success(WAIT)?;
    Ok(())
}

#[test]
fn a_ping_with_a_payload_gets_an_empty_pong_and_the_connection_stays_up() -> Result<()> {
    let _watchdog = Watchdog::new("ping with payload", WAIT);
    let live = Live::start()?;
    let mut stream = TcpStream::connect(&live.host_port)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut bytes = hello(CHAT_TYPE);
    ipc_core::encode_raw_frame(
        &mut bytes,
        FrameKind::Ping,
        9,
        &[1, 2, 3],
        &Limits::default(),
    )?;
    stream.write_all(&bytes)?;
    let mut decoder = ipc_core::FrameDecoder::new(Limits::default());
    let pong = loop {
        let Some(frame) = decoder.next_frame()? else {
            let n = stream.read(decoder.read_buf())?;
            if n == 0 {
                bail!("the server closed the connection instead of answering the ping");
            }
            decoder.commit(n);
            continue;
        };
        match frame.kind() {
            FrameKind::Hello => continue,
            FrameKind::Pong => break (frame.id(), frame.payload().len()),
            other => bail!("unexpected {other:?} frame"),
        }
    };
    assert_eq!(pong, (9, 0));
    live.still_serving(0)?;
    Ok(())
}
