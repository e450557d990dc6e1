//! PROTOCOL.md is enough to write a decoder in another language: a Python decoder written
//! from it alone (crates/ipc-core/tests/python/ipc_frames.py, standard library only) reads the
//! golden vectors, and a live stream from an `ipc-peer` process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use ipc_tests::{Peer, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

fn core_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/ipc-core")
}

fn python() -> Option<&'static str> {
    let found = ipc_tests::flows::has_python3();
    if !found {
        println!("skipped: python3 is not installed");
    }
    found.then_some("python3")
}

#[test]
fn python_decodes_every_golden_vector() -> Result<()> {
    let Some(python) = python() else {
        return Ok(());
    };
    let _watchdog = Watchdog::new("python vectors", WAIT);
    let mut command = Command::new(python);
    command
        .arg(core_dir().join("tests/python/ipc_frames.py"))
        .arg("vectors")
        .arg(core_dir().join("tests/golden/vectors.json"));
    let mut peer = Peer::spawn("python vectors", command)?;
    let expected = [
        "hello: hello name=chat.Message/1 max_frame_len=16777216 fingerprint=0xd90eede06cf7fb36",
        "data-u32: u32 42",
        "data-chat: chat from=ann text=hi",
        "data-sample: sample seq=300 payload=[1, 2, 3]",
        "data-event-joined: event variant=0 user=bob room=3",
        "data-event-reading: event variant=2 reading=-2 1.5",
        "ping: ping id=7",
        "pong: pong id=7",
        "close: close code=0 reason=bye",
        "request: request id=5 message=hi",
        "response: response id=5 message=hi!",
        "subscribe: subscribe id=3 prefix=chat",
        "subscribe-ack: subscribe-ack id=3",
        "unsubscribe: unsubscribe id=0 prefix=chat",
        "publish: publish topic=chat message=hi",
        "batch: batch u32 [42, 300]",
    ];
    for line in expected {
        assert_eq!(peer.expect_line(WAIT)?, line);
    }
    peer.wait_success(WAIT)
}

#[test]
fn python_reads_a_live_stream_from_a_rust_peer() -> Result<()> {
    let Some(python) = python() else {
        return Ok(());
    };
    let _watchdog = Watchdog::new("python sink", WAIT);
    let (reader, writer) = std::io::pipe()?;
    let mut source = Peer::role_command("frame-source", ["--count", "5000", "--size", "100"])?;
    source.stdout(writer);
    let mut source = Peer::spawn_with_stdout("rust source", source)?;
    let mut sink = Command::new(python);
    sink.arg(core_dir().join("tests/python/ipc_frames.py"))
        .arg("sink")
        .stdin(reader);
    let mut sink = Peer::spawn("python sink", sink)?;
    assert_eq!(
        sink.expect_line(WAIT)?,
        "ok type=ipc-tests.Sample/1 count=5000 bytes=500000 close=0"
    );
    source.wait_success(WAIT)?;
    sink.wait_success(WAIT)
}
