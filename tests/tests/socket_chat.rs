//! A chat across real processes: an ipc-socket server, Rust clients, the Python client, and
//! one client killed with SIGKILL in the middle of its stream.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};
use ipc_tests::{Peer, TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(180);
const COUNT: u64 = 1000;

fn python() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("skipped the Python chat client: python3 is not installed");
    }
    found.then_some("python3")
}

fn python_client() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/ipc-socket/python/ipc_client.py")
}

/// Spawns the chat server with a piped stdin (closing it stops the server).
fn spawn_server(address: &str) -> Result<(Peer, String)> {
    let mut command = Peer::role_command("socket-server", ["--address", address])?;
    command.stdin(Stdio::piped());
    let mut server = Peer::spawn("server", command)?;
    let bound = server.expect_prefixed("ready address=", WAIT)?;
    Ok((server, bound))
}

fn chat_command(
    address: &str,
    name: &str,
    count: u64,
    expect: &str,
    python: bool,
) -> Result<Command> {
    let count = count.to_string();
    let args = [
        "--address",
        address,
        "--name",
        name,
        "--count",
        &count,
        "--expect",
        expect,
    ];
    let mut command = if python {
        let mut command = Command::new("python3");
        command.arg(python_client()).arg("chat").args(args);
        command
    } else {
        let mut command = Peer::role_command("socket-chat", args)?;
        if name == "victim" {
            command.args(["--progress", "200"]);
        }
        command
    };
    command.stdin(Stdio::piped());
    Ok(command)
}

fn chat(address: &str) -> Result<()> {
    let _watchdog = Watchdog::new("chat of 8 clients and a victim", WAIT);
    let (mut server, bound) = spawn_server(address)?;
    let with_python = python().is_some();
    let mut names: Vec<String> = (0..7).map(|i| format!("rust{i}")).collect();
    names.push(if with_python { "python" } else { "rust7" }.to_owned());
    let expect = names.join(",");

    let mut clients = Vec::new();
    for name in &names {
        let python = name == "python";
        let command = chat_command(&bound, name, COUNT, &expect, python)?;
        clients.push(Peer::spawn(name.clone(), command)?);
    }
    // The victim streams far more than it will live to send.
    let mut victim = Peer::spawn(
        "victim",
        chat_command(&bound, "victim", 1_000_000, &expect, false)?,
    )?;
    for client in clients.iter_mut().chain(std::iter::once(&mut victim)) {
        let line = client.expect_line(WAIT)?;
        if line != "subscribed" {
            bail!("{}: expected `subscribed`, got {line:?}", client.name());
        }
    }
    for client in clients.iter_mut().chain(std::iter::once(&mut victim)) {
        let stdin = client.stdin().expect("stdin is piped");
        writeln!(stdin, "go")?;
        stdin.flush()?;
    }
    // Kill the victim in the middle of its stream (possibly in the middle of a frame).
    victim.expect_prefixed("progress 200", WAIT)?;
    victim.kill()?;

    for client in &mut clients {
        let outcome = client
            .expect_prefixed("ok", WAIT)
            .map_err(|err| err.context(format!("client {} did not finish", client.name())))?;
        for name in &names {
            let want = format!("{name}:{COUNT}");
            assert!(
                outcome.split([' ', ',', '=']).any(|part| part == want),
                "{}: {outcome} lacks {want}",
                client.name()
            );
        }
        client.wait_success(WAIT)?;
    }
    // The server saw the victim go, and still serves: it stops cleanly when asked.
    server.close_stdin();
    let mut saw_victim_close = false;
    loop {
        let line = server.expect_line(WAIT)?;
        if line.starts_with("closed") && line.contains("error=") {
            saw_victim_close = true;
        }
        if line == "ok" {
            break;
        }
    }
    assert!(
        saw_victim_close,
        "the server never reported the killed client"
    );
    server.wait_success(WAIT)?;
    Ok(())
}

#[test]
fn chat_over_a_socket_file_with_a_killed_client_and_python() -> Result<()> {
    let dir = TempDir::new("chat")?;
    chat(&format!("unix:{}", dir.path().join("chat.sock").display()))
}

#[test]
fn chat_over_tcp_with_a_killed_client_and_python() -> Result<()> {
    chat("tcp:127.0.0.1:0")
}

#[test]
fn chat_over_a_namespaced_local_socket_with_a_killed_client_and_python() -> Result<()> {
    chat(&format!("local:{}", ipc_tests::unique_name("chat")))
}

#[test]
fn python_requests_in_flight_come_back_as_their_echo() -> Result<()> {
    let Some(python) = python() else {
        return Ok(());
    };
    let _watchdog = Watchdog::new("python requests", WAIT);
    let (mut server, bound) = spawn_server("tcp:127.0.0.1:0")?;
    let mut command = Command::new(python);
    command
        .arg(python_client())
        .args(["requests", "--address", &bound, "--count", "200"]);
    let mut client = Peer::spawn("python requests", command)?;
    assert_eq!(client.expect_line(WAIT)?, "ok requests=200");
    client.wait_success(WAIT)?;
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    server.wait_success(WAIT)?;
    Ok(())
}
