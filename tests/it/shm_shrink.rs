//! ipc-shm against a peer that tries to shrink (or grow) the shared memory with `ftruncate`
//! while both ends run: on a named `/dev/shm` file that made every process that touched the
//! memory afterwards die of SIGBUS. The memory is now a sealed memfd: the truncation fails
//! with `EPERM`, and the ends keep working to the last message.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use ipc_shm::{ChannelConfig, ShmSender};
use ipc_tests::roles::{SAMPLE_TYPE, expected_checksum};
use ipc_tests::{Peer, Watchdog, unique_name};

const WAIT: Duration = Duration::from_secs(60);

/// What a hostile peer's resizing attempts came to.
#[derive(Debug)]
struct Resize {
    len: u64,
    outcomes: Vec<(u64, std::io::Result<()>)>,
    len_after: u64,
}

/// Plays the hostile peer of the same user: opens the segment's memory read-write and
/// `ftruncate`s it to twice, half and then none of its length (ending small, so that on an
/// unsealed file every later access faults).
fn try_to_resize(name: &str) -> Result<Resize> {
    let memory = File::options()
        .read(true)
        .write(true)
        .open(ipc_shm::segment_memory_path(name)?)?;
    let len = memory.metadata()?.len();
    let outcomes = [len * 2, len / 2, 0]
        .into_iter()
        .map(|to| (to, memory.set_len(to)))
        .collect();
    let len_after = memory.metadata()?.len();
    Ok(Resize {
        len,
        outcomes,
        len_after,
    })
}

impl Resize {
    /// Every resize must have been refused with EPERM, leaving the length as it was.
    fn assert_refused(&self) -> Result<()> {
        let len = self.len;
        for (to, outcome) in &self.outcomes {
            match outcome {
                Err(err) => ensure!(
                    err.kind() == std::io::ErrorKind::PermissionDenied,
                    "ftruncate to {to} of {len} bytes failed with {err}, expected EPERM"
                ),
                Ok(()) => anyhow::bail!("ftruncate to {to} of {len} bytes succeeded"),
            }
        }
        ensure!(
            self.len_after == len,
            "memory is {} bytes, was {len}",
            self.len_after
        );
        Ok(())
    }
}

fn not_a_signal(who: &str, status: ExitStatus) -> Result<()> {
    ensure!(
        status.signal().is_none(),
        "{who} was killed by signal {:?} ({status})",
        status.signal()
    );
    ensure!(status.success(), "{who} failed: {status}");
    Ok(())
}

/// The line after `prefix` from `peer`; if there is none, the reason: a death by signal
/// (SIGBUS, on an unsealed segment) first.
fn expect_or_explain(peer: &mut Peer, prefix: &str) -> Result<String> {
    match peer.expect_prefixed(prefix, WAIT) {
        Ok(line) => Ok(line),
        Err(err) => {
            let status = peer.wait(WAIT)?;
            not_a_signal(peer.name(), status)?;
            Err(err)
        }
    }
}

fn spawn_with_stdin<const N: usize>(name: &str, role: &str, args: [&str; N]) -> Result<Peer> {
    let mut command = Peer::role_command(role, args)?;
    command.stdin(Stdio::piped());
    Peer::spawn(name, command)
}

fn go(peer: &mut Peer) -> Result<()> {
    let stdin = peer.stdin().expect("piped stdin");
    stdin.write_all(b"go\n")?;
    stdin.flush()?;
    Ok(())
}

#[test]
fn a_peer_that_truncates_the_channel_memory_kills_nobody() -> Result<()> {
    let _watchdog = Watchdog::new("shrunk shm channel", WAIT);
    let name = unique_name("shm-shrink");
    let (count, size) = (20_000u64, 100usize);
    let mut sink = Peer::spawn_role(
        "sink",
        "shm-sink",
        [
            "--name",
            &name,
            "--create",
            "1",
            "--capacity",
            "4096",
            "--progress",
            "5000",
        ],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "ready");
    let count_s = count.to_string();
    let size_s = size.to_string();
    let mut source = spawn_with_stdin(
        "source",
        "shm-source",
        [
            "--name",
            &name,
            "--count",
            &count_s,
            "--size",
            &size_s,
            "--wait-go",
            "1",
        ],
    )?;
    assert_eq!(source.expect_line(WAIT)?, "ready");

    // Both ends have the memory mapped: shrink it before the stream starts...
    let before = try_to_resize(&name)?;
    go(&mut source)?;
    // ...and again in the middle of it.
    assert_eq!(expect_or_explain(&mut sink, "progress")?, "5000");
    let during = try_to_resize(&name)?;

    // Both ends run to the end: every message arrives, in order and intact.
    let outcome = sink.expect_prefixed("ok", WAIT);
    not_a_signal("source", source.wait(WAIT)?)?;
    not_a_signal("sink", sink.wait(WAIT)?)?;
    let outcome = outcome?;
    let want = format!(
        "count={count} bytes={} checksum={:#018x}",
        count * size as u64,
        expected_checksum(count, size).value()
    );
    assert!(outcome.starts_with(&want), "{outcome}\nwanted {want}");
    before.assert_refused()?;
    during.assert_refused()?;
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}

#[test]
fn a_peer_that_truncates_the_name_file_breaks_no_running_end() -> Result<()> {
    let _watchdog = Watchdog::new("truncated shm name", WAIT);
    let name = unique_name("shm-shrink-name");
    let mut sink = Peer::spawn_role(
        "sink",
        "shm-sink",
        ["--name", &name, "--create", "1", "--capacity", "4096"],
    )?;
    assert_eq!(sink.expect_line(WAIT)?, "ready");
    let mut source = spawn_with_stdin(
        "source",
        "shm-source",
        ["--name", &name, "--count", "5000", "--wait-go", "1"],
    )?;
    assert_eq!(source.expect_line(WAIT)?, "ready");
    // The name file is the rendezvous; emptying it changes nothing for those attached...
    File::options()
        .write(true)
        .open(ipc_shm::segment_path(&name))?
        .set_len(0)?;
    go(&mut source)?;
    let outcome = sink.expect_prefixed("ok", WAIT);
    not_a_signal("source", source.wait(WAIT)?)?;
    not_a_signal("sink", sink.wait(WAIT)?)?;
    assert!(outcome?.starts_with("count=5000 "));
    Ok(())
}

#[test]
fn a_peer_that_truncates_shared_state_kills_nobody_and_the_total_stays_exact() -> Result<()> {
    let _watchdog = Watchdog::new("shrunk shm state", WAIT);
    let name = unique_name("shm-shrink-state");
    // Every end is a process of its own: the owner, and two counters.
    let mut owner = spawn_with_stdin("owner", "shm-state-owner", ["--name", &name])?;
    assert_eq!(owner.expect_line(WAIT)?, "ready");
    let mut counters = (0..2)
        .map(|i| {
            spawn_with_stdin(
                &format!("counter-{i}"),
                "shm-counter",
                ["--name", &name, "--count", "3000", "--wait-go", "1"],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for counter in &mut counters {
        assert_eq!(counter.expect_line(WAIT)?, "ready");
    }
    // Every process has the value mapped; try to take the memory away from under them.
    let resize = try_to_resize(&name)?;
    for counter in &mut counters {
        go(counter)?;
    }
    for (i, counter) in counters.iter_mut().enumerate() {
        let outcome = counter.expect_prefixed("ok", WAIT);
        not_a_signal(&format!("counter-{i}"), counter.wait(WAIT)?)?;
        assert_eq!(outcome?, "count=3000 recovered=0");
    }
    // Opening still validates the segment as before.
    let err = ShmSender::<u8>::open(
        &name,
        &ChannelConfig::new().with_message_type(ipc_core::MessageType::named(SAMPLE_TYPE)),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ipc_core::ErrorKind::UnsupportedVersion, "{err}");
    go(&mut owner)?;
    let outcome = owner.expect_prefixed("ok", WAIT);
    not_a_signal("owner", owner.wait(WAIT)?)?;
    assert_eq!(outcome?, "value=6000");
    resize.assert_refused()?;
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}

#[test]
fn an_opener_refuses_memory_that_its_creator_could_still_shrink() -> Result<()> {
    let _watchdog = Watchdog::new("unsealed shm creator", WAIT);
    let name = unique_name("shm-unsealed");
    // A hostile creator hands out a plain tmpfs file (what version 1 used) with a valid
    // header: an opener that mapped it could be killed by a later ftruncate.
    let mut creator = spawn_with_stdin("creator", "shm-hostile-creator", ["--name", &name])?;
    assert_eq!(creator.expect_line(WAIT)?, "ready");
    let mut source = Peer::spawn_role("source", "shm-source", ["--name", &name])?;
    let outcome = expect_or_explain(&mut source, "error")?;
    assert!(
        outcome.starts_with("protocol violation:") && outcome.contains("seals"),
        "{outcome}"
    );
    assert_eq!(source.wait(WAIT)?.code(), Some(1));
    // The creator shrinks its copy: nobody had mapped it.
    go(&mut creator)?;
    not_a_signal("creator", creator.wait(WAIT)?)?;
    assert!(!ipc_shm::segment_path(&name).exists());
    Ok(())
}
