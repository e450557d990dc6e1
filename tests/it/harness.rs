//! The harness itself: peers are killed and reaped, deadlines hold, names are unique.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use ipc_tests::{Peer, TempDir, Watchdog, unique_name};

const WAIT: Duration = Duration::from_secs(60);

/// A peer that waits for input forever: `frame-sink` on a stdin nobody writes to.
fn silent_peer() -> Result<Peer> {
    let mut command = Peer::role_command("frame-sink", [] as [&str; 0])?;
    command.stdin(Stdio::piped());
    Peer::spawn("silent", command)
}

#[test]
fn a_killed_peer_dies_of_sigkill_and_is_reaped() -> Result<()> {
    let _watchdog = Watchdog::new("kill", WAIT);
    let mut peer = silent_peer()?;
    let pid = peer.pid();
    assert_eq!(peer.kill()?.signal(), Some(9));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists after kill and reap"
    );
    Ok(())
}

#[test]
fn a_dropped_peer_is_killed_and_reaped() -> Result<()> {
    let _watchdog = Watchdog::new("drop", WAIT);
    let peer = silent_peer()?;
    let pid = peer.pid();
    drop(peer);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    Ok(())
}

#[test]
fn waiting_for_a_line_has_a_deadline() -> Result<()> {
    let _watchdog = Watchdog::new("deadline", WAIT);
    let mut peer = silent_peer()?;
    let err = peer.expect_line(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.to_string(), "peer `silent` printed no line within 50ms");
    // A peer that outlives its wait is killed, and the wait says so.
    let err = peer.wait(Duration::from_millis(50));
    match err {
        // Closing stdin (which `wait` does) may let the sink finish first: then it failed
        // cleanly with "stream ended", exit code 1.
        Ok(status) => assert_eq!(status.code(), Some(1)),
        Err(err) => assert!(
            err.to_string().contains("did not exit within 50ms"),
            "{err}"
        ),
    }
    Ok(())
}

#[test]
fn exit_status_tells_a_kill_from_a_failure() -> Result<()> {
    let _watchdog = Watchdog::new("status", WAIT);
    let mut failing = Peer::spawn_role("failing", "no-such-role", [] as [&str; 0])?;
    let line = failing.expect_line(WAIT)?;
    assert_eq!(line, "error error: unknown role `no-such-role`");
    let status = failing.wait(WAIT)?;
    assert_eq!(status.code(), Some(1));
    assert_eq!(status.signal(), None);
    Ok(())
}

#[test]
fn names_and_directories_are_unique_and_owner_only() -> Result<()> {
    let names: HashSet<String> = (0..1000).map(|_| unique_name("t")).collect();
    assert_eq!(names.len(), 1000);
    let dir = TempDir::new("harness")?;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path())?.permissions());
    assert_eq!(mode & 0o777, 0o700);
    let path = dir.path().to_owned();
    drop(dir);
    assert!(!path.exists());
    Ok(())
}
