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
use ipc_socket::{Client, ClientConfig, ConnectionConfig};
use ipc_tests::{Peer, Watchdog};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(60);
const CHAT_TYPE: &str = "ipc-tests.ChatLine/1";

/// The chat roles' message (same wire name, same fields).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct ChatLine {
    from: String,
    seq: u64,
    text: String,
}

fn config() -> ConnectionConfig {
    ConnectionConfig::new::<ChatLine>().with_message_type(MessageType::named(CHAT_TYPE))
}

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
    let mut out = Vec::new();
    Hello::new(MessageType::named(type_name.to_owned()), &Limits::default())
        .encode_frame(&mut out)
        .unwrap();
    out
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
    let mut bad_topic = good_hello.clone();
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
