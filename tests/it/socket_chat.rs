//! A chat across real processes: an ipc-socket server, Rust clients, the Python client, and
//! one client killed with SIGKILL in the middle of its stream.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use ipc_tests::flows::{self, ChatTransport};
use ipc_tests::{Peer, Watchdog};

const WAIT: Duration = Duration::from_secs(180);
const COUNT: u64 = 1000;

/// The chat of the `chat-*` scenarios, at full size: 8 clients (the last one the Python
/// client when python3 is there) each send 1000 lines and receive everyone's, in order per
/// sender; a ninth client is killed with SIGKILL in the middle of its stream; the server
/// reports it and keeps serving.
fn chat(transport: ChatTransport) -> Result<()> {
    let _watchdog = Watchdog::new("chat of 8 clients and a victim", WAIT);
    if flows::python_chat_client().is_none() {
        println!("skipped the Python chat client: python3 is not installed");
    }
    let outcome = flows::chat(transport, 8, COUNT, &mut flows::no_progress)?;
    assert_eq!(outcome.messages, 8 * 8 * COUNT);
    Ok(())
}

#[test]
fn chat_over_a_socket_file_with_a_killed_client_and_python() -> Result<()> {
    chat(ChatTransport::LocalSocket)
}

#[test]
fn chat_over_tcp_with_a_killed_client_and_python() -> Result<()> {
    chat(ChatTransport::Tcp)
}

#[test]
fn chat_over_a_namespaced_local_socket_with_a_killed_client_and_python() -> Result<()> {
    chat(ChatTransport::Namespaced)
}

#[test]
fn python_requests_in_flight_come_back_as_their_echo() -> Result<()> {
    let Some(script) = flows::python_chat_client() else {
        println!("skipped: python3 is not installed");
        return Ok(());
    };
    let _watchdog = Watchdog::new("python requests", WAIT);
    let mut server = Peer::role_command("socket-server", ["--address", "tcp:127.0.0.1:0"])?;
    server.stdin(Stdio::piped());
    let mut server = Peer::spawn("server", server)?;
    let bound = server.expect_prefixed("ready address=", WAIT)?;
    let mut command = Command::new("python3");
    command
        .arg(script)
        .args(["requests", "--address", &bound, "--count", "200"]);
    let mut client = Peer::spawn("python requests", command)?;
    assert_eq!(client.expect_line(WAIT)?, "ok requests=200");
    client.wait_success(WAIT)?;
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    server.wait_success(WAIT)?;
    Ok(())
}

/// The Python client over `tls:` with a token: in with the right one (server certificate
/// checked against the test CA), refused with close code 11 with a wrong one or none, and
/// refused by its own TLS check against a CA that did not sign the server; no token ever
/// shows in what it prints, and the server serves the next client after each refusal.
#[test]
fn python_over_tls_with_tokens_gets_in_only_with_a_good_token() -> Result<()> {
    let Some(script) = flows::python_chat_client() else {
        println!("skipped: python3 is not installed");
        return Ok(());
    };
    let _watchdog = Watchdog::new("python tls tokens", WAIT);
    let pki = ipc_tests::tls::TestPki::generate()?;
    let tokens = pki.dir().join("tokens");
    std::fs::write(&tokens, "first-secret-77aa\nsecond-secret-0c3e\n")?;
    let good = pki.dir().join("good-token");
    std::fs::write(&good, "second-secret-0c3e\n")?;
    let wrong = pki.dir().join("wrong-token");
    std::fs::write(&wrong, "third-secret-5b5b")?;
    let path = |p: &std::path::Path| p.display().to_string();

    let mut server = Peer::role_command("socket-server", ["--address", "tls:127.0.0.1:0"])?;
    server
        .args(pki.server_args("server"))
        .args(["--tokens-file", &path(&tokens)])
        .stdin(Stdio::piped());
    let mut server = Peer::spawn("server", server)?;
    let bound = server.expect_prefixed("ready address=", WAIT)?;
    let python = |extra: &[String]| -> Result<(String, bool)> {
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .args(["requests", "--address", &bound, "--count", "40"])
            .args(extra);
        let mut client = Peer::spawn("python", command)?;
        let line = client.expect_line(WAIT)?;
        let ok = client.wait(WAIT)?.success();
        assert!(!line.contains("secret"), "a token leaked: {line}");
        Ok((line, ok))
    };
    let ca = ["--tls-ca".to_owned(), pki.arg("ca.pem")];
    let with = |token: &std::path::Path, ca: &[String]| {
        let mut args = ca.to_vec();
        args.extend(["--token-file".to_owned(), path(token)]);
        args
    };

    assert_eq!(
        python(&with(&good, &ca))?,
        ("ok requests=40".to_owned(), true)
    );
    let (line, ok) = python(&with(&wrong, &ca))?;
    assert!(!ok, "{line}");
    assert_eq!(
        line,
        "error Refused: server refused: close code 11: the token presented is not accepted"
    );
    let (line, ok) = python(&ca)?;
    assert!(!ok, "{line}");
    assert_eq!(
        line,
        "error Refused: server refused: close code 11: no token presented"
    );
    let other_ca = ["--tls-ca".to_owned(), pki.arg("other-ca.pem")];
    let (line, ok) = python(&with(&good, &other_ca))?;
    assert!(!ok, "{line}");
    assert!(
        line.starts_with("error SSLCertVerificationError") && line.contains("verify failed"),
        "{line}"
    );
    // And the server still serves a good client after the three refusals.
    assert_eq!(
        python(&with(&good, &ca))?,
        ("ok requests=40".to_owned(), true)
    );
    server.close_stdin();
    server.expect_prefixed("ok", WAIT)?;
    server.wait_success(WAIT)?;
    Ok(())
}
