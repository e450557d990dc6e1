//! Streams 64-byte messages from this process to a child sink, in alternating blocks of
//! ipc-socket (blocking), ipc-socket (tokio) and the raw baseline (a `BufWriter` of
//! length-prefixed bytes); prints each kind's best and median rate, for before/after
//! comparisons and profiling on a noisy machine:
//! `cargo run --release -p ipc-socket --example stream -- [unix|tcp] [blocks] [messages]
//! [kinds]`, where kinds is a comma-separated subset of `ipc,async,raw,plain` (`plain`:
//! ipc-socket with batches turned off by the receiver). `FLUSH=BYTES` in the environment
//! sets ipc-socket's flush threshold (default 64 KiB).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{MessageType, Receiver, Result, Sender};
use ipc_socket::{Address, AsyncConnection, Connection, ConnectionConfig, Listener};
use serde::{Deserialize, Serialize};

const SIZE: usize = 64;

#[derive(Serialize, Deserialize)]
struct Blob {
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct BlobRef<'a> {
    #[serde(with = "serde_bytes")]
    bytes: &'a [u8],
}

fn config() -> ConnectionConfig {
    ConnectionConfig::new::<Blob>()
        .with_message_type(MessageType::named("example.Blob/1"))
        .without_heartbeat()
        .with_flush_threshold(
            std::env::var("FLUSH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64 * 1024),
        )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sink") {
        return sink(&args[2], &args[3]);
    }
    let transport = args.get(1).cloned().unwrap_or_else(|| "unix".to_owned());
    let blocks: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(30);
    let count: u64 = args
        .get(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let kinds: Vec<&str> = args
        .get(4)
        .map_or("ipc,async,raw", String::as_str)
        .split(',')
        .collect();
    let dir = std::env::temp_dir().join(format!("ipc-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for block in 0..blocks {
        let kind = kinds[block % kinds.len()];
        let address = match transport.as_str() {
            "tcp" => "tcp:127.0.0.1:0".to_owned(),
            _ => format!("unix:{}", dir.join(format!("s{block}.sock")).display()),
        };
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["sink", kind, &address])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        let measured = line.trim().parse().and_then(|address: Address| match kind {
            "ipc" | "plain" => ipc(&address, count),
            "async" => runtime.block_on(asynchronous(&address, count)),
            _ => Ok(raw(&address, count)),
        });
        child.wait().expect("wait");
        let elapsed = measured?;
        rates[block % kinds.len()].push(count as f64 / elapsed.as_secs_f64() / 1e6);
    }
    let _ = std::fs::remove_dir_all(&dir);
    for (kind, rates) in kinds.iter().zip(&mut rates) {
        rates.sort_by(f64::total_cmp);
        println!(
            "{kind:>5}: best {:6.2} M msg/s, median {:6.2} M msg/s",
            rates[rates.len() - 1],
            rates[rates.len() / 2]
        );
    }
    Ok(())
}

fn ipc(address: &Address, count: u64) -> Result<Duration> {
    let mut conn = Connection::<Blob>::connect(address, config())?;
    let message = Blob {
        bytes: vec![7; SIZE],
    };
    let started = Instant::now();
    for _ in 0..count {
        conn.send(&message)?;
    }
    conn.send(&Blob { bytes: Vec::new() })?;
    conn.recv()?;
    Ok(started.elapsed())
}

async fn asynchronous(address: &Address, count: u64) -> Result<Duration> {
    let mut conn = AsyncConnection::<Blob>::connect(address, config()).await?;
    let message = Blob {
        bytes: vec![7; SIZE],
    };
    let started = Instant::now();
    for _ in 0..count {
        conn.send(&message).await?;
    }
    conn.send(&Blob { bytes: Vec::new() }).await?;
    conn.recv().await?;
    Ok(started.elapsed())
}

fn raw(address: &Address, count: u64) -> Duration {
    match address {
        Address::Path(path) => raw_on(
            &std::os::unix::net::UnixStream::connect(path).expect("connect"),
            count,
        ),
        Address::Tcp(host_port) => {
            let stream = std::net::TcpStream::connect(host_port.as_str()).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            raw_on(&stream, count)
        }
        _ => unreachable!("raw runs on unix: and tcp: addresses"),
    }
}

fn raw_on<S: Read + Write + Copy>(stream: S, count: u64) -> Duration {
    let mut message = (SIZE as u32).to_le_bytes().to_vec();
    message.resize(4 + SIZE, 7);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    let started = Instant::now();
    for _ in 0..count {
        writer.write_all(&message).expect("write");
    }
    writer.write_all(&0u32.to_le_bytes()).expect("write");
    writer.flush().expect("flush");
    let mut marker = [0u8; 4];
    let mut reader = stream;
    reader.read_exact(&mut marker).expect("marker");
    started.elapsed()
}

fn raw_sink<S: Read + Write + Copy>(stream: S) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).expect("length");
        let mut left = u32::from_le_bytes(len) as usize;
        if left == 0 {
            let mut writer = stream;
            writer.write_all(&[0; 4]).expect("marker");
            return;
        }
        while left > 0 {
            let n = reader.fill_buf().expect("read").len().min(left);
            reader.consume(n);
            left -= n;
        }
    }
}

fn sink(kind: &str, address: &str) -> Result<()> {
    let address: Address = address.parse()?;
    if kind == "raw" {
        match &address {
            Address::Path(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
                println!("{address}");
                raw_sink(&listener.accept().expect("accept").0);
            }
            Address::Tcp(host_port) => {
                let listener = std::net::TcpListener::bind(host_port.as_str()).expect("bind");
                println!("tcp:{}", listener.local_addr().expect("address"));
                let stream = listener.accept().expect("accept").0;
                stream.set_nodelay(true).expect("nodelay");
                raw_sink(&stream);
            }
            _ => unreachable!("raw runs on unix: and tcp: addresses"),
        }
        return Ok(());
    }
    let config = match kind {
        "plain" => config().without_batches(),
        _ => config(),
    };
    let listener = Listener::<Blob>::bind(&address, config)?;
    println!("{}", listener.address());
    let mut conn = listener.accept()?;
    loop {
        if conn.recv_ref::<BlobRef<'_>>()?.bytes.is_empty() {
            conn.send(&Blob { bytes: Vec::new() })?;
            conn.flush()?;
            // The client reads the marker, then closes.
            return match conn.recv() {
                Err(err) if err.is_peer_gone() => Ok(()),
                other => other.map(|_| ()),
            };
        }
    }
}
