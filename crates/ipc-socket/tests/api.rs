//! In-process tests of the API over every transport. Cross-process behaviour (crashes,
//! many client processes, the Python client) is tested in the `ipc-tests` package.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[cfg(feature = "tokio")]
use ipc_core::{AsyncReceiver, CloseCode};
use ipc_core::{ErrorKind, FrameKind, Hello, Limits, MessageType, Receiver, Sender};
use ipc_socket::{Address, Connection, ConnectionConfig, Heartbeat, Listener};
#[cfg(feature = "tokio")]
use ipc_socket::{
    AsyncConnection, Backoff, Client, ClientConfig, Event, Incoming, Policy, Server, ServerConfig,
};

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ipc-socket-api-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique_local() -> Address {
    static N: AtomicU32 = AtomicU32::new(0);
    Address::local(format!(
        "ipc-socket-api-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn config() -> ConnectionConfig {
    ConnectionConfig::new::<String>().with_message_type(MessageType::named("test.Text/1"))
}

fn echo_over(address: Address) {
    echo_over_with(address, config(), config());
}

fn echo_over_with(address: Address, server: ConnectionConfig, client: ConnectionConfig) {
    let listener = Listener::<String>::bind(&address, server).unwrap();
    let address = listener.address().clone();
    let server = std::thread::spawn(move || {
        let mut conn = listener.accept().unwrap();
        loop {
            match conn.recv() {
                Ok(text) => conn.send(&text.to_uppercase()).unwrap(),
                Err(err) => {
                    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
                    return;
                }
            }
        }
    });
    let mut client = Connection::<String>::connect(&address, client).unwrap();
    for i in 0..100 {
        client.send(&format!("message {i}")).unwrap();
    }
    client.flush().unwrap();
    for i in 0..100 {
        assert_eq!(client.recv().unwrap(), format!("MESSAGE {i}"));
    }
    assert!(client.try_recv().unwrap().is_none());
    // A borrowed receive: the &str points into the connection's buffer.
    client.send(&"borrowed".to_owned()).unwrap();
    assert_eq!(client.recv_ref::<&str>().unwrap(), "BORROWED");
    let err = client.recv_timeout(Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    client.close().unwrap();
    server.join().unwrap();
}

#[test]
fn blocking_echo_over_tcp_local_name_and_socket_file() {
    echo_over("tcp:127.0.0.1:0".parse().unwrap());
    echo_over(unique_local());
    let dir = Dir::new();
    echo_over(Address::path(dir.0.join("echo.sock")));
}

#[test]
fn blocking_echo_over_websocket() {
    echo_over("ws://127.0.0.1:0/ipc".parse().unwrap());
}

#[cfg(feature = "tls")]
#[test]
fn blocking_echo_over_tls() {
    use ipc_socket::{TlsClientConfig, TlsServerConfig};
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let tls = TlsServerConfig::from_pem(
        certified.cert.pem().as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let pinned = TlsClientConfig::danger_pin_certificate(certified.cert.der().to_vec());
    echo_over_with(
        "tls:127.0.0.1:0".parse().unwrap(),
        config().with_tls_server(tls),
        config().with_tls_client(pinned),
    );
}

#[test]
fn socket_files_are_owner_only_and_live_servers_are_not_displaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new();
    let address = Address::path(dir.0.join("s.sock"));
    let first = Listener::<String>::bind(&address, config()).unwrap();
    let mode = std::fs::metadata(address.as_path().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let err = Listener::<String>::bind(&address, config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("already listening"), "{err}");
    drop(first);
}

#[test]
fn a_stale_socket_file_is_reclaimed() {
    let dir = Dir::new();
    let path = dir.0.join("stale.sock");
    // A socket file with nobody listening: what a SIGKILLed server leaves behind.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let address = Address::path(&path);
    let err = Connection::<String>::connect(&address, config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let listener = Listener::<String>::bind(&address, config()).unwrap();
    drop(listener);
    // A regular file is never removed.
    std::fs::write(&path, b"not a socket").unwrap();
    let err = Listener::<String>::bind(&address, config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("is not a socket"), "{err}");
}

#[test]
fn another_message_type_fails_the_handshake_on_both_sides() {
    let listener = Listener::<String>::bind(&"tcp:127.0.0.1:0".parse().unwrap(), config()).unwrap();
    let address = listener.address().clone();
    let server = std::thread::spawn(move || listener.accept().unwrap_err());
    let other = ConnectionConfig::new::<String>().with_message_type(MessageType::named("x/2"));
    let err = Connection::<String>::connect(&address, other).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TypeMismatch | ErrorKind::PeerClosed),
        "{err}"
    );
    let server_err = server.join().unwrap();
    assert!(
        matches!(
            server_err.kind(),
            ErrorKind::TypeMismatch | ErrorKind::PeerClosed
        ),
        "{server_err}"
    );
}

#[test]
fn a_silent_peer_is_declared_dead_by_the_heartbeat() {
    let quick = config().with_heartbeat(Heartbeat::new(
        Duration::from_millis(20),
        Duration::from_millis(150),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::tcp(listener.local_addr().unwrap().to_string());
    // A peer that completes the handshake and then never says anything again.
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut hello = Vec::new();
        Hello::new(MessageType::named("test.Text/1"), &Limits::default())
            .encode_frame(&mut hello)
            .unwrap();
        stream.write_all(&hello).unwrap();
        let mut sink = [0u8; 1024];
        // Read (and ignore pings) until the client gives up and closes.
        while let Ok(n) = stream.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    });
    let mut client = Connection::<String>::connect(&address, quick).unwrap();
    let err = client.recv().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerDied);
    assert!(
        err.to_string().contains("heartbeat timeout 150 ms"),
        "{err}"
    );
    drop(client);
    peer.join().unwrap();
}

#[cfg(feature = "tokio")]
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[cfg(feature = "tokio")]
async fn next_message(server: &mut Server<String>) -> (ipc_socket::ConnId, String) {
    loop {
        match server.next_event().await.unwrap() {
            Event::Message { conn, message } => return (conn, message),
            Event::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[cfg(feature = "tokio")]
#[test]
fn async_duplex_over_every_transport() {
    runtime().block_on(async {
        let dir = Dir::new();
        for address in [
            "tcp:127.0.0.1:0".parse().unwrap(),
            unique_local(),
            Address::path(dir.0.join("a.sock")),
        ] {
            let mut server = Server::<String>::bind(ServerConfig::new(address, config()))
                .await
                .unwrap();
            let conn = AsyncConnection::<String>::connect(server.address(), config())
                .await
                .unwrap();
            let (mut send, mut recv) = conn.into_split();
            for i in 0..50 {
                send.send(&format!("m{i}")).await.unwrap();
            }
            send.flush().await.unwrap();
            let handle = server.handle();
            for i in 0..50 {
                let (conn, message) = next_message(&mut server).await;
                assert_eq!(message, format!("m{i}"));
                handle.send(conn, &format!("r{i}")).await.unwrap();
            }
            for i in 0..49 {
                assert_eq!(
                    AsyncReceiver::recv(&mut recv).await.unwrap(),
                    format!("r{i}")
                );
            }
            assert_eq!(recv.recv_ref::<&str>().await.unwrap(), "r49");
            send.close(CloseCode::NORMAL, "").await.unwrap();
            match server.next_event().await.unwrap() {
                Event::Disconnected { error, .. } => assert!(error.is_none(), "{error:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
}

#[cfg(feature = "tokio")]
#[test]
fn async_send_clones_keep_their_frames_whole_and_in_order() {
    runtime().block_on(async {
        let dir = Dir::new();
        let listener =
            Listener::<String>::bind(&Address::path(dir.0.join("c.sock")), config()).unwrap();
        let address = listener.address().clone();
        let server = std::thread::spawn(move || {
            let mut conn = listener.accept().unwrap();
            let mut seen = Vec::new();
            while let Ok(text) = conn.recv() {
                seen.push(text);
            }
            seen
        });
        let conn = AsyncConnection::<String>::connect(&address, config())
            .await
            .unwrap();
        let (mut first, _recv) = conn.into_split();
        let mut second = first.clone();
        // Frames larger than the flush threshold, so that batches go out mid-way.
        let long = "x".repeat(40_000);
        for i in 0..5 {
            first.send(&format!("a{i}{long}")).await.unwrap();
            second.send(&format!("b{i}")).await.unwrap();
        }
        // A dropped clone's queued frames go out with the next flush of another half.
        let mut third = first.clone();
        third.send(&"c0".to_owned()).await.unwrap();
        drop(third);
        second.flush().await.unwrap();
        drop(second);
        first.close(CloseCode::NORMAL, "").await.unwrap();
        let seen = server.join().unwrap();
        let short: Vec<&str> = seen.iter().map(|m| &m[..2]).collect();
        assert_eq!(seen.len(), 11, "{short:?}");
        let of = |prefix: char| -> Vec<&str> {
            short
                .iter()
                .copied()
                .filter(|m| m.starts_with(prefix))
                .collect()
        };
        assert_eq!(of('a'), ["a0", "a1", "a2", "a3", "a4"]);
        assert_eq!(of('b'), ["b0", "b1", "b2", "b3", "b4"]);
        assert_eq!(of('c'), ["c0"]);
        assert!(
            seen.iter()
                .filter(|m| m.starts_with('a'))
                .all(|m| m.ends_with(&long))
        );
    });
}

#[cfg(feature = "tokio")]
#[test]
fn many_requests_in_flight_and_a_deadline() {
    runtime().block_on(async {
        let mut server = Server::<String>::bind(ServerConfig::new(
            "tcp:127.0.0.1:0".parse().unwrap(),
            config(),
        ))
        .await
        .unwrap();
        let address = server.address().clone();
        let handle = server.handle();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(event) = server.next_event().await {
                if let Event::Request { conn, id, message } = event {
                    if message == "ignore me" {
                        continue;
                    }
                    held.push((conn, id, message));
                    if held.len() == 10 {
                        for (conn, id, message) in held.drain(..).rev() {
                            handle
                                .respond(conn, id, &format!("re: {message}"))
                                .await
                                .unwrap();
                        }
                    }
                }
            }
        });
        let client = Client::<String>::connect(ClientConfig::new(address, config()))
            .await
            .unwrap();
        let ignored = "ignore me".to_owned();
        let err = client
            .request(&ignored, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let questions: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
        let requests: Vec<_> = questions
            .iter()
            .map(|q| client.request(q, Duration::from_secs(20)))
            .collect();
        let replies = futures_join_all(requests).await;
        for (i, reply) in replies.into_iter().enumerate() {
            assert_eq!(reply.unwrap(), format!("re: q{i}"));
        }
    });
}

/// Polls the futures concurrently (a tiny `join_all` without a futures dependency).
#[cfg(feature = "tokio")]
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

#[cfg(feature = "tokio")]
#[test]
fn a_late_subscriber_gets_everything_published_after_its_ack() {
    runtime().block_on(async {
        let server = Server::<String>::bind(ServerConfig::new(unique_local(), config()))
            .await
            .unwrap();
        let connect =
            || Client::<String>::connect(ClientConfig::new(server.address().clone(), config()));
        let publisher = connect().await.unwrap();
        let early = connect().await.unwrap();
        early.subscribe("news/").await.unwrap();
        for i in 0..5 {
            publisher
                .publish("news/a", &format!("before {i}"))
                .await
                .unwrap();
        }
        // Wait until the early subscriber has seen the first five, so "before" is before.
        for i in 0..5 {
            match early.recv().await.unwrap() {
                Incoming::Publication { message, .. } => assert_eq!(message, format!("before {i}")),
                other => panic!("unexpected {other:?}"),
            }
        }
        let late = connect().await.unwrap();
        late.subscribe("news/").await.unwrap();
        publisher
            .publish("sport/x", &"not news".to_owned())
            .await
            .unwrap();
        for i in 0..5 {
            publisher
                .publish("news/b", &format!("after {i}"))
                .await
                .unwrap();
        }
        for i in 0..5 {
            match late.recv().await.unwrap() {
                Incoming::Publication { topic, message } => {
                    assert_eq!(topic, "news/b");
                    assert_eq!(message, format!("after {i}"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
}

#[cfg(feature = "tokio")]
#[test]
fn bad_input_closes_only_that_connection() {
    runtime().block_on(async {
        let mut server = Server::<String>::bind(ServerConfig::new(
            "tcp:127.0.0.1:0".parse().unwrap(),
            config(),
        ))
        .await
        .unwrap();
        let address = server.address().clone();
        let Address::Tcp(host_port) = address.clone() else {
            unreachable!()
        };
        let good = Client::<String>::connect(ClientConfig::new(address, config()))
            .await
            .unwrap();
        let mut hello = Vec::new();
        Hello::new(MessageType::named("test.Text/1"), &Limits::default())
            .encode_frame(&mut hello)
            .unwrap();
        let mut over_limit = hello.clone();
        over_limit.extend_from_slice(
            &ipc_core::FrameHeader::new(FrameKind::Data, 0, u32::MAX).to_bytes(),
        );
        let mut wrong_version = hello.clone();
        let mut frame = Vec::new();
        ipc_core::encode_frame(&mut frame, FrameKind::Data, 0, "x", &Limits::default()).unwrap();
        frame[2] = 9;
        wrong_version.extend_from_slice(&frame);
        let mut not_a_string = hello.clone();
        ipc_core::encode_raw_frame(
            &mut not_a_string,
            FrameKind::Data,
            0,
            &[5, 0xFF],
            &Limits::default(),
        )
        .unwrap();
        let mut truncated = hello.clone();
        truncated.extend_from_slice(&frame[..frame.len() - 1]);
        truncated[hello.len() + 2] = 1;
        let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
            (
                "garbage",
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                ErrorKind::BadMagic,
            ),
            ("over limit", over_limit, ErrorKind::TooLarge),
            (
                "wrong version",
                wrong_version,
                ErrorKind::UnsupportedVersion,
            ),
            ("not the message type", not_a_string, ErrorKind::Decode),
            ("truncated", truncated, ErrorKind::Truncated),
        ];
        for (what, bytes, kind) in cases {
            let mut stream = tokio::net::TcpStream::connect(&host_port).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, &bytes)
                .await
                .unwrap();
            if what == "truncated" {
                tokio::io::AsyncWriteExt::shutdown(&mut stream)
                    .await
                    .unwrap();
            }
            let error = loop {
                match server.next_event().await.unwrap() {
                    Event::Disconnected { error, .. } => break error.unwrap(),
                    Event::Rejected { error, .. } => break error,
                    Event::Connected { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            };
            assert_eq!(error.kind(), kind, "{what}: {error}");
        }
        // The good client is still served.
        good.subscribe("t").await.unwrap();
        good.publish("t", &"still here".to_owned()).await.unwrap();
        match good.recv().await.unwrap() {
            Incoming::Publication { message, .. } => assert_eq!(message, "still here"),
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[cfg(feature = "tokio")]
#[test]
fn the_connection_limit_refuses_with_a_reason() {
    runtime().block_on(async {
        let server = Server::<String>::bind(
            ServerConfig::new("tcp:127.0.0.1:0".parse().unwrap(), config()).max_connections(1),
        )
        .await
        .unwrap();
        let first = Client::<String>::connect(
            ClientConfig::new(server.address().clone(), config()).no_reconnect(),
        )
        .await
        .unwrap();
        let err = Client::<String>::connect(ClientConfig::new(server.address().clone(), config()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
        assert!(
            err.to_string().contains("maximum of 1 connections"),
            "{err}"
        );
        first.close().await.unwrap();
    });
}

#[cfg(feature = "tokio")]
#[test]
fn a_slow_client_is_disconnected_or_loses_old_frames_per_policy() {
    runtime().block_on(async {
        for (policy, frames, bytes) in [
            (Policy::Disconnect, 4, 16 << 20),
            (Policy::DropOldest, 4, 16 << 20),
            (Policy::DropOldest, 1024, 200_000),
        ] {
            let mut server = Server::<String>::bind(
                ServerConfig::new("tcp:127.0.0.1:0".parse().unwrap(), config())
                    .queue_capacity(frames)
                    .queue_bytes(bytes)
                    .policy(policy),
            )
            .await
            .unwrap();
            // A client that never reads: its socket buffers fill, then its queue.
            let slow = AsyncConnection::<String>::connect(server.address(), config())
                .await
                .unwrap();
            let conn = loop {
                if let Some(Event::Connected { conn, .. }) = server.next_event().await {
                    break conn;
                }
            };
            let handle = server.handle();
            let big = "x".repeat(64 * 1024);
            let mut outcome = Ok(());
            for _ in 0..2000 {
                outcome = handle.send(conn, &big).await;
                if outcome.is_err() {
                    break;
                }
            }
            match policy {
                Policy::Disconnect => {
                    let err = outcome.unwrap_err();
                    assert!(
                        matches!(
                            err.kind(),
                            ErrorKind::Full | ErrorKind::Closed | ErrorKind::NotFound
                        ),
                        "{err}"
                    );
                }
                _ => {
                    outcome.unwrap();
                    assert!(handle.dropped(conn).unwrap() > 0);
                }
            }
            drop(slow);
        }
    });
}

#[cfg(feature = "tokio")]
#[test]
fn a_client_reconnects_and_resubscribes_after_a_server_restart() {
    runtime().block_on(async {
        let address = unique_local();
        let mut server = Server::<String>::bind(ServerConfig::new(address.clone(), config()))
            .await
            .unwrap();
        let fast = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
        let client =
            Client::<String>::connect(ClientConfig::new(address.clone(), config()).reconnect(fast))
                .await
                .unwrap();
        client.subscribe("t").await.unwrap();
        server.shutdown().await;
        drop(server);
        match client.recv().await.unwrap() {
            Incoming::Disconnected(err) => assert!(err.is_peer_gone(), "{err}"),
            other => panic!("unexpected {other:?}"),
        }
        let server = Server::<String>::bind(ServerConfig::new(address.clone(), config()))
            .await
            .unwrap();
        match client.recv().await.unwrap() {
            Incoming::Reconnected => {}
            other => panic!("unexpected {other:?}"),
        }
        // The resubscription's ack may still be on its way: publish until one arrives.
        let publisher = Client::<String>::connect(ClientConfig::new(address, config()))
            .await
            .unwrap();
        for attempt in 0.. {
            assert!(attempt < 100, "resubscription never took effect");
            publisher.publish("t", &"again".to_owned()).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(100), client.recv()).await {
                Ok(Ok(Incoming::Publication { message, .. })) => {
                    assert_eq!(message, "again");
                    break;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => continue,
            }
        }
        assert_eq!(client.connections(), 2);
        drop(server);
    });
}

#[cfg(feature = "tokio")]
#[test]
fn peer_credentials_allow_list() {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    runtime().block_on(async {
        let dir = Dir::new();
        for (allowed, welcome) in [(me, true), (me.wrapping_add(1), false)] {
            let address = Address::path(dir.0.join(format!("uid-{allowed}.sock")));
            let server = Server::<String>::bind(
                ServerConfig::new(address.clone(), config()).allow_uids(vec![allowed]),
            )
            .await
            .unwrap();
            let outcome =
                Client::<String>::connect(ClientConfig::new(address, config()).no_reconnect())
                    .await;
            match (welcome, outcome) {
                (true, Ok(client)) => client.close().await.unwrap(),
                (false, Err(err)) => {
                    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
                    assert!(
                        err.to_string()
                            .contains(&format!("user id {me} is not allowed")),
                        "{err}"
                    );
                }
                (welcome, outcome) => {
                    panic!("allowed {allowed} (me {me}), welcome {welcome}: {outcome:?}")
                }
            }
            drop(server);
        }
    });
}

#[cfg(feature = "tokio")]
#[test]
fn a_client_refuses_a_server_without_the_patterns() {
    let listener = Listener::<String>::bind(&"tcp:127.0.0.1:0".parse().unwrap(), config()).unwrap();
    let address = listener.address().clone();
    let server = std::thread::spawn(move || {
        let mut conn = listener.accept().unwrap();
        conn.recv().unwrap_err()
    });
    let err = runtime()
        .block_on(Client::<String>::connect(ClientConfig::new(
            address,
            config(),
        )))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("feature bit 0"), "{err}");
    let server_err = server.join().unwrap();
    assert_eq!(server_err.kind(), ErrorKind::PeerClosed, "{server_err}");
}

#[cfg(feature = "tokio")]
#[test]
fn the_server_drops_a_silent_client() {
    let quick = config().with_heartbeat(Heartbeat::new(
        Duration::from_millis(20),
        Duration::from_millis(150),
    ));
    runtime().block_on(async {
        let mut server =
            Server::<String>::bind(ServerConfig::new("tcp:127.0.0.1:0".parse().unwrap(), quick))
                .await
                .unwrap();
        let Address::Tcp(host_port) = server.address().clone() else {
            unreachable!()
        };
        // Completes the handshake, then reads pings without ever answering.
        let mut stream = tokio::net::TcpStream::connect(&host_port).await.unwrap();
        let mut hello = Vec::new();
        Hello::new(MessageType::named("test.Text/1"), &Limits::default())
            .encode_frame(&mut hello)
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, &hello)
            .await
            .unwrap();
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        let error = loop {
            match server.next_event().await.unwrap() {
                Event::Disconnected { error, .. } => break error.unwrap(),
                Event::Connected { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(error.kind(), ErrorKind::PeerDied, "{error}");
        drain.await.unwrap();
    });
}

#[cfg(feature = "tokio")]
#[test]
fn a_client_can_wait_for_a_server_that_is_not_up_yet() {
    runtime().block_on(async {
        let dir = Dir::new();
        let address = Address::path(dir.0.join("late.sock"));
        let fast = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
        let err = Client::<String>::connect(ClientConfig::new(address.clone(), config()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let waiting = tokio::spawn(Client::<String>::connect(
            ClientConfig::new(address.clone(), config())
                .reconnect(fast)
                .wait_for_server(),
        ));
        let server = Server::<String>::bind(ServerConfig::new(address, config()))
            .await
            .unwrap();
        let client = waiting.await.unwrap().unwrap();
        client.subscribe("x").await.unwrap();
        client.close().await.unwrap();
        drop(server);
    });
}

/// A hand-written receiver: answers the handshake with `features`, then returns every frame's
/// kind and the messages, with batch frames taken apart by hand (PROTOCOL.md, batch frames).
type Received = std::thread::JoinHandle<(Vec<FrameKind>, Vec<String>)>;

fn raw_receiver(features: u32) -> (Address, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address: Address = format!("tcp:{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut hello = Vec::new();
        Hello::new(MessageType::named("test.Text/1"), &Limits::default())
            .with_features(features)
            .encode_frame(&mut hello)
            .unwrap();
        stream.write_all(&hello).unwrap();
        let mut wire = Vec::new();
        stream.read_to_end(&mut wire).unwrap();
        let (mut kinds, mut texts) = (Vec::new(), Vec::new());
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let (frame, used) = ipc_core::Frame::parse(rest, &Limits::default()).unwrap();
            kinds.push(frame.kind());
            match frame.kind() {
                FrameKind::Data => texts.push(frame.decode::<String>().unwrap()),
                FrameKind::Batch => {
                    let mut entries = frame.payload();
                    while let Some((len, tail)) = entries.split_first_chunk::<2>() {
                        let len = usize::from(u16::from_le_bytes(*len));
                        texts.push(ipc_core::decode::<String>(&tail[..len]).unwrap());
                        entries = &tail[len..];
                    }
                    assert!(entries.is_empty(), "entries fill the batch");
                }
                _ => {}
            }
            rest = &rest[used..];
        }
        (kinds, texts)
    });
    (address, receiver)
}

#[test]
fn batches_go_only_to_peers_that_accept_them() {
    let sent: Vec<String> = (0..300)
        .map(|i| {
            // Mostly small messages, now and then one too large for a batch.
            let len = if i % 100 == 99 { 5000 } else { i % 40 };
            format!("{i}:{}", "x".repeat(len))
        })
        .collect();
    #[cfg(feature = "tokio")]
    let runtime = runtime();
    for features in [0, ipc_core::FEATURE_BATCH] {
        for asynchronous in [false, true] {
            if asynchronous && !cfg!(feature = "tokio") {
                continue; // the tokio API is not built
            }
            let (address, receiver) = raw_receiver(features);
            if asynchronous {
                #[cfg(feature = "tokio")]
                runtime.block_on(async {
                    let mut conn = AsyncConnection::<String>::connect(&address, config())
                        .await
                        .unwrap();
                    for text in &sent {
                        conn.send(text).await.unwrap();
                    }
                    conn.close().await.unwrap();
                });
            } else {
                let mut conn = Connection::<String>::connect(&address, config()).unwrap();
                for text in &sent {
                    conn.send(text).unwrap();
                }
                conn.close().unwrap();
            }
            let (kinds, texts) = receiver.join().unwrap();
            let what = format!("features {features}, async {asynchronous}");
            assert_eq!(texts, sent, "{what}");
            let batches = kinds.iter().filter(|k| **k == FrameKind::Batch).count();
            if features == 0 {
                assert_eq!(batches, 0, "{what}: {kinds:?}");
            } else {
                // 300 messages in a few batches; the three large ones in data frames, and
                // after each the next message too (the sender tries a data frame first
                // after a message too large for a batch).
                assert!((1..=4).contains(&batches), "{what}: {kinds:?}");
                let data = kinds.iter().filter(|k| **k == FrameKind::Data).count();
                assert!((3..=6).contains(&data), "{what}: {kinds:?}");
            }
        }
    }
}

#[cfg(feature = "tokio")]
#[test]
fn a_client_gives_up_after_its_back_off_max_attempts() {
    runtime().block_on(async {
        let watchdog = Duration::from_secs(20);
        let dir = Dir::new();
        let address = Address::path(dir.0.join("never.sock"));
        let fast =
            Backoff::new(Duration::from_millis(1), Duration::from_millis(5)).with_max_attempts(3);
        // Waiting for a server that never comes up: three attempts, then the last error.
        let waiting = Client::<String>::connect(
            ClientConfig::new(address.clone(), config())
                .reconnect(fast)
                .wait_for_server(),
        );
        let err = tokio::time::timeout(watchdog, waiting)
            .await
            .expect("watchdog")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(
            err.to_string()
                .contains("gave up waiting for the server after 3 attempts"),
            "{err}"
        );

        // Reconnecting to a server that went away for good: two attempts, then a second
        // `Disconnected` that says so.
        let mut server = Server::<String>::bind(ServerConfig::new(address.clone(), config()))
            .await
            .unwrap();
        let twice = fast.with_max_attempts(2);
        let client =
            Client::<String>::connect(ClientConfig::new(address, config()).reconnect(twice))
                .await
                .unwrap();
        server.shutdown().await;
        drop(server);
        match tokio::time::timeout(watchdog, client.recv())
            .await
            .expect("watchdog")
        {
            Ok(Incoming::Disconnected(err)) => assert!(err.is_peer_gone(), "{err}"),
            other => panic!("unexpected {other:?}"),
        }
        match tokio::time::timeout(watchdog, client.recv())
            .await
            .expect("watchdog")
        {
            Ok(Incoming::Disconnected(err)) => {
                assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
                assert!(
                    err.to_string()
                        .contains("gave up reconnecting after 2 attempts"),
                    "{err}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(client.connections(), 1);
    });
}

/// A client whose handshake the server is still finishing when it shuts down is ended
/// too: the stop and the registration of a new connection cannot miss each other (a
/// connection that registered just after the stop once lived on with no server).
#[cfg(feature = "tokio")]
#[test]
fn a_shutdown_ends_a_connection_whose_handshake_was_finishing() {
    runtime().block_on(async {
        let watchdog = Duration::from_secs(20);
        let dir = Dir::new();
        for round in 0..200 {
            let address = Address::path(dir.0.join(format!("s{round}.sock")));
            let mut server = Server::<String>::bind(ServerConfig::new(address.clone(), config()))
                .await
                .unwrap();
            let client =
                Client::<String>::connect(ClientConfig::new(address, config()).no_reconnect())
                    .await
                    .unwrap();
            server.shutdown().await;
            if round % 2 == 0 {
                drop(server);
            }
            match tokio::time::timeout(watchdog, client.recv()).await {
                Ok(Ok(Incoming::Disconnected(err))) => {
                    assert!(err.is_peer_gone(), "round {round}: {err}")
                }
                Ok(other) => panic!("round {round}: unexpected {other:?}"),
                Err(_) => panic!("round {round}: the connection outlived the server's shutdown"),
            }
        }
    });
}

/// Without the `tls` feature a `wss://` or `tls:` address still parses, and every place an
/// address goes refuses it with the same clear error instead of panicking.
#[cfg(not(feature = "tls"))]
#[test]
fn tls_and_wss_addresses_need_the_tls_feature() {
    for text in ["wss://127.0.0.1:1/ipc", "tls:127.0.0.1:1"] {
        let address: Address = text.parse().unwrap();
        assert_eq!(address.to_string(), text);
        let expected = format!("{text}: tls: and wss:// addresses need ipc-socket's `tls` feature");
        let err = Listener::<String>::bind(&address, config()).unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string()),
            (ErrorKind::InvalidInput, expected.clone())
        );
        let err = Connection::<String>::connect(&address, config()).unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string()),
            (ErrorKind::InvalidInput, expected.clone())
        );
        #[cfg(feature = "tokio")]
        runtime().block_on(async {
            let server = ServerConfig::new("tcp:127.0.0.1:0".parse().unwrap(), config())
                .also_listen(address.clone());
            let err = Server::<String>::bind(server)
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains(&expected), "{err}");
            let client = ClientConfig::new(address.clone(), config()).no_reconnect();
            let err = Client::<String>::connect(client)
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains(&expected), "{err}");
            let err = AsyncConnection::<String>::connect(&address, config())
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains(&expected), "{err}");
        });
    }
}
