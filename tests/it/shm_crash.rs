//! ipc-shm under SIGKILL: every surviving peer gets an error, never a hang, and names can be
//! created again; and a reader whose segment is scribbled over returns errors, never panics.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender};
use ipc_tests::{Peer, Watchdog, fill_payload, unique_name};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_sender_killed_mid_stream_is_peer_died_at_the_receiver() -> Result<()> {
    let _watchdog = Watchdog::new("killed shm sender", WAIT);
    for polling in ["0", "1"] {
        let name = unique_name("shm-kill-tx");
        let mut sink = Peer::spawn_role(
            "sink",
            "shm-sink",
            [
                "--name",
                &name,
                "--create",
                "1",
                "--progress",
                "1000",
                "--polling",
                polling,
            ],
        )?;
        assert_eq!(sink.expect_line(WAIT)?, "ready");
        let mut source = Peer::spawn_role(
            "source",
            "shm-source",
            [
                "--name",
                &name,
                "--count",
                "1000000000",
                "--size",
                "100",
                "--polling",
                polling,
            ],
        )?;
        assert_eq!(sink.expect_prefixed("progress", WAIT)?, "1000");
        source.kill()?;
        let outcome = sink.expect_prefixed("error", WAIT)?;
        assert!(
            outcome.starts_with("peer died:"),
            "polling={polling}: {outcome}"
        );
        assert!(!sink.wait(WAIT)?.success());
        assert!(!ipc_shm::segment_path(&name).exists());
    }
    Ok(())
}

/// A `shm-source` that creates channel `name` with a 4 KiB ring and would send forever;
/// returns once the channel exists.
fn endless_creating_source(name: &str) -> Result<Peer> {
    let mut source = Peer::spawn_role(
        "source",
        "shm-source",
        [
            "--name",
            name,
            "--create",
            "1",
            "--count",
            "1000000000",
            "--capacity",
            "4096",
        ],
    )?;
    assert_eq!(source.expect_line(WAIT)?, "ready");
    Ok(source)
}

#[test]
fn a_receiver_killed_is_peer_died_at_the_blocked_sender() -> Result<()> {
    let _watchdog = Watchdog::new("killed shm receiver", WAIT);
    let name = unique_name("shm-kill-rx");
    // The sender creates the channel; the receiver attaches and then hangs around, reading
    // nothing, until it is killed.
    let mut source = endless_creating_source(&name)?;
    let receiver = ShmReceiver::<u8>::open(
        &name,
        &ChannelConfig::new()
            .with_message_type(ipc_core::MessageType::named(ipc_tests::roles::SAMPLE_TYPE)),
    )?;
    // Our receiver is this test process; it cannot be SIGKILLed, so hand the role to a
    // peer that dies instead: close ours (orderly) first and check that case too.
    drop(receiver);
    let outcome = source.expect_prefixed("error", WAIT)?;
    assert!(outcome.starts_with("peer closed:"), "{outcome}");
    source.wait(WAIT)?;

    // Now a real receiver process, killed while the sender is blocked on a full ring.
    let name = unique_name("shm-kill-rx2");
    let mut source = endless_creating_source(&name)?;
    let mut sink = Peer::spawn_role("sink", "shm-sink", ["--name", &name, "--progress", "100"])?;
    assert_eq!(sink.expect_line(WAIT)?, "ready");
    assert_eq!(sink.expect_prefixed("progress", WAIT)?, "100");
    sink.kill()?;
    let outcome = source.expect_prefixed("error", WAIT)?;
    assert!(outcome.starts_with("peer died:"), "{outcome}");
    assert!(!source.wait(WAIT)?.success());
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}

#[test]
fn a_killed_creator_leaves_a_segment_that_the_next_create_reclaims() -> Result<()> {
    let _watchdog = Watchdog::new("reclaim after kill", WAIT);
    let name = unique_name("shm-reclaim");
    let config = ChannelConfig::new();
    let mut holder = Peer::spawn_role("holder", "shm-create-and-hold", ["--name", &name])?;
    assert_eq!(holder.expect_line(WAIT)?, "ready");
    // Its owner lives: the name is taken.
    let err = ShmReceiver::<u8>::create(&name, &config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    holder.kill()?;
    assert!(
        ipc_shm::segment_path(&name).exists(),
        "SIGKILL runs no cleanup"
    );
    // Opening the leftover is an error naming the dead owner, not an attach to stale memory.
    let err = ShmSender::<u8>::open(&name, &config).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerDied, "{err}");
    // Creating again reclaims it.
    let receiver = ShmReceiver::<u8>::create(&name, &config)?;
    let mut sender = ShmSender::<u8>::open(&name, &config)?;
    sender.send(&5)?;
    let mut receiver = receiver;
    assert_eq!(receiver.recv()?, 5);
    drop(sender);
    drop(receiver);
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}

#[test]
fn a_reader_of_a_scribbled_segment_returns_errors_and_never_panics() -> Result<()> {
    let _watchdog = Watchdog::new("scribble", WAIT);
    let name = unique_name("shm-scribble");
    let mut sink = Peer::spawn_role(
        "sink",
        "shm-tolerant-sink",
        [
            "--name",
            &name,
            "--max-errors",
            "2000",
            "--capacity",
            "4096",
        ],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "ready");
    let mut source = Peer::spawn_role(
        "source",
        "shm-source",
        ["--name", &name, "--count", "1000000000", "--size", "40"],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "receiving");
    // This process plays the hostile peer: random bytes at random places of the header,
    // the control lines and the ring, while both ends run. The memory is the creator's
    // sealed memfd, which a process of the same user can open and write (but not resize).
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(ipc_shm::segment_memory_path(&name)?)?;
    let len = file.metadata()?.len();
    let mut noise = vec![0u8; 64];
    let mut seed = 1u64;
    let outcome = loop {
        for _ in 0..50 {
            seed += 1;
            fill_payload(seed, &mut noise);
            let at = u64::from_le_bytes(noise[..8].try_into()?) % len;
            let n = (noise[8] as u64 % 16 + 1).min(len - at) as usize;
            file.write_at(&noise[16..16 + n], at)?;
        }
        if let Ok(line) = sink.expect_line(Duration::from_millis(1)) {
            break line;
        }
    };
    eprintln!("scribbled reader: {outcome}");
    // Exit code 0 or 1 with an outcome line; a panic would be 101, a fault a signal.
    assert!(
        outcome.starts_with("ok received=") || outcome.starts_with("error "),
        "{outcome}"
    );
    let status = sink.wait(WAIT)?;
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "sink ended with {status}"
    );
    // The sender read the same scribbled control words: it too must end with an error (the
    // receiver closed, or the ring is corrupted), not a panic or a hang.
    let status = source.wait(WAIT)?;
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "source ended with {status}"
    );
    Ok(())
}
