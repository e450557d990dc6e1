//! ipc-socket over `tls:`, beside raw tokio-rustls doing the same work and beside
//! ipc-socket over plain TCP, in the same run (part of the ipc-socket bench group).
//!
//! The bench process is the client, on tokio (`AsyncConnection`; the raw baseline a
//! `tokio_rustls` client stream); the server is an `ipc-peer` process: `socket-echo-server`
//! (ipc-socket's blocking `Listener` over rustls) or `socket-raw-tls-echo` (rustls's
//! `StreamOwned` with length-prefixed byte messages). Certificates are made at run time.
//!
//! - round trip of a 64-byte message, beside a raw tokio-rustls ping-pong of length-prefixed
//!   bytes, and beside ipc-socket's round trip over plain TCP (the cost of encryption);
//! - streaming 64-byte and 64 KiB messages, beside a raw tokio-rustls stream (a 64 KiB
//!   `BufWriter`, one write per message) and beside ipc-socket over plain TCP.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_socket::{Address, AsyncConnection, ConnectionConfig, TlsClientConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use super::socket::{Blob, blob_config, latency, stream_to_sink, throughput};
use super::{Effort, Figure};
use crate::Peer;
use crate::roles::Args;
use crate::tls::TestPki;

const WAIT: Duration = Duration::from_secs(120);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Counts {
    round_trips: u64,
    small: u64,
    large: u64,
}

fn counts(effort: Effort) -> Counts {
    match effort {
        Effort::Quick => Counts {
            round_trips: 2_000,
            small: 20_000,
            large: 200,
        },
        Effort::Full => Counts {
            round_trips: 50_000,
            small: 1_000_000,
            large: 5_000,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// ipc-socket over `tls:`.
    Tls,
    /// ipc-socket over `tcp:`.
    Tcp,
    /// Raw tokio-rustls.
    Raw,
}

struct Server {
    peer: Peer,
    address: String,
}

fn spawn(pki: &TestPki, side: Side, mode: &str) -> Result<Server> {
    let (role, address) = match side {
        Side::Tls => ("socket-echo-server", "tls:127.0.0.1:0"),
        Side::Tcp => ("socket-echo-server", "tcp:127.0.0.1:0"),
        Side::Raw => ("socket-raw-tls-echo", "tls:127.0.0.1:0"),
    };
    let mut args = vec![
        "--address".to_owned(),
        address.to_owned(),
        "--mode".to_owned(),
        mode.to_owned(),
    ];
    if side != Side::Tcp {
        args.extend(pki.server_args("server"));
    }
    let mut peer = Peer::spawn_role(format!("{role} {mode}"), role, &args)?;
    let address = peer.expect_prefixed("ready address=", WAIT)?;
    Ok(Server { peer, address })
}

/// Measures the TLS figures and their baselines; `Full` keeps the best of 5 interleaved runs.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let counts = counts(effort);
    let reps = match effort {
        Effort::Quick => 1,
        Effort::Full => 5,
    };
    let pki = TestPki::generate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let mut figures = Vec::new();
    let mut best = [Duration::MAX; 3];
    for _ in 0..reps {
        for (slot, side) in [Side::Raw, Side::Tls, Side::Tcp].into_iter().enumerate() {
            let took = runtime.block_on(round_trip(&pki, side, counts.round_trips))?;
            best[slot] = best[slot].min(took);
        }
    }
    let [raw, tls, tcp] = best;
    figures.push(latency(
        "round trip async, tls 127.0.0.1",
        tls,
        "raw tokio-rustls ping-pong",
        raw,
    ));
    figures.push(latency(
        "round trip async, tls vs tcp",
        tls,
        "ipc-socket async round trip over tcp",
        tcp,
    ));
    for (size, count) in [(64usize, counts.small), (64 * 1024, counts.large)] {
        let mut best = [Duration::MAX; 3];
        for _ in 0..reps {
            for (slot, side) in [Side::Raw, Side::Tls, Side::Tcp].into_iter().enumerate() {
                let took = runtime.block_on(stream(&pki, side, size, count))?;
                best[slot] = best[slot].min(took);
            }
        }
        let [raw, tls, tcp] = best;
        figures.push(throughput(
            "stream async, tls 127.0.0.1",
            size,
            count,
            tls,
            "raw buffered tokio-rustls stream of length-prefixed bytes",
            raw,
        ));
        figures.push(throughput(
            "stream async, tls vs tcp",
            size,
            count,
            tls,
            "ipc-socket async stream over tcp",
            tcp,
        ));
    }
    Ok(figures)
}

fn ipc_config(pki: &TestPki, side: Side) -> Result<ConnectionConfig> {
    let config = blob_config();
    if side == Side::Tcp {
        return Ok(config);
    }
    let tls = TlsClientConfig::with_ca_pem(&pki.read("ca.pem")?)?;
    Ok(config.with_tls_client(tls))
}

/// A raw tokio-rustls client stream to `tls:host:port`.
async fn raw_connect(
    pki: &TestPki,
    address: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let host_port = address.strip_prefix("tls:").context("a tls: address")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pki.read("ca.pem")?) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(host_port).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1")?;
    Ok(connector.connect(name, tcp).await?)
}

/// The per-round-trip time of the fastest of 20 batches.
async fn round_trip(pki: &TestPki, side: Side, n: u64) -> Result<Duration> {
    let mut server = spawn(pki, side, "echo")?;
    let batch = (n / 20).max(1);
    let mut best = Duration::MAX;
    if side == Side::Raw {
        let mut stream = raw_connect(pki, &server.address).await?;
        let mut message = Vec::with_capacity(68);
        message.extend_from_slice(&64u32.to_le_bytes());
        message.extend_from_slice(&[7u8; 64]);
        let mut reply = [0u8; 68];
        for _ in 0..n / batch {
            let started = Instant::now();
            for _ in 0..batch {
                stream.write_all(&message).await?;
                stream.flush().await?;
                stream.read_exact(&mut reply).await?;
            }
            best = best.min(started.elapsed() / batch as u32);
        }
        stream.shutdown().await?;
    } else {
        let address: Address = server.address.parse()?;
        let mut conn = AsyncConnection::<Blob>::connect(&address, ipc_config(pki, side)?).await?;
        let message = Blob {
            bytes: vec![7u8; 64],
        };
        for _ in 0..n / batch {
            let started = Instant::now();
            for _ in 0..batch {
                conn.send(&message).await?;
                let reply = conn.recv().await?;
                if reply.bytes.len() != 64 {
                    bail!("echo of {} bytes, sent 64", reply.bytes.len());
                }
            }
            best = best.min(started.elapsed() / batch as u32);
        }
        conn.close().await?;
    }
    server.peer.wait_success(WAIT)?;
    Ok(best)
}

/// The time to stream `count` messages of `size` bytes and get the end marker back.
async fn stream(pki: &TestPki, side: Side, size: usize, count: u64) -> Result<Duration> {
    let mut server = spawn(pki, side, "sink")?;
    let elapsed = if side == Side::Raw {
        let stream = raw_connect(pki, &server.address).await?;
        let mut message = Vec::with_capacity(4 + size);
        message.extend_from_slice(&(size as u32).to_le_bytes());
        message.resize(4 + size, 7u8);
        let mut stream = BufWriter::with_capacity(64 * 1024, stream);
        let started = Instant::now();
        for _ in 0..count {
            stream.write_all(&message).await?;
        }
        stream.write_all(&0u32.to_le_bytes()).await?;
        stream.flush().await?;
        let mut marker = [0u8; 4];
        stream.get_mut().read_exact(&mut marker).await?;
        let elapsed = started.elapsed();
        stream.shutdown().await?;
        elapsed
    } else {
        let address: Address = server.address.parse()?;
        let conn = AsyncConnection::<Blob>::connect(&address, ipc_config(pki, side)?).await?;
        stream_to_sink(conn, size, count).await?
    };
    server.peer.wait_success(WAIT)?;
    Ok(elapsed)
}

/// `socket-raw-tls-echo --address tls:HOST:PORT --mode echo|sink --tls-cert F --tls-key F`:
/// the raw baseline's server: one rustls `StreamOwned` connection of length-prefixed byte
/// messages (u32 LE length + bytes); `echo` sends each back, `sink` only the empty end
/// marker.
pub(crate) fn raw_tls_echo(args: &Args) -> Result<()> {
    let address = args.text("address", "");
    let host_port = address.strip_prefix("tls:").context("a tls: address")?;
    let chain = CertificateDer::pem_file_iter(args.text("tls-cert", ""))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(args.text("tls-key", ""))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let listener = std::net::TcpListener::bind(host_port)?;
    println!("ready address=tls:{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (tcp, _) = listener.accept()?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(Arc::new(config))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let echo = args.text("mode", "echo") == "echo";
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024 + 4);
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() {
            break;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > 16 * 1024 * 1024 {
            bail!("raw message of {len} bytes exceeds 16 MiB");
        }
        if buf.len() < len {
            buf.resize(len, 0);
        }
        stream.read_exact(&mut buf[..len])?;
        if echo || len == 0 {
            out.clear();
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&buf[..len]);
            stream.write_all(&out)?;
            stream.flush()?;
        }
    }
    println!("ok");
    Ok(())
}
