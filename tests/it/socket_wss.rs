//! `wss://` addresses across real processes: a `socket-server` peer (the tokio server) and a
//! `socket-blocking-server` peer (the blocking `Listener`), `socket-probe` clients of both
//! APIs, and raw TLS + WebSocket clients of the test's own, with certificates made at run
//! time (`ipc_tests::tls`). TLS as for `tls:` (server authentication, mutual TLS with the
//! client's identity seen by the server, tokens), then the WebSocket of `ws://` (Origin
//! rules, files over HTTPS). Every refusal names its reason, and the server keeps serving
//! the clients that belong.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_core::{Receiver, Sender};
use ipc_socket::{Address, Connection, TlsClientConfig};
use ipc_tests::roles::{ChatLine, chat_config};
use ipc_tests::tls::TestPki;
use ipc_tests::{Peer, Watchdog};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::ClientRequestBuilder;

use super::socket_tls::{Server, WAIT, args, blocking, probe, refusal, trusting};

const WSS: &str = "wss://127.0.0.1:0/ipc";

/// A `socket-blocking-server` peer: a blocking `Listener` that runs `accepts` accepts.
struct BlockingServer {
    peer: Peer,
    address: String,
}

impl BlockingServer {
    fn start(address: &str, accepts: u32, options: &[String]) -> Result<BlockingServer> {
        let mut all = args(&[
            ("address", address.to_owned()),
            ("accepts", accepts.to_string()),
        ]);
        all.extend_from_slice(options);
        let mut peer = Peer::spawn_role("blocking server", "socket-blocking-server", &all)?;
        let address = peer.expect_prefixed("ready address=", WAIT)?;
        Ok(BlockingServer { peer, address })
    }

    /// The outcome of the next accept: `accepted certificate=..` (then its `closed`), or
    /// `rejected error=..`.
    fn next_accept(&mut self) -> Result<String> {
        let line = self.peer.expect_line(WAIT)?;
        if line.starts_with("accepted") {
            let closed = self.peer.expect_line(WAIT)?;
            if closed != "closed" {
                bail!("after `{line}`: `{closed}`, expected `closed`");
            }
        } else if !line.starts_with("rejected") {
            bail!("expected an accept's outcome, got `{line}`");
        }
        Ok(line)
    }

    fn finish(mut self) -> Result<()> {
        self.peer.expect_prefixed("ok", WAIT)?;
        self.peer.wait_success(WAIT)
    }
}

fn with_client_certificate(pki: &TestPki, name: &str) -> Vec<String> {
    let mut options = trusting(pki);
    options.extend(args(&[
        ("tls-client-cert", pki.arg(&format!("{name}.pem"))),
        ("tls-client-key", pki.arg(&format!("{name}.key"))),
    ]));
    options
}

fn port_of(address: &str) -> Result<String> {
    let host_port = address
        .strip_prefix("wss://")
        .or_else(|| address.strip_prefix("ws://"))
        .context("a websocket address")?;
    let host_port = host_port.split('/').next().unwrap_or_default();
    Ok(host_port.rsplit(':').next().unwrap_or_default().to_owned())
}

#[test]
fn server_authenticated_wss_round_trips_on_both_apis_and_both_servers() -> Result<()> {
    let _watchdog = Watchdog::new("server-auth wss", WAIT * 2);
    let pki = TestPki::generate()?;
    let mut server = Server::start(WSS, &pki.server_args("server"))?;
    assert!(
        server.address.starts_with("wss://127.0.0.1:") && server.address.ends_with("/ipc"),
        "{}",
        server.address
    );
    assert_eq!(probe(&server.address, &trusting(&pki))?, "ok");
    let connected = server.expect_connected()?;
    assert!(connected.contains("peer=wss 127.0.0.1:"), "{connected}");
    assert_eq!(probe(&server.address, &blocking(trusting(&pki)))?, "ok");
    server.expect_connected()?;
    // The server name may be a DNS name too: the certificate has `localhost`.
    let by_name = format!("wss://localhost:{}/ipc", port_of(&server.address)?);
    assert_eq!(probe(&by_name, &trusting(&pki))?, "ok");
    assert_eq!(probe(&by_name, &blocking(trusting(&pki)))?, "ok");
    server.stop()?;

    // The blocking Listener serves wss:// too; without mutual TLS it sees no certificate.
    let mut listener = BlockingServer::start(WSS, 2, &pki.server_args("server"))?;
    assert!(listener.address.starts_with("wss://127.0.0.1:"));
    assert_eq!(probe(&listener.address, &blocking(trusting(&pki)))?, "ok");
    assert_eq!(listener.next_accept()?, "accepted certificate=none");
    let by_name = format!("wss://localhost:{}/ipc", port_of(&listener.address)?);
    assert_eq!(probe(&by_name, &blocking(trusting(&pki)))?, "ok");
    assert_eq!(listener.next_accept()?, "accepted certificate=none");
    listener.finish()
}

#[test]
fn mutual_tls_over_wss_shows_the_client_identity_and_refuses_the_others() -> Result<()> {
    let _watchdog = Watchdog::new("mutual tls over wss", WAIT * 3);
    let pki = TestPki::generate()?;
    let mut options = pki.server_args("server");
    options.extend(args(&[("tls-client-ca", pki.arg("ca.pem"))]));
    let mut server = Server::start(WSS, &options)?;
    let address = server.address.clone();
    let alice = with_client_certificate(&pki, "client");

    assert_eq!(probe(&address, &alice)?, "ok");
    let connected = server.expect_connected()?;
    assert!(
        connected.contains("certificate `CN=alice`") && connected.contains("DNS:alice.example"),
        "{connected}"
    );
    assert_eq!(probe(&address, &blocking(alice.clone()))?, "ok");
    let connected = server.expect_connected()?;
    assert!(connected.contains("certificate `CN=alice`"), "{connected}");

    // No certificate at all, on both APIs.
    for options in [trusting(&pki), blocking(trusting(&pki))] {
        let (kind, error) = refusal(&probe(&address, &options)?)?;
        assert_eq!(kind, "PermissionDenied", "{error}");
        assert!(error.contains("CertificateRequired"), "{error}");
        let rejected = server.expect_rejected()?;
        assert!(
            rejected.contains("error=permission denied")
                && rejected.contains("peer sent no certificates"),
            "{rejected}"
        );
    }
    // Signed by a CA the server does not trust.
    let (kind, error) = refusal(&probe(
        &address,
        &with_client_certificate(&pki, "other-client"),
    )?)?;
    assert_eq!(kind, "PermissionDenied", "{error}");
    let rejected = server.expect_rejected()?;
    assert!(
        rejected.contains("UnknownIssuer") || rejected.contains("unknown issuer"),
        "{rejected}"
    );
    // Still serving the client that belongs.
    assert_eq!(probe(&address, &alice)?, "ok");
    server.expect_connected()?;
    server.stop()?;

    // The blocking Listener shows the same identity, on tls: and on wss://.
    for listen in ["tls:127.0.0.1:0", WSS] {
        let mut listener = BlockingServer::start(listen, 3, &options)?;
        assert_eq!(probe(&listener.address, &blocking(alice.clone()))?, "ok");
        assert_eq!(
            listener.next_accept()?,
            "accepted certificate=certificate `CN=alice` (DNS:alice.example)",
            "{listen}"
        );
        let (kind, error) = refusal(&probe(&listener.address, &blocking(trusting(&pki)))?)?;
        assert_eq!(kind, "PermissionDenied", "{listen}: {error}");
        let rejected = listener.next_accept()?;
        assert!(
            rejected.starts_with("rejected error=permission denied")
                && rejected.contains("peer sent no certificates"),
            "{listen}: {rejected}"
        );
        assert_eq!(probe(&listener.address, &blocking(alice.clone()))?, "ok");
        assert!(listener.next_accept()?.contains("CN=alice"), "{listen}");
        listener.finish()?;
    }
    Ok(())
}

/// A blocking connection of the test's own to `address`, kept open across a test's
/// refusals: a message round trip shows that the server still serves it.
fn open_client(address: &str, pki: &TestPki) -> Result<Connection<ChatLine>> {
    let mut config = chat_config();
    if address.starts_with("wss://") {
        config = config.with_tls_client(TlsClientConfig::with_ca_pem(&pki.read("ca.pem")?)?);
    }
    Ok(Connection::connect(&address.parse::<Address>()?, config)?)
}

fn round_trip(conn: &mut Connection<ChatLine>, seq: u64) -> Result<()> {
    let line = ChatLine {
        from: "steady".into(),
        seq,
        text: format!("still here {seq}"),
    };
    conn.send(&line)?;
    conn.flush()?;
    assert_eq!(conn.recv()?, line);
    Ok(())
}

#[test]
fn plain_and_secure_websocket_mixups_fail_clearly_and_the_server_goes_on() -> Result<()> {
    let _watchdog = Watchdog::new("ws/wss mix-ups", WAIT * 2);
    let pki = TestPki::generate()?;
    // A long handshake timeout: a refusal that waited for it would show as a timeout.
    let patience = args(&[("handshake-timeout-ms", "20000".to_owned())]);
    let mut options = pki.server_args("server");
    options.extend(patience.clone());
    let mut wss_server = Server::start(WSS, &options)?;
    let mut steady = open_client(&wss_server.address, &pki)?;
    wss_server.expect_connected()?;

    // A plain ws:// client on the wss port, both APIs.
    let plain = wss_server.address.replacen("wss://", "ws://", 1);
    for options in [patience.clone(), blocking(patience.clone())] {
        let (kind, error) = refusal(&probe(&plain, &options)?)?;
        println!("ws:// client on a wss port: {kind}: {error}");
        assert_ne!(kind, "Timeout", "{error}");
        assert!(
            error.contains("the server speaks TLS"),
            "{kind}: `{error}` should say the server speaks TLS"
        );
        let rejected = wss_server.expect_rejected()?;
        assert!(rejected.contains("does not speak TLS"), "{rejected}");
        round_trip(&mut steady, 1)?;
    }
    assert_eq!(probe(&wss_server.address, &trusting(&pki))?, "ok");
    wss_server.expect_connected()?;

    // A wss:// client on a plain ws port.
    let mut ws_server = Server::start("ws://127.0.0.1:0/ipc", &patience)?;
    let mut steady_plain = open_client(&ws_server.address, &pki)?;
    ws_server.expect_connected()?;
    let secure = ws_server.address.replacen("ws://", "wss://", 1);
    let mut client = trusting(&pki);
    client.extend(patience.clone());
    for options in [client.clone(), blocking(client.clone())] {
        let (kind, error) = refusal(&probe(&secure, &options)?)?;
        println!("wss:// client on a ws port: {kind}: {error}");
        assert_ne!(kind, "Timeout", "{error}");
        assert!(
            error.contains("does not speak TLS"),
            "{kind}: `{error}` should say the peer does not speak TLS"
        );
        let rejected = ws_server.expect_rejected()?;
        assert!(rejected.contains("the peer speaks TLS"), "{rejected}");
        round_trip(&mut steady_plain, 2)?;
    }
    assert_eq!(probe(&ws_server.address, &[])?, "ok");
    ws_server.expect_connected()?;

    round_trip(&mut steady, 3)?;
    steady.close()?;
    steady_plain.close()?;
    ws_server.stop()?;
    wss_server.stop()
}

/// A raw TLS stream of the test's own to `host_port`, trusting the test CA.
fn raw_tls(
    pki: &TestPki,
    host_port: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pki.read("ca.pem")?) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(host_port)?;
    tcp.set_read_timeout(Some(WAIT))?;
    let name = ServerName::try_from("127.0.0.1".to_owned())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends `request` over a raw TLS connection to `127.0.0.1:port` and returns all the server
/// answered before it closed.
fn raw_https(pki: &TestPki, port: &str, request: &[u8]) -> Result<String> {
    let mut stream = raw_tls(pki, &format!("127.0.0.1:{port}"))?;
    stream.write_all(request)?;
    stream.flush()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => bail!("reading the server's answer: {err}"),
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// A raw WebSocket upgrade over TLS with `origin`: `Ok(())` if upgraded, else the HTTP
/// status line the server answered with.
fn raw_wss_upgrade(pki: &TestPki, wss: &str, origin: &str) -> Result<Result<(), String>> {
    let host_port = format!("127.0.0.1:{}", port_of(wss)?);
    let stream = raw_tls(pki, &host_port)?;
    let request = ClientRequestBuilder::new(wss.parse()?).with_header("Origin", origin);
    match tungstenite::client::client(request, stream) {
        Ok((mut socket, _)) => {
            socket.close(None)?;
            // Read until the server's answer to the close (or the end).
            while socket.read().is_ok() {}
            Ok(Ok(()))
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Ok(Err(response.status().to_string()))
        }
        Err(err) => bail!("websocket upgrade with origin {origin}: {err}"),
    }
}

#[test]
fn origins_and_files_over_wss_follow_the_https_page() -> Result<()> {
    let _watchdog = Watchdog::new("origins and files over wss", WAIT * 2);
    let pki = TestPki::generate()?;
    let mut options = pki.server_args("server");
    options.extend(args(&[("http-file", "/hello.txt".to_owned())]));
    let mut server = Server::start(WSS, &options)?;
    let port = port_of(&server.address)?;

    // The page's own origin is https://HOST:PORT.
    assert_eq!(
        raw_wss_upgrade(&pki, &server.address, &format!("https://127.0.0.1:{port}"))?,
        Ok(())
    );
    // The upgraded raw socket closed without a hello: the server says so.
    server.expect_rejected()?;
    for origin in [
        "https://evil.example".to_owned(),
        // No plain page shares the TLS port: http:// is not the page's own origin here.
        format!("http://127.0.0.1:{port}"),
    ] {
        assert_eq!(
            raw_wss_upgrade(&pki, &server.address, &origin)?,
            Err("403 Forbidden".to_owned()),
            "{origin}"
        );
        let rejected = server.expect_rejected()?;
        assert!(
            rejected.contains(&format!("websocket from origin {origin} is not allowed")),
            "{rejected}"
        );
    }

    // A file is served over HTTPS.
    let reply = raw_https(
        &pki,
        &port,
        format!("GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )?;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nserved at /hello.txt\n"), "{reply}");
    // Garbage inside TLS where the request belongs, and a plain request on the endpoint.
    for (request, status, reason) in [
        (
            b"\x00\x01\x02 not http\r\n\r\n".to_vec(),
            "400 Bad Request",
            "malformed http request",
        ),
        (
            format!("GET /ipc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes(),
            "426 Upgrade Required",
            "plain http request refused",
        ),
    ] {
        let reply = raw_https(&pki, &port, &request)?;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{reply}"
        );
        let rejected = server.expect_rejected()?;
        assert!(rejected.contains(reason), "{rejected}");
    }

    // And the server still takes clients.
    assert_eq!(probe(&server.address, &trusting(&pki))?, "ok");
    server.expect_connected()?;
    server.stop()
}

/// Trickles an HTTP request into `stream`, a byte per read timeout of the socket, until the
/// server closes the connection; fails if it is still open after `max_bytes`.
fn trickle_until_closed(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    max_bytes: usize,
) -> Result<usize> {
    let request = b"GET /ipc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n";
    let mut sink = [0u8; 1024];
    for (sent, byte) in request.iter().cycle().take(max_bytes).enumerate() {
        if stream
            .write_all(&[*byte])
            .and_then(|()| stream.flush())
            .is_err()
        {
            return Ok(sent);
        }
        match stream.read(&mut sink) {
            Ok(0) => return Ok(sent),
            // The server's refusal (an HTTP error or an alert) and then the end.
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(sent),
        }
    }
    bail!("the server still reads a request trickled for {max_bytes} bytes")
}

#[test]
fn a_wss_handshake_has_one_deadline_for_tls_http_and_hello() -> Result<()> {
    let _watchdog = Watchdog::new("wss handshake deadline", WAIT * 2);
    let pki = TestPki::generate()?;
    let mut options = pki.server_args("server");
    options.extend(args(&[("handshake-timeout-ms", "1000".to_owned())]));
    let mut server = Server::start(WSS, &options)?;
    let mut listener = BlockingServer::start(WSS, 3, &options)?;
    for address in [server.address.clone(), listener.address.clone()] {
        let host_port = format!("127.0.0.1:{}", port_of(&address)?);
        // TLS done, then an HTTP request a byte at a time: each read is quick, the whole
        // request never comes; the deadline counted from the accept ends it.
        let mut stream = raw_tls(&pki, &host_port)?;
        stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(100)))?;
        let sent = trickle_until_closed(&mut stream, 600)?;
        println!("{address}: closed after {sent} trickled bytes");
        // TLS and the upgrade done, then no hello: the same deadline ends it.
        let silent = {
            let stream = raw_tls(&pki, &host_port)?;
            let request = ClientRequestBuilder::new(address.parse()?);
            match tungstenite::client::client(request, stream) {
                Ok((socket, _)) => socket,
                Err(err) => bail!("websocket upgrade: {err}"),
            }
        };
        if address == server.address {
            for what in ["trickled request", "silent websocket"] {
                let rejected = server.expect_rejected()?;
                assert!(rejected.contains("error=timed out"), "{what}: {rejected}");
            }
        } else {
            let rejected = listener.next_accept()?;
            assert!(
                rejected.starts_with("rejected error=timed out")
                    && rejected.contains("no complete http request"),
                "{rejected}"
            );
            let rejected = listener.next_accept()?;
            assert!(
                rejected.starts_with("rejected error=timed out") && rejected.contains("no hello"),
                "{rejected}"
            );
        }
        drop(silent);
        // Still serving.
        assert_eq!(probe(&address, &blocking(trusting(&pki)))?, "ok");
    }
    server.expect_connected()?;
    assert_eq!(listener.next_accept()?, "accepted certificate=none");
    listener.finish()?;
    server.stop()
}
