//! A server killed with SIGKILL and restarted on the same socket file: the stale file is
//! reclaimed, a live server's never is, and a client reconnects and resubscribes by itself.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Result, bail};
use ipc_socket::{Client, ClientConfig};
use ipc_tests::{Peer, TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

use ipc_tests::roles::{ChatLine, chat_config};

fn spawn_server(name: &str, address: &str) -> Result<Peer> {
    let mut command = Peer::role_command("socket-server", ["--address", address])?;
    command.stdin(Stdio::piped());
    Peer::spawn(name, command)
}

#[test]
fn clients_find_a_restarted_server_again() -> Result<()> {
    let _watchdog = Watchdog::new("server restart", WAIT);
    let dir = TempDir::new("restart")?;
    let socket_file = dir.path().join("s.sock");
    let address = format!("unix:{}", socket_file.display());

    let mut first = spawn_server("first server", &address)?;
    first.expect_prefixed("ready", WAIT)?;
    // A second server on a live address is refused; the live server's file stays.
    let mut intruder = spawn_server("intruder", &address)?;
    let outcome = intruder.expect_line(WAIT)?;
    assert!(
        outcome.starts_with("error already exists: a server is already listening"),
        "{outcome}"
    );
    assert_eq!(intruder.wait(WAIT)?.code(), Some(1));

    let mut watcher = Peer::spawn_role("watcher", "socket-watch", ["--address", &address])?;
    assert_eq!(watcher.expect_line(WAIT)?, "connected");

    first.kill()?;
    assert!(
        socket_file.exists(),
        "a killed server leaves its socket file"
    );
    let line = watcher.expect_line(WAIT)?;
    assert!(line.starts_with("disconnected"), "{line}");

    let mut second = spawn_server("second server", &address)?;
    second.expect_prefixed("ready", WAIT)?;
    assert_eq!(watcher.expect_line(WAIT)?, "reconnected");

    // The watcher resubscribed; its Subscribe may still be in flight, so publish until it
    // arrives.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = chat_config();
    let publisher = runtime.block_on(Client::<ChatLine>::connect(ClientConfig::new(
        address.parse()?,
        config,
    )))?;
    let bye = ChatLine {
        from: "test".into(),
        seq: 0,
        text: "bye".into(),
    };
    let mut delivered = false;
    for _ in 0..100 {
        runtime.block_on(publisher.publish("t", &bye))?;
        if let Ok(line) = watcher.expect_line(Duration::from_millis(200)) {
            if line != "got bye" {
                bail!("watcher printed {line:?}");
            }
            delivered = true;
            break;
        }
    }
    assert!(
        delivered,
        "the watcher never got a publication after reconnecting"
    );
    let outcome = watcher.expect_prefixed("ok", WAIT)?;
    assert_eq!(outcome, "connections=2");
    watcher.wait_success(WAIT)?;
    second.close_stdin();
    second.expect_prefixed("ok", WAIT)?;
    second.wait_success(WAIT)?;
    Ok(())
}

#[test]
fn a_stopped_client_is_dropped_by_the_heartbeat_and_others_stay() -> Result<()> {
    let _watchdog = Watchdog::new("stopped client", WAIT);
    let mut command = Peer::role_command(
        "socket-server",
        ["--address", "tcp:127.0.0.1:0", "--heartbeat-ms", "200"],
    )?;
    command.stdin(Stdio::piped());
    let mut server = Peer::spawn("server", command)?;
    let address = server.expect_prefixed("ready address=", WAIT)?;
    let mut frozen = Peer::spawn_role("frozen", "socket-watch", ["--address", &address])?;
    assert_eq!(frozen.expect_line(WAIT)?, "connected");
    let mut lively = Peer::spawn_role("lively", "socket-watch", ["--address", &address])?;
    assert_eq!(lively.expect_line(WAIT)?, "connected");
    server.expect_prefixed("connected", WAIT)?;
    server.expect_prefixed("connected", WAIT)?;

    // SIGSTOP: the process is alive and its socket open, but it answers nothing.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &frozen.pid().to_string()])
        .status()?;
    assert!(stopped.success());
    let line = server.expect_prefixed("closed", WAIT)?;
    assert!(
        line.contains("error=peer died: peer silent for"),
        "server reported {line:?}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &frozen.pid().to_string()])
        .status();
    frozen.kill()?;

    // The lively client is still served: a publication reaches it.
    publish_bye(&address)?;
    assert_eq!(lively.expect_line(WAIT)?, "got bye");
    lively.expect_prefixed("ok", WAIT)?;
    lively.wait_success(WAIT)?;
    Ok(())
}

#[test]
fn a_client_killed_mid_frame_disturbs_nobody() -> Result<()> {
    let _watchdog = Watchdog::new("client killed mid-frame", WAIT);
    let mut server = spawn_server("server", "tcp:127.0.0.1:0")?;
    let address = server.expect_prefixed("ready address=", WAIT)?;
    let mut watcher = Peer::spawn_role("watcher", "socket-watch", ["--address", &address])?;
    assert_eq!(watcher.expect_line(WAIT)?, "connected");
    server.expect_prefixed("connected", WAIT)?;
    let mut command = Peer::role_command("socket-half-frame", ["--address", &address])?;
    command.stdin(Stdio::piped());
    let mut half = Peer::spawn("half frame", command)?;
    assert_eq!(half.expect_line(WAIT)?, "sent");
    server.expect_prefixed("connected", WAIT)?;
    half.kill()?;
    let line = server.expect_prefixed("closed", WAIT)?;
    // End of stream inside a frame, or a reset (the killed client left the server's hello
    // unread) while a frame was half received.
    assert!(
        line.contains("error=truncated: client vanished: stream ended inside a frame")
            || line.contains("error=peer closed: client vanished mid-frame"),
        "server reported {line:?}"
    );

    publish_bye(&address)?;
    assert_eq!(watcher.expect_line(WAIT)?, "got bye");
    watcher.expect_prefixed("ok", WAIT)?;
    watcher.wait_success(WAIT)?;
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    server.wait_success(WAIT)?;
    Ok(())
}

/// Publishes `bye` on topic `t` from a fresh client of the server at `address` (what
/// `socket-watch` waits for before it ends).
fn publish_bye(address: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = chat_config();
    let publisher = runtime.block_on(Client::<ChatLine>::connect(ClientConfig::new(
        address.parse()?,
        config,
    )))?;
    let bye = ChatLine {
        from: "test".into(),
        seq: 0,
        text: "bye".into(),
    };
    // Closing flushes the publication before the connection ends.
    runtime.block_on(async {
        publisher.publish("t", &bye).await?;
        publisher.close().await
    })?;
    Ok(())
}
