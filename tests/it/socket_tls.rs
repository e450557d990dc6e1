//! TLS, mutual TLS and tokens across real processes: a `socket-server` peer and
//! `socket-probe` clients, with certificates made at run time (`ipc_tests::tls`). Every
//! refusal names its reason, and the server keeps serving the clients that belong.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_tests::tls::TestPki;
use ipc_tests::{Peer, Watchdog, field};

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A running `socket-server` peer and its address (shared with `socket_wss`).
pub(crate) struct Server {
    pub(crate) peer: Peer,
    pub(crate) address: String,
}

impl Server {
    pub(crate) fn start(address: &str, options: &[String]) -> Result<Server> {
        let mut args = vec!["--address".to_owned(), address.to_owned()];
        args.extend_from_slice(options);
        let mut command = Peer::role_command("socket-server", &args)?;
        command.stdin(Stdio::piped());
        let mut peer = Peer::spawn("server", command)?;
        let address = peer.expect_prefixed("ready address=", WAIT)?;
        Ok(Server { peer, address })
    }

    /// The next `connected`/`rejected`/`closed` line.
    pub(crate) fn event(&mut self) -> Result<String> {
        loop {
            let line = self.peer.expect_line(WAIT)?;
            if line.starts_with("connected")
                || line.starts_with("rejected")
                || line.starts_with("closed")
            {
                return Ok(line);
            }
        }
    }

    pub(crate) fn expect_rejected(&mut self) -> Result<String> {
        loop {
            let line = self.event()?;
            if line.starts_with("rejected") {
                return Ok(line);
            }
        }
    }

    pub(crate) fn expect_connected(&mut self) -> Result<String> {
        loop {
            let line = self.event()?;
            if line.starts_with("connected") {
                return Ok(line);
            }
        }
    }

    pub(crate) fn stop(mut self) -> Result<()> {
        self.peer.close_stdin();
        self.peer.expect_prefixed("ok", WAIT)?;
        self.peer.wait_success(WAIT)
    }
}

/// Runs one `socket-probe` and returns its verdict line (`ok` or `refused kind=.. error=..`).
pub(crate) fn probe(address: &str, options: &[String]) -> Result<String> {
    let mut args = vec!["--address".to_owned(), address.to_owned()];
    args.extend_from_slice(options);
    let mut peer = Peer::spawn_role("probe", "socket-probe", &args)?;
    let line = peer.expect_line(WAIT)?;
    peer.wait_success(WAIT)?;
    Ok(line)
}

pub(crate) fn blocking(mut options: Vec<String>) -> Vec<String> {
    options.extend(["--blocking".to_owned(), "true".to_owned()]);
    options
}

pub(crate) fn args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(key, value)| [format!("--{key}"), value.clone()])
        .collect()
}

/// The error of a `refused` line, failing if the probe got in.
pub(crate) fn refusal(line: &str) -> Result<(String, String)> {
    let Some(rest) = line.strip_prefix("refused ") else {
        bail!("expected a refusal, got `{line}`");
    };
    let kind = field(rest, "kind").context("kind")?.to_owned();
    let error = rest
        .split_once("error=")
        .map(|(_, error)| error.to_owned())
        .context("error")?;
    Ok((kind, error))
}

pub(crate) fn trusting(pki: &TestPki) -> Vec<String> {
    args(&[("tls-ca", pki.arg("ca.pem"))])
}

#[test]
fn server_authenticated_tls_carries_requests_both_apis() -> Result<()> {
    let _watchdog = Watchdog::new("server-auth tls", WAIT * 2);
    let pki = TestPki::generate()?;
    let mut server = Server::start("tls:127.0.0.1:0", &pki.server_args("server"))?;
    assert!(
        server.address.starts_with("tls:127.0.0.1:"),
        "{}",
        server.address
    );
    assert_eq!(probe(&server.address, &trusting(&pki))?, "ok");
    assert_eq!(probe(&server.address, &blocking(trusting(&pki)))?, "ok");
    // The server name may be a DNS name too: the certificate has `localhost`.
    let port = server
        .address
        .rsplit(':')
        .next()
        .context("port")?
        .to_owned();
    assert_eq!(
        probe(&format!("tls:localhost:{port}"), &trusting(&pki))?,
        "ok"
    );
    let connected = server.expect_connected()?;
    assert!(connected.contains("peer=127.0.0.1:"), "{connected}");
    server.stop()
}

#[test]
fn mutual_tls_shows_the_client_identity_and_refuses_the_others() -> Result<()> {
    let _watchdog = Watchdog::new("mutual tls", WAIT * 3);
    let pki = TestPki::generate()?;
    let mut options = pki.server_args("server");
    options.extend(args(&[("tls-client-ca", pki.arg("ca.pem"))]));
    let mut server = Server::start("tls:127.0.0.1:0", &options)?;
    let address = server.address.clone();
    let with_client = |name: &str| {
        let mut options = trusting(&pki);
        options.extend(args(&[
            ("tls-client-cert", pki.arg(&format!("{name}.pem"))),
            ("tls-client-key", pki.arg(&format!("{name}.key"))),
        ]));
        options
    };

    assert_eq!(probe(&address, &with_client("client"))?, "ok");
    let connected = server.expect_connected()?;
    assert!(
        connected.contains("certificate `CN=alice`") && connected.contains("DNS:alice.example"),
        "{connected}"
    );
    assert_eq!(probe(&address, &blocking(with_client("client")))?, "ok");
    server.expect_connected()?;

    // No certificate at all.
    let (kind, error) = refusal(&probe(&address, &trusting(&pki))?)?;
    assert_eq!(kind, "PermissionDenied", "{error}");
    assert!(error.contains("CertificateRequired"), "{error}");
    let rejected = server.expect_rejected()?;
    assert!(
        rejected.contains("error=permission denied")
            && rejected.contains("peer sent no certificates"),
        "{rejected}"
    );

    // Signed by a CA the server does not trust.
    let (kind, error) = refusal(&probe(&address, &with_client("other-client"))?)?;
    assert_eq!(kind, "PermissionDenied", "{error}");
    let rejected = server.expect_rejected()?;
    assert!(
        rejected.contains("UnknownIssuer") || rejected.contains("unknown issuer"),
        "{rejected}"
    );

    // Expired.
    let (kind, error) = refusal(&probe(&address, &with_client("expired-client"))?)?;
    assert_eq!(kind, "PermissionDenied", "{error}");
    let rejected = server.expect_rejected()?;
    assert!(rejected.contains("expired"), "{rejected}");

    // The server still serves clients that belong.
    assert_eq!(probe(&address, &with_client("client"))?, "ok");
    server.expect_connected()?;
    server.stop()
}

/// Bad server certificates, over `tls:` and `wss://`, with both APIs: each refused on
/// both sides with an error that names the reason.
#[test]
fn bad_server_certificates_are_refused_with_their_reason() -> Result<()> {
    let _watchdog = Watchdog::new("bad server certificates", WAIT * 4);
    let pki = TestPki::generate()?;
    let cases = [
        ("expired", trusting(&pki), "expired"),
        ("wrong-host", trusting(&pki), "not valid for name"),
        ("self-signed", trusting(&pki), "UnknownIssuer"),
        ("other-server", trusting(&pki), "UnknownIssuer"),
        // The client trusts another CA than the one that signed the server.
        (
            "server",
            args(&[("tls-ca", pki.arg("other-ca.pem"))]),
            "UnknownIssuer",
        ),
        (
            "server",
            args(&[("tls-pin", pki.arg("self-signed.der"))]),
            "not the pinned one",
        ),
    ];
    let over = |address: &'static str| cases.clone().map(|case| (address, case));
    for (address, (certificate, client, reason)) in over("tls:127.0.0.1:0")
        .into_iter()
        .chain(over("wss://127.0.0.1:0/ipc"))
    {
        let mut server = Server::start(address, &pki.server_args(certificate))?;
        for options in [client.clone(), blocking(client.clone())] {
            let line = probe(&server.address, &options)?;
            let (kind, error) = refusal(&line)?;
            println!("{certificate}: {error}");
            assert_eq!(kind, "PermissionDenied", "{certificate}: {error}");
            assert!(
                error.contains(reason) || error.to_lowercase().contains(&reason.to_lowercase()),
                "{certificate}: `{error}` should name `{reason}`"
            );
            // The server side learns it too: the client's alert names the reason.
            let rejected = server.expect_rejected()?;
            println!("server: {rejected}");
            assert!(
                rejected.contains("tls handshake") && rejected.contains("received fatal alert"),
                "{certificate}: {rejected}"
            );
        }
        server.stop()?;
    }
    // The pinned self-signed certificate is the one exception, and only when pinned.
    let mut server = Server::start("tls:127.0.0.1:0", &pki.server_args("self-signed"))?;
    let pinned = args(&[("tls-pin", pki.arg("self-signed.der"))]);
    assert_eq!(probe(&server.address, &pinned)?, "ok");
    assert_eq!(probe(&server.address, &blocking(pinned))?, "ok");
    server.expect_connected()?;
    server.stop()
}

#[test]
fn plaintext_and_tls_mixups_fail_clearly_and_the_server_goes_on() -> Result<()> {
    let _watchdog = Watchdog::new("plaintext/tls mix-ups", WAIT * 2);
    let pki = TestPki::generate()?;
    let mut options = pki.server_args("server");
    options.extend(args(&[("handshake-timeout-ms", "2000".to_owned())]));
    let mut tls_server = Server::start("tls:127.0.0.1:0", &options)?;
    let plain_port = tls_server.address.replacen("tls:", "tcp:", 1);
    // Plaintext client on the TLS port, both APIs.
    for options in [Vec::new(), blocking(Vec::new())] {
        let (kind, error) = refusal(&probe(&plain_port, &options)?)?;
        assert!(
            error.contains("the peer speaks TLS"),
            "{kind}: `{error}` should say the port speaks TLS"
        );
        let rejected = tls_server.expect_rejected()?;
        assert!(rejected.contains("does not speak TLS"), "{rejected}");
    }
    assert_eq!(probe(&tls_server.address, &trusting(&pki))?, "ok");

    // TLS client on a plaintext port.
    let mut plain = Server::start("tcp:127.0.0.1:0", &[])?;
    let tls_address = plain.address.replacen("tcp:", "tls:", 1);
    for options in [trusting(&pki), blocking(trusting(&pki))] {
        let (kind, error) = refusal(&probe(&tls_address, &options)?)?;
        assert!(
            error.contains("does not speak TLS"),
            "{kind}: `{error}` should say the peer does not speak TLS"
        );
        let rejected = plain.expect_rejected()?;
        assert!(rejected.contains("the peer speaks TLS"), "{rejected}");
    }
    assert_eq!(probe(&plain.address, &[])?, "ok");
    plain.stop()?;
    tls_server.stop()
}

/// Tokens over `tcp:`, `tls:` and `wss://`, with both APIs: the right one gets in, a wrong
/// or missing one gets close code 11 with its reason, and no token is ever printed.
#[test]
fn tokens_let_in_who_has_one_and_never_show() -> Result<()> {
    let _watchdog = Watchdog::new("tokens", WAIT * 2);
    let pki = TestPki::generate()?;
    let tokens = pki.dir().join("tokens");
    std::fs::write(&tokens, "first-secret-4f1d\nsecond-secret-9a2b\n")?;
    let right = pki.dir().join("right");
    std::fs::write(&right, "second-secret-9a2b\n")?;
    let wrong = pki.dir().join("wrong");
    std::fs::write(&wrong, "second-secret-9a2c\n")?;
    let path = |p: &std::path::Path| p.display().to_string();

    for address in [
        "tcp:127.0.0.1:0",
        "tls:127.0.0.1:0",
        "wss://127.0.0.1:0/ipc",
    ] {
        let mut options = args(&[("tokens-file", path(&tokens))]);
        let mut client = Vec::new();
        if !address.starts_with("tcp") {
            options.extend(pki.server_args("server"));
            client = trusting(&pki);
        }
        let mut server = Server::start(address, &options)?;
        let with = |file: &std::path::Path| {
            let mut options = client.clone();
            options.extend(args(&[("token-file", path(file))]));
            options
        };
        assert_eq!(probe(&server.address, &with(&right))?, "ok");
        server.expect_connected()?;
        assert_eq!(probe(&server.address, &blocking(with(&right)))?, "ok");
        server.expect_connected()?;
        for (options, reason) in [
            (with(&wrong), "the token presented is not accepted"),
            (
                blocking(with(&wrong)),
                "the token presented is not accepted",
            ),
            (client.clone(), "no token presented"),
            (blocking(client.clone()), "no token presented"),
        ] {
            let line = probe(&server.address, &options)?;
            let (kind, error) = refusal(&line)?;
            assert_eq!(kind, "PeerClosed", "{error}");
            assert!(
                error.contains("code 11 (unauthorized)") && error.contains(reason),
                "{error}"
            );
            assert!(!line.contains("secret"), "a token leaked: {line}");
            let rejected = server.expect_rejected()?;
            assert!(rejected.contains(reason), "{rejected}");
            assert!(!rejected.contains("secret"), "a token leaked: {rejected}");
        }
        server.stop()?;
    }
    Ok(())
}

#[test]
fn tls_port_survives_garbage_truncated_records_and_slowloris() -> Result<()> {
    let _watchdog = Watchdog::new("tls garbage", WAIT * 2);
    let pki = TestPki::generate()?;
    let mut options = pki.server_args("server");
    options.extend(args(&[("handshake-timeout-ms", "1000".to_owned())]));
    let mut server = Server::start("tls:127.0.0.1:0", &options)?;
    let host_port = server
        .address
        .strip_prefix("tls:")
        .context("tls address")?
        .to_owned();
    let rss_before = peak_rss_kib(server.peer.pid());

    let until_closed = |mut stream: TcpStream| -> Result<()> {
        stream.set_read_timeout(Some(WAIT))?;
        let mut sink = [0u8; 4096];
        loop {
            match stream.read(&mut sink) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(err) => bail!("the server did not close the connection: {err}"),
            }
        }
    };

    // Garbage instead of a ClientHello.
    let mut garbage = TcpStream::connect(&host_port)?;
    garbage.write_all(&[0x47; 4096])?;
    until_closed(garbage)?;
    server.expect_rejected()?;

    // A handshake record that claims 16 KiB and stops after a few bytes.
    let mut truncated = TcpStream::connect(&host_port)?;
    truncated.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00])?;
    until_closed(truncated)?;
    let rejected = server.expect_rejected()?;
    assert!(rejected.contains("error=timed out"), "{rejected}");

    // A record over the largest TLS record size: refused from its header.
    let mut oversized = TcpStream::connect(&host_port)?;
    oversized.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01])?;
    until_closed(oversized)?;
    server.expect_rejected()?;

    // Many slowloris connections at once, each trickling a ClientHello's first bytes.
    let mut slow = Vec::new();
    for _ in 0..32 {
        let mut stream = TcpStream::connect(&host_port)?;
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])?;
        slow.push(stream);
    }
    for stream in &mut slow {
        // One more byte each: still far from a whole record.
        let _ = stream.write_all(&[0x01]);
    }
    for stream in slow {
        until_closed(stream)?;
    }
    for _ in 0..32 {
        let rejected = server.expect_rejected()?;
        assert!(rejected.contains("error=timed out"), "{rejected}");
    }
    if let (Some(before), Some(after)) = (rss_before, peak_rss_kib(server.peer.pid())) {
        assert!(
            after < before + 64 * 1024,
            "peak memory grew from {before} KiB to {after} KiB"
        );
    }

    // Still serving.
    assert_eq!(probe(&server.address, &trusting(&pki))?, "ok");
    server.expect_connected()?;
    server.stop()
}

/// The peak resident set of a process, from /proc (Linux only).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn public_binds_need_tls_tokens_or_an_explicit_opt_in() -> Result<()> {
    let _watchdog = Watchdog::new("public binds", WAIT);
    let mut peer = Peer::spawn_role("server", "socket-server", ["--address", "tcp:0.0.0.0:0"])?;
    let line = peer.expect_line(WAIT)?;
    assert!(
        line.contains("refusing to listen on non-loopback tcp:0.0.0.0:0 without tls or tokens"),
        "{line}"
    );
    let _ = peer.wait(WAIT)?;
    // The opt-in itself is tested without binding a public address (ipc-socket's unit
    // tests of `check_bind`): tests use loopback only.
    Ok(())
}

#[test]
fn chat_over_tls_with_a_killed_client() -> Result<()> {
    let _watchdog = Watchdog::new("chat over tls", WAIT * 3);
    let outcome = ipc_tests::flows::chat(
        ipc_tests::flows::ChatTransport::Tls,
        4,
        500,
        &mut ipc_tests::flows::no_progress,
    )?;
    assert_eq!(outcome.messages, 4 * 4 * 500);
    Ok(())
}

#[test]
fn a_server_with_tokens_checks_the_token_before_the_message_type() -> Result<()> {
    use ipc_socket::{Connection, ConnectionConfig, Listener, Token};
    let _watchdog = Watchdog::new("token before type", WAIT);
    let token = || Token::new("the-right-token").expect("a valid token");
    let server = ConnectionConfig::new::<String>().with_accepted_tokens(vec![token()]);
    let listener = Listener::<String>::bind(&"tcp:127.0.0.1:0".parse()?, server)?;
    let address = listener.address().clone();
    let accepting = std::thread::spawn(move || {
        (0..2)
            .map(|_| listener.accept().map(|_| ()).unwrap_err().to_string())
            .collect::<Vec<_>>()
    });
    // No token and another message type: the refusal says only "unauthorized".
    let err = Connection::<u32>::connect(&address, ConnectionConfig::new::<u32>()).unwrap_err();
    assert!(
        err.to_string()
            .contains("code 11 (unauthorized): no token presented"),
        "{err}"
    );
    assert!(!err.to_string().contains("String"), "{err}");
    // The right token and another message type: now the mismatch is told.
    let err =
        Connection::<u32>::connect(&address, ConnectionConfig::new::<u32>().with_token(token()))
            .unwrap_err();
    assert!(err.to_string().contains("code 3 (type mismatch)"), "{err}");
    let server_errors = accepting.join().expect("accept thread");
    assert!(
        server_errors[0].contains("no token presented"),
        "{server_errors:?}"
    );
    assert!(
        !server_errors.concat().contains("the-right-token"),
        "{server_errors:?}"
    );
    Ok(())
}

/// A blocking `tls:` send that times out while the peer does not read leaves the rest of
/// its bytes buffered, and nothing is written twice: once the peer reads, every message
/// arrives once, in order, intact (the TLS layer had taken bytes whose flush timed out,
/// and they used to be written again).
#[test]
fn a_timed_out_blocking_tls_send_writes_nothing_twice() -> Result<()> {
    use ipc_core::{ErrorKind, Receiver, Sender};
    use ipc_socket::{
        Address, Connection, ConnectionConfig, Listener, TlsClientConfig, TlsServerConfig,
    };

    type Message = (u64, serde_bytes::ByteBuf);
    let _watchdog = Watchdog::new("timed-out tls send", WAIT);
    let pki = TestPki::generate()?;
    let server_config = ConnectionConfig::new::<Message>().with_tls_server(
        TlsServerConfig::from_pem(&pki.read("server.pem")?, &pki.read("server.key")?)?,
    );
    let listener =
        Listener::<Message>::bind(&"tls:127.0.0.1:0".parse::<Address>()?, server_config)?;
    let address = listener.address().clone();
    let (go, wait_for_go) = std::sync::mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || -> Result<u64> {
        let mut conn = listener.accept()?;
        // Read nothing until the sender has timed out at least once.
        let total = wait_for_go.recv()?;
        for seq in 0..total {
            let (got, payload) = conn.recv()?;
            anyhow::ensure!(got == seq, "message {seq} arrived as {got}");
            anyhow::ensure!(
                payload.len() == 65_536 && payload.iter().all(|b| *b == seq as u8),
                "message {seq} is damaged"
            );
        }
        Ok(total)
    });
    let client_config = ConnectionConfig::new::<Message>()
        .with_tls_client(TlsClientConfig::with_ca_pem(&pki.read("ca.pem")?)?);
    let mut conn = Connection::<Message>::connect(&address, client_config)?;
    let mut seq = 0u64;
    let mut timeouts = 0;
    // (A send that times out may first wait for the kernel to take a trickle of bytes for
    // seconds: a write timeout bounds the time without progress, as for plain TCP.)
    while timeouts < 1 {
        anyhow::ensure!(seq < 10_000, "the socket never filled up");
        let sent = conn.send_timeout(
            &(seq, serde_bytes::ByteBuf::from(vec![seq as u8; 65_536])),
            Duration::from_millis(2),
        );
        match sent {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Timeout => timeouts += 1,
            Err(err) => bail!("send {seq}: {err}"),
        }
        // A message whose send timed out stays queued: it is sent too.
        seq += 1;
    }
    go.send(seq + 2)?;
    for _ in 0..2 {
        conn.send(&(seq, serde_bytes::ByteBuf::from(vec![seq as u8; 65_536])))?;
        seq += 1;
    }
    conn.flush()?;
    let received = reader.join().expect("reader thread")?;
    assert_eq!(received, seq);
    Ok(())
}
