//! ipc-core frames between two real processes over an OS pipe.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use ipc_tests::flows;
use ipc_tests::{Peer, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

/// Spawns `frame-sink` reading from a pipe whose write end is the stdout of `source_role`.
fn source_into_sink(
    source_role: &str,
    source_args: &[&str],
    sink_args: &[&str],
) -> Result<(Peer, Peer)> {
    let (reader, writer) = std::io::pipe()?;
    let mut source = Peer::role_command(source_role, source_args)?;
    source.stdout(writer);
    let source = Peer::spawn_with_stdout("source", source)?;
    let mut sink = Peer::role_command("frame-sink", sink_args)?;
    sink.stdin(reader);
    let sink = Peer::spawn("sink", sink)?;
    Ok((source, sink))
}

#[test]
fn a_stream_of_frames_arrives_complete_and_in_order() -> Result<()> {
    let _watchdog = Watchdog::new("frame stream over a pipe", WAIT);
    for (count, size) in [(20_000u64, 64usize), (300, 65_536), (1, 0)] {
        // The flow checks order, every byte and the checksum the consumer reports.
        let outcome = flows::frames_over_pipe(count, size, &mut flows::no_progress)?;
        assert_eq!(
            (outcome.messages, outcome.bytes),
            (count, count * size as u64)
        );
    }
    Ok(())
}

#[test]
fn a_source_killed_mid_stream_is_reported_not_hung() -> Result<()> {
    let _watchdog = Watchdog::new("killed source", WAIT);
    let (mut source, mut sink) = source_into_sink(
        "frame-source",
        &["--count", "1000000000", "--size", "1000"],
        &["--progress", "1000"],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "progress 1000");
    source.kill()?;
    let outcome = sink.expect_prefixed("error", WAIT)?;
    assert!(
        outcome.starts_with("truncated: stream ended inside a frame")
            || outcome.starts_with("peer died: stream ended without a close frame"),
        "{outcome}"
    );
    assert_eq!(sink.wait(WAIT)?.code(), Some(1));
    Ok(())
}

#[test]
fn a_peer_with_another_message_type_fails_the_handshake() -> Result<()> {
    let _watchdog = Watchdog::new("type mismatch", WAIT);
    let (mut source, mut sink) = source_into_sink(
        "frame-source",
        &["--count", "10", "--type", "someone.Else/3"],
        &[],
    )?;
    let outcome = sink.expect_line(WAIT)?;
    assert!(
        outcome.starts_with(
            "error message type mismatch: peer exchanges `someone.Else/3` (fingerprint "
        ),
        "{outcome}"
    );
    assert_eq!(sink.wait(WAIT)?.code(), Some(1));
    // The source may or may not see the broken pipe before it finishes; either is fine.
    let _ = source.wait(WAIT)?;
    Ok(())
}

#[test]
fn garbage_and_oversized_frames_end_in_clear_errors() -> Result<()> {
    let _watchdog = Watchdog::new("garbage input", WAIT);
    // Garbage from the first byte.
    for seed in 1..=20 {
        let seed = seed.to_string();
        let (mut source, mut sink) =
            source_into_sink("garbage-source", &["--bytes", "4096", "--seed", &seed], &[])?;
        let outcome = sink.expect_line(WAIT)?;
        assert!(
            outcome.starts_with("error bad magic: bad magic byte"),
            "{outcome}"
        );
        assert_eq!(sink.wait(WAIT)?.code(), Some(1), "seed {seed}");
        let _ = source.wait(WAIT)?;
    }
    // Garbage after a valid hello.
    for seed in 1..=20 {
        let seed = seed.to_string();
        let (mut source, mut sink) = source_into_sink(
            "garbage-source",
            &["--bytes", "4096", "--seed", &seed, "--after-hello", "1"],
            &[],
        )?;
        let outcome = sink.expect_line(WAIT)?;
        assert!(outcome.starts_with("error bad magic"), "{outcome}");
        assert_eq!(sink.wait(WAIT)?.code(), Some(1), "seed {seed}");
        let _ = source.wait(WAIT)?;
    }
    // A frame over the receiver's limit, refused from its header.
    let (mut source, mut sink) = source_into_sink(
        "frame-source",
        &["--count", "3", "--size", "5000"],
        &["--max-frame-len", "4096"],
    )?;
    let outcome = sink.expect_line(WAIT)?;
    assert!(
        outcome.starts_with("error too large: frame of 5003 bytes exceeds limit of 4096"),
        "{outcome}"
    );
    assert_eq!(sink.wait(WAIT)?.code(), Some(1));
    let _ = source.wait(WAIT)?;
    Ok(())
}

#[test]
fn the_sink_needs_its_stdin_closed_to_finish() -> Result<()> {
    // An empty stream: end of input before any frame is a clean "peer died", not a hang.
    let _watchdog = Watchdog::new("empty stream", WAIT);
    let mut command = Peer::role_command("frame-sink", [] as [&str; 0])?;
    command.stdin(Stdio::null());
    let mut sink = Peer::spawn("sink", command)?;
    let outcome = sink.expect_line(WAIT)?;
    assert_eq!(
        outcome,
        "error peer died: stream ended without a close frame after 0 messages"
    );
    assert_eq!(sink.wait(WAIT)?.code(), Some(1));
    Ok(())
}
