//! ipc-shm channels between real processes: ordering and content, big messages, many
//! producers, cleanup.

use std::time::Duration;

use anyhow::Result;
use ipc_shm::WaitMode;
use ipc_tests::flows::{self, ShmStream};
use ipc_tests::{Checksum, Peer, Watchdog, fill_payload, unique_name};

const WAIT: Duration = Duration::from_secs(120);

fn stream(count: u64, size: usize, capacity: usize, wait: WaitMode) -> Result<()> {
    let stream = ShmStream {
        count,
        size,
        capacity,
        wait,
    };
    let outcome = flows::shm_stream(stream, &mut flows::no_progress)?;
    assert_eq!(
        (outcome.messages, outcome.bytes),
        (count, count * size as u64)
    );
    Ok(())
}

#[test]
fn a_million_small_messages_arrive_in_order_and_intact() -> Result<()> {
    let _watchdog = Watchdog::new("1M messages over shm", WAIT);
    // About 6 s in a debug build on two shared cores. The flow checks the order, every byte
    // and the checksum of the stream, and that no segment is left behind.
    stream(1_000_000, 64, 64 * 1024, WaitMode::Blocking)
}

#[test]
fn big_messages_wrap_around_a_small_ring_in_polling_mode() -> Result<()> {
    let _watchdog = Watchdog::new("64 KiB messages over shm", WAIT);
    stream(300, 65_536, 256 * 1024, WaitMode::Polling)
}

#[test]
fn odd_sizes_pad_at_the_ring_end() -> Result<()> {
    let _watchdog = Watchdog::new("odd sizes over shm", WAIT);
    // 1000 bytes + header does not divide a 4 KiB ring: every few records need padding.
    stream(5_000, 1_000, 4096, WaitMode::Blocking)
}

#[test]
fn a_type_mismatch_is_refused_at_open() -> Result<()> {
    let _watchdog = Watchdog::new("type mismatch", WAIT);
    let name = unique_name("shm-type");
    let _receiver = ipc_shm::ShmReceiver::<u64>::create(&name, &ipc_shm::ChannelConfig::new())?;
    // The peer opens it as a channel of `Sample`s.
    let mut source = Peer::spawn_role("source", "shm-source", ["--name", &name])?;
    let outcome = source.expect_prefixed("error", WAIT)?;
    assert!(outcome.starts_with("message type mismatch:"), "{outcome}");
    assert!(!source.wait(WAIT)?.success());
    Ok(())
}

#[test]
fn the_checksum_helper_sees_a_changed_byte() {
    // Guards the guard: the stream tests are only as good as their checksum.
    let mut payload = vec![0u8; 64];
    fill_payload(3, &mut payload);
    let mut a = Checksum::default();
    a.add(3, &payload);
    payload[10] ^= 1;
    let mut b = Checksum::default();
    b.add(3, &payload);
    assert_ne!(a, b);
}

#[test]
fn several_producer_processes_feed_one_consumer() -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;

    let _watchdog = Watchdog::new("several shm producers", WAIT);
    let name = unique_name("shm-mpsc");
    let (producers, count) = (4u64, 20_000u64);
    let producers_s = producers.to_string();
    let mut sink = Peer::spawn_role(
        "sink",
        "shm-sink",
        [
            "--name",
            &name,
            "--create",
            "1",
            "--max-senders",
            &producers_s,
            "--producers",
            &producers_s,
            "--capacity",
            "16384",
        ],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "ready");
    let mut sources = Vec::new();
    for p in 0..producers {
        // Producer p numbers its messages from p << 48: the sink checks order per producer.
        let first = (p << 48).to_string();
        let count_s = count.to_string();
        let mut command = Peer::role_command(
            "shm-source",
            [
                "--name",
                &name,
                "--count",
                &count_s,
                "--size",
                "48",
                "--first",
                &first,
                "--wait-go",
                "1",
            ],
        )?;
        command.stdin(Stdio::piped());
        let mut source = Peer::spawn(format!("source-{p}"), command)?;
        assert_eq!(source.expect_line(WAIT)?, "ready");
        sources.push(source);
    }
    // A fifth producer finds every slot taken.
    let mut extra = Peer::spawn_role("extra", "shm-source", ["--name", &name])?;
    let outcome = extra.expect_prefixed("error", WAIT)?;
    assert!(outcome.starts_with("already exists:"), "{outcome}");
    for source in &mut sources {
        let stdin = source.stdin().expect("piped stdin");
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
    }
    for source in &mut sources {
        source.wait_success(WAIT)?;
    }
    let outcome = sink.expect_prefixed("ok", WAIT)?;
    let want = format!(
        "count={} bytes={}",
        producers * count,
        producers * count * 48
    );
    assert!(outcome.starts_with(&want), "{outcome}\nwanted {want}");
    sink.wait_success(WAIT)?;
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}

#[test]
fn the_channel_works_through_the_ipc_core_traits_across_processes() -> Result<()> {
    use ipc_core::{ErrorKind, Receiver};

    /// Generic code: drains any receiver of samples until its sender is gone.
    fn drain<R: Receiver<Message = (u64, Vec<u8>)>>(receiver: &mut R) -> ipc_core::Result<u64> {
        let mut count = 0;
        loop {
            match receiver.recv_timeout(WAIT) {
                Ok((seq, _)) if seq == count => count += 1,
                Ok((seq, _)) => {
                    return Err(ipc_core::Error::new(
                        ErrorKind::Corrupted,
                        format!("got {seq}, expected {count}"),
                    ));
                }
                Err(err) if err.kind() == ErrorKind::PeerClosed => return Ok(count),
                Err(err) => return Err(err),
            }
        }
    }

    let _watchdog = Watchdog::new("shm through the traits", WAIT);
    let name = unique_name("shm-traits");
    // The owned twin of `Sample`: same encoding (a u64 and a length-prefixed byte string).
    let config = ipc_shm::ChannelConfig::new()
        .with_message_type(ipc_core::MessageType::named(ipc_tests::roles::SAMPLE_TYPE));
    let mut receiver = ipc_shm::ShmReceiver::<(u64, Vec<u8>)>::create(&name, &config)?;
    let mut source = Peer::spawn_role(
        "source",
        "shm-source",
        ["--name", &name, "--count", "5000", "--size", "10"],
    )?;
    assert_eq!(drain(&mut receiver)?, 5000);
    source.wait_success(WAIT)?;
    Ok(())
}

#[test]
fn a_producer_killed_mid_stream_does_not_stop_the_others() -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;

    let _watchdog = Watchdog::new("killed shm producer among others", WAIT);
    let name = unique_name("shm-mpsc-kill");
    let mut sink = Peer::spawn_role(
        "sink",
        "shm-sink",
        [
            "--name",
            &name,
            "--create",
            "1",
            "--max-senders",
            "2",
            "--producers",
            "2",
            "--capacity",
            "4096",
            "--tolerate-death",
            "1",
        ],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "ready");
    // Producer 0 runs until killed; producer 1 sends 20000 and waits for a go first, so
    // that both are attached before either could finish.
    let mut doomed = Peer::spawn_role(
        "doomed",
        "shm-source",
        [
            "--name",
            &name,
            "--count",
            "1000000000",
            "--size",
            "32",
            "--progress",
            "1000",
        ],
    )?;
    assert_eq!(doomed.expect_line(WAIT)?, "ready");
    let first = (1u64 << 48).to_string();
    let mut command = Peer::role_command(
        "shm-source",
        [
            "--name",
            &name,
            "--count",
            "20000",
            "--size",
            "32",
            "--first",
            &first,
            "--wait-go",
            "1",
        ],
    )?;
    command.stdin(Stdio::piped());
    let mut survivor = Peer::spawn("survivor", command)?;
    assert_eq!(survivor.expect_line(WAIT)?, "ready");
    assert_eq!(doomed.expect_prefixed("progress", WAIT)?, "1000");
    doomed.kill()?;
    let stdin = survivor.stdin().expect("piped stdin");
    stdin.write_all(b"go\n")?;
    stdin.flush()?;
    survivor.wait_success(WAIT)?;
    let died = sink.expect_prefixed("peer-died", WAIT)?;
    assert!(died.starts_with("the sender of channel"), "{died}");
    let outcome = sink.expect_prefixed("ok", WAIT)?;
    let per_producer = outcome
        .split_whitespace()
        .find_map(|field| field.strip_prefix("per_producer="))
        .unwrap_or_default();
    let (killed, survived) = per_producer.split_once(',').unwrap_or_default();
    // Every message of the survivor arrived, in order (the sink checked the order); the
    // killed one's arrived in order up to where it died.
    assert_eq!(survived, "20000", "{outcome}");
    assert!(killed.parse::<u64>()? >= 1000, "{outcome}");
    sink.wait_success(WAIT)?;
    Ok(())
}
