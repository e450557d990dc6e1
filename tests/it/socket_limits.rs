//! The server's limits against hostile and broken clients, all real processes: an
//! `ipc-peer socket-server` and `ipc-peer socket-flood` clients (raw frames after a real
//! handshake), with the test process measuring the server's memory from `/proc/PID/status`.
//!
//! - a silent client is closed with close code 8 (heartbeat timeout), not just dropped;
//! - a response over the client's announced limit fails the request with the reason (code 9);
//! - a frame that trickles in is closed at its deadline (code 10), whatever the heartbeat;
//! - a client that never reads its responses does not stall a healthy one (default policy);
//! - under every flood the server's peak memory stays within the README's bound,
//!   `connections × (max_frame_len + queue_bytes + 80 KiB + 64 B × queue_capacity)`, and
//!   comes back when the flooding connections end.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_core::{ErrorKind, Limits, MessageType};
use ipc_socket::{Client, ClientConfig};
use ipc_tests::{Peer, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

use ipc_tests::roles::chat_config as config;
use ipc_tests::roles::{CHAT_TYPE, ChatLine};

/// A `socket-server` process on a fresh loopback port.
struct Server {
    peer: Peer,
    address: String,
}

impl Server {
    fn start(args: &[&str]) -> Result<Server> {
        let mut command = Peer::role_command(
            "socket-server",
            ["--address", "tcp:127.0.0.1:0"].iter().chain(args),
        )?;
        command.stdin(Stdio::piped());
        let mut peer = Peer::spawn("server", command)?;
        let address = peer.expect_prefixed("ready address=", WAIT)?;
        Ok(Server { peer, address })
    }

    /// The server's resident and peak memory in bytes (`VmRSS`, `VmHWM`).
    fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.peer.pid()))
            .context("read the server's /proc status")?;
        let kib = |key: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(key))
                .with_context(|| format!("no {key} in /proc status"))?;
            let number = line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()?;
            Ok(number * 1024)
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }

    /// The server's next line that starts with `prefix` (skipping others).
    fn expect(&mut self, prefix: &str) -> Result<String> {
        self.peer.expect_prefixed(prefix, WAIT)
    }

    fn stop(mut self) -> Result<()> {
        self.peer.close_stdin();
        self.peer.expect_prefixed("ok", WAIT)?;
        self.peer.wait_success(WAIT)
    }
}

/// Runs a `socket-flood` client to its end and returns its `end` lines' `how` fields.
fn flood(server: &Server, args: &[&str]) -> Result<Vec<String>> {
    let mut peer = Peer::spawn_role(
        "flood",
        "socket-flood",
        ["--address", server.address.as_str()].iter().chain(args),
    )?;
    let mut ends = Vec::new();
    loop {
        let line = peer.expect_line(WAIT)?;
        if line == "ok" {
            break;
        }
        if line.starts_with("end ") {
            let how = line.split_once("how=").map_or("", |(_, how)| how);
            ends.push(how.to_owned());
        }
    }
    peer.wait_success(WAIT)?;
    Ok(ends)
}

/// A runtime whose worker keeps the test's clients alive (answering pings) between calls.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

#[test]
fn a_silent_client_is_closed_with_the_heartbeat_timeout_code() -> Result<()> {
    let _watchdog = Watchdog::new("heartbeat close", WAIT);
    // Pings after 100 ms of silence, dead after 500 ms.
    let mut server = Server::start(&["--heartbeat-ms", "100"])?;
    let ends = flood(&server, &["--mode", "silent"])?;
    assert_eq!(ends, ["close code=8"], "the server must say why it closed");
    let line = server.expect("closed")?;
    assert!(line.contains("error=peer died"), "{line}");
    assert!(line.contains("heartbeat timeout 500 ms"), "{line}");
    server.stop()
}

#[test]
fn a_response_over_the_clients_limit_fails_the_request_with_the_reason() -> Result<()> {
    let _watchdog = Watchdog::new("response too large", WAIT);
    let mut server = Server::start(&["--respond-len", "4000"])?;
    let runtime = runtime()?;
    let limits = Limits::new().with_max_frame_len(1024);
    let client = runtime.block_on(Client::<ChatLine>::connect(
        ClientConfig::new(server.address.parse()?, config().with_limits(limits)).no_reconnect(),
    ))?;
    server.expect("connected")?;
    let line = ChatLine {
        from: "small".into(),
        seq: 1,
        text: "hi".into(),
    };
    // The deadline is far beyond what an answer takes: the error must come from the server.
    let err = runtime
        .block_on(client.request(&line, Duration::from_secs(30)))
        .expect_err("a response over the client's limit cannot arrive");
    assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
    let message = err.to_string();
    assert!(message.contains("code 9 (response too large)"), "{message}");
    assert!(message.contains("response to request 1"), "{message}");
    assert!(message.contains("exceeds limit of 1024"), "{message}");
    let reported = server.expect("respond failed")?;
    assert!(reported.contains("exceeds limit of 1024"), "{reported}");
    drop(client);
    server.stop()
}

#[test]
fn a_frame_that_trickles_in_is_closed_at_its_deadline() -> Result<()> {
    let _watchdog = Watchdog::new("frame deadline", WAIT);
    // The heartbeat (dead after 500 ms of silence) never fires: a byte comes every 20 ms.
    let mut server = Server::start(&["--heartbeat-ms", "100", "--frame-timeout-ms", "400"])?;
    let ends = flood(
        &server,
        &[
            "--mode",
            "trickle",
            "--connections",
            "4",
            "--len",
            "100000",
            "--every-ms",
            "20",
        ],
    )?;
    assert_eq!(ends, ["close code=10"; 4]);
    for _ in 0..4 {
        let line = server.expect("closed")?;
        assert!(line.contains("error=timed out"), "{line}");
        assert!(line.contains("frame not completed within 400 ms"), "{line}");
    }
    // A trickle so fast that a read never waits long enough to time out is closed too.
    let ends = flood(
        &server,
        &["--mode", "trickle", "--len", "16000000", "--every-ms", "0"],
    )?;
    assert_eq!(ends, ["close code=10"]);
    let line = server.expect("closed")?;
    assert!(line.contains("frame not completed within 400 ms"), "{line}");
    server.stop()
}

/// A healthy client's requests, each with a 5 s deadline, are answered while another
/// client sends requests and never reads the responses; the role's event loop awaits
/// `respond` inline, as the README's example does.
fn no_stall(policy: &str, heartbeat_ms: &str) -> Result<()> {
    let mut server = Server::start(&[
        "--policy",
        policy,
        "--queue-capacity",
        "64",
        "--heartbeat-ms",
        heartbeat_ms,
    ])?;
    let runtime = runtime()?;
    let healthy = runtime.block_on(Client::<ChatLine>::connect(
        ClientConfig::new(server.address.parse()?, config()).no_reconnect(),
    ))?;
    server.expect("connected")?;
    // 3000 requests of 16 KiB, none of whose responses is read: far more than the queue
    // (64 frames), the server's event channel (1024) and the kernel's socket buffers hold,
    // so the flooder never goes quiet before the server has dealt with it. The connection
    // stays open.
    let mut command = Peer::role_command(
        "socket-flood",
        [
            "--address",
            server.address.as_str(),
            "--mode",
            "request",
            "--count",
            "3000",
            "--len",
            "16384",
            "--hold",
            "true",
        ],
    )?;
    command.stdin(Stdio::piped());
    let mut flooder = Peer::spawn("flood", command)?;
    flooder.expect_prefixed("flooded", WAIT)?;
    for seq in 0..20 {
        let line = ChatLine {
            from: "healthy".into(),
            seq,
            text: "still answered?".into(),
        };
        let reply = runtime
            .block_on(healthy.request(&line, Duration::from_secs(5)))
            .with_context(|| format!("healthy request {seq}"))?;
        assert_eq!(reply, line);
    }
    if policy != "drop-oldest" {
        // The slow client alone paid: closed as too slow (code 5).
        let closed = server.expect("closed")?;
        assert!(closed.contains("too slow"), "{closed}");
    }
    flooder.close_stdin();
    flooder.expect_prefixed("ok", WAIT)?;
    flooder.wait_success(WAIT)?;
    drop(healthy);
    server.stop()
}

#[test]
fn a_client_that_never_reads_does_not_stall_another_with_the_default_policy() -> Result<()> {
    let _watchdog = Watchdog::new("no stall", WAIT);
    // Default heartbeat (dead after 5 s): the default policy needs none of it.
    no_stall("default", "1000")?;
    no_stall("drop-oldest", "1000")
}

#[test]
fn with_policy_wait_a_client_that_reads_nothing_holds_senders_only_its_heartbeat_timeout()
-> Result<()> {
    let _watchdog = Watchdog::new("wait bounded", WAIT);
    // Dead after 500 ms: a sender waits that long at most for a client that reads nothing.
    no_stall("wait", "100")
}

/// The README's bound on what clients can make the server hold, for `connections`.
fn bound(connections: u64, max_frame_len: u64, queue_bytes: u64, queue_capacity: u64) -> u64 {
    connections * (max_frame_len + queue_bytes + 80 * 1024 + 64 * queue_capacity)
}

/// Allocator and runtime overhead beyond the bound: thread stacks, arenas, page rounding.
const SLACK: u64 = 4 * 1024 * 1024;

const MAX_FRAME_LEN: u64 = 256 * 1024;
const QUEUE_BYTES: u64 = 256 * 1024;
const QUEUE_CAPACITY: u64 = 1024;

fn small_limits_server(policy: &str) -> Result<Server> {
    Server::start(&[
        "--policy",
        policy,
        "--heartbeat-ms",
        "200",
        "--max-frame-len",
        &MAX_FRAME_LEN.to_string(),
        "--queue-bytes",
        &QUEUE_BYTES.to_string(),
        "--queue-capacity",
        &QUEUE_CAPACITY.to_string(),
        "--event-capacity",
        "64",
    ])
}

/// Runs `flood_args` against a server with small limits and checks its memory: the peak
/// stays within the bound for `connections`, and after the flood ends the resident size
/// is back within the bound too.
fn memory_bounded(policy: &str, connections: u64, flood_args: &[&str]) -> Result<Vec<String>> {
    let mut server = small_limits_server(policy)?;
    let (baseline, _) = server.memory()?;
    let connections_arg = connections.to_string();
    let mut args = flood_args.to_vec();
    args.extend(["--connections", connections_arg.as_str()]);
    let ends = flood(&server, &args)?;
    for _ in 0..connections {
        server.expect("closed")?;
    }
    let (rss, peak) = server.memory()?;
    let limit = bound(connections, MAX_FRAME_LEN, QUEUE_BYTES, QUEUE_CAPACITY) + SLACK;
    println!(
        "policy {policy}, {connections} connections, {flood_args:?}: baseline {baseline}, peak {peak}, after {rss}, bound {limit} bytes; ends {ends:?}"
    );
    if peak > baseline + limit {
        bail!(
            "server peaked at {peak} bytes, {} over its baseline of {baseline}: more than the bound of {limit}",
            peak - baseline
        );
    }
    if rss > baseline + limit {
        bail!("server kept {rss} bytes after the flood (baseline {baseline}, bound {limit})");
    }
    server.stop()?;
    Ok(ends)
}

#[test]
fn a_ping_flood_that_never_reads_pongs_stays_within_the_memory_bound() -> Result<()> {
    let _watchdog = Watchdog::new("ping flood", WAIT * 2);
    // 4 M pings (64 MB) per connection unless the server closes it first; before pongs
    // counted against the queue, each of them left a pong behind in the server.
    for policy in ["default", "wait", "drop-oldest"] {
        let ends = memory_bounded(policy, 2, &["--mode", "ping", "--count", "4000000"])?;
        assert_eq!(ends.len(), 2);
    }
    Ok(())
}

#[test]
fn many_flooding_connections_stay_within_the_memory_bound() -> Result<()> {
    let _watchdog = Watchdog::new("many connections", WAIT);
    // 32 connections flood pings at once; each is closed as too slow once its queue is full.
    let ends = memory_bounded("default", 32, &["--mode", "ping", "--count", "4000000"])?;
    assert_eq!(ends.len(), 32);
    Ok(())
}

#[test]
fn a_request_flood_that_never_reads_stays_within_the_memory_bound() -> Result<()> {
    let _watchdog = Watchdog::new("request flood", WAIT * 2);
    for policy in ["default", "drop-oldest"] {
        memory_bounded(
            policy,
            4,
            &["--mode", "request", "--count", "20000", "--len", "1000"],
        )?;
    }
    Ok(())
}

#[test]
fn frames_claiming_the_largest_length_stay_within_the_memory_bound() -> Result<()> {
    let _watchdog = Watchdog::new("length claims", WAIT);
    // 16 connections each really send all but the last byte of a frame of the largest
    // length; the frame deadline (10 s by default, here 1 s) then closes them.
    let max = MAX_FRAME_LEN.to_string();
    let mut server = Server::start(&[
        "--max-frame-len",
        &max,
        "--queue-bytes",
        &QUEUE_BYTES.to_string(),
        "--frame-timeout-ms",
        "1000",
    ])?;
    let (baseline, _) = server.memory()?;
    let ends = flood(
        &server,
        &["--mode", "claim", "--connections", "16", "--len", &max],
    )?;
    assert_eq!(ends, ["close code=10"; 16]);
    for _ in 0..16 {
        let line = server.expect("closed")?;
        assert!(line.contains("(262159 bytes of it received)"), "{line}");
    }
    let (rss, peak) = server.memory()?;
    // Only the receive buffers grow here: one frame each, buffered once.
    let limit = 16 * (MAX_FRAME_LEN + 16 + 16 * 1024) + SLACK;
    println!("16 claims: baseline {baseline}, peak {peak}, after {rss}, bound {limit} bytes");
    assert!(
        peak <= baseline + limit,
        "peak {peak} over baseline {baseline} + {limit}"
    );
    assert!(
        rss <= baseline + limit,
        "after {rss} over {baseline} + {limit}"
    );
    server.stop()
}

#[test]
fn a_client_whose_server_goes_silent_says_heartbeat_timeout() -> Result<()> {
    use std::io::{Read, Write};
    let _watchdog = Watchdog::new("client heartbeat close", WAIT);
    // The test plays a server by hand: handshake, ack the subscription, then silence.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = format!("tcp:{}", listener.local_addr()?);
    let mut watcher = Peer::spawn_role("watch", "socket-watch", ["--address", &address])?;
    let (mut stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(WAIT))?;
    let limits = Limits::default();
    let mut hello = Vec::new();
    // Feature bit 0: the messaging patterns a Client needs.
    ipc_core::Hello::new(MessageType::named(CHAT_TYPE), &limits)
        .with_features(1)
        .encode_frame(&mut hello)?;
    stream.write_all(&hello)?;
    let mut decoder = ipc_core::FrameDecoder::new(limits);
    let mut pings = 0;
    let close = loop {
        let Some(frame) = decoder.next_frame()? else {
            let n = stream.read(decoder.read_buf())?;
            if n == 0 {
                bail!("the client closed without a close frame after {pings} pings");
            }
            decoder.commit(n);
            continue;
        };
        match frame.kind() {
            ipc_core::FrameKind::Subscribe => {
                let mut ack = Vec::new();
                ipc_core::encode_raw_frame(
                    &mut ack,
                    ipc_core::FrameKind::SubscribeAck,
                    frame.id(),
                    &[],
                    &limits,
                )?;
                stream.write_all(&ack)?;
            }
            ipc_core::FrameKind::Ping => pings += 1,
            ipc_core::FrameKind::Close => break ipc_core::Close::decode(frame.payload())?,
            _ => {}
        }
    };
    assert_eq!(
        close.code,
        ipc_core::CloseCode::HEARTBEAT_TIMEOUT,
        "{close:?}"
    );
    assert!(
        close.reason.contains("heartbeat timeout 5000 ms"),
        "{close:?}"
    );
    assert!(pings >= 1, "the client pinged before giving up");
    watcher.expect_prefixed("connected", WAIT)?;
    let _ = watcher.kill();
    Ok(())
}

#[test]
fn a_frame_of_the_default_largest_length_is_buffered_once() -> Result<()> {
    let _watchdog = Watchdog::new("16 MiB frame", WAIT);
    // Default limits: 16 MiB frames. The client really sends all but the last byte.
    let mut server = Server::start(&["--frame-timeout-ms", "1500"])?;
    let (baseline, _) = server.memory()?;
    let len = (16u64 << 20).to_string();
    let ends = flood(&server, &["--mode", "claim", "--len", &len])?;
    assert_eq!(ends, ["close code=10"]);
    let line = server.expect("closed")?;
    assert!(line.contains("(16777231 bytes of it received)"), "{line}");
    let (rss, peak) = server.memory()?;
    let limit = (16 << 20) + 16 + 16 * 1024 + SLACK;
    println!("16 MiB frame: baseline {baseline}, peak {peak}, after {rss}, bound {limit} bytes");
    assert!(
        peak <= baseline + limit,
        "peak {peak} over baseline {baseline} + {limit}"
    );
    server.stop()
}

#[test]
fn a_stream_of_frames_of_the_largest_length_stays_within_the_bound_of_one_connection() -> Result<()>
{
    let _watchdog = Watchdog::new("large frames", WAIT);
    // Default limits: 16 MiB frames, 16 MiB queue. 24 pings of 16 MiB each (really sent),
    // pongs never read; one connection may make the server hold its bound, no more.
    let mut server = Server::start(&[])?;
    let (baseline, _) = server.memory()?;
    let len = (16u64 << 20).to_string();
    let ends = flood(
        &server,
        &["--mode", "large", "--count", "24", "--len", &len],
    )?;
    assert_eq!(ends, ["done"]);
    server.expect("closed")?;
    let (rss, peak) = server.memory()?;
    let limit = bound(1, 16 << 20, 16 << 20, 1024) + SLACK;
    println!("24 frames of 16 MiB: baseline {baseline}, peak {peak}, after {rss}, bound {limit}");
    assert!(
        peak <= baseline + limit,
        "peak {peak} over baseline {baseline} + {limit}"
    );
    server.stop()
}
