//! Round trips of 64 bytes between this process and a child, over a channel pair (polling)
//! and over the raw spin ping-pong, in alternating blocks; prints percentiles of the
//! per-block round trip, for before/after comparisons on a noisy machine (the low
//! percentiles are the blocks no other process disturbed):
//! `cargo run --release -p ipc-shm --example rt --features baseline -- [blocks] [rounds per block]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{MessageType, Result};
use ipc_shm::baseline::{BaselineWait, PingPong};
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender, WaitMode};

struct ByteString<'a>(&'a [u8]);

impl serde::Serialize for ByteString<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

fn config() -> ChannelConfig {
    ChannelConfig::new()
        .with_capacity(64 * 1024)
        .with_wait_mode(WaitMode::Polling)
        .with_message_type(MessageType::named("ipc-tests.Bytes/1"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pong") {
        return pong(&args[2], &args[3]);
    }
    let blocks: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(40);
    let rounds: u32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(2000);
    let name = format!("rt-{}", std::process::id());
    let mut channel_blocks = Vec::new();
    let mut spin_blocks = Vec::new();
    for block in 0..blocks {
        let kind = if block % 2 == 0 { "channel" } else { "spin" };
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["pong", kind, &format!("{name}-{block}")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("ready");
        let name = format!("{name}-{block}");
        let measured = measure(kind, &name, rounds, &mut channel_blocks, &mut spin_blocks);
        child.wait().expect("wait");
        measured?;
    }
    report("channel", &mut channel_blocks);
    report("spin", &mut spin_blocks);
    Ok(())
}

/// One block: a warm-up batch and three measured ones.
fn measure(
    kind: &str,
    name: &str,
    rounds: u32,
    channel_blocks: &mut Vec<Duration>,
    spin_blocks: &mut Vec<Duration>,
) -> Result<()> {
    if kind == "channel" {
        let mut out = ShmSender::<[u8]>::create(&format!("{name}.ab"), &config())?;
        let mut back = loop {
            match ShmReceiver::<Vec<u8>>::open(&format!("{name}.ba"), &config()) {
                Ok(back) => break back,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        let payload = [7u8; 64];
        for batch in 0..4 {
            let started = Instant::now();
            for _ in 0..rounds {
                out.send_as(&ByteString(&payload))?;
                let echo = back.recv_ref()?;
                assert_eq!(echo.len(), 65);
            }
            if batch > 0 {
                channel_blocks.push(started.elapsed() / rounds);
            }
        }
    } else {
        let pair = PingPong::open(name)?;
        pair.ping(rounds, BaselineWait::Spin)?;
        for _ in 0..3 {
            spin_blocks.push(pair.ping(rounds, BaselineWait::Spin)?);
        }
        pair.stop();
    }
    Ok(())
}

fn report(what: &str, blocks: &mut [Duration]) {
    blocks.sort();
    let at = |p: usize| blocks[(blocks.len() - 1) * p / 100].as_nanos();
    println!(
        "{what:8} p10 {} ns  p25 {} ns  p50 {} ns  ({} blocks)",
        at(10),
        at(25),
        at(50),
        blocks.len()
    );
}

fn pong(kind: &str, name: &str) -> Result<()> {
    if kind == "spin" {
        let pair = PingPong::create(name)?;
        println!("ready");
        pair.pong(BaselineWait::Spin)?;
        return Ok(());
    }
    let mut back = ShmSender::<[u8]>::create(&format!("{name}.ba"), &config())?;
    println!("ready");
    let mut input = loop {
        match ShmReceiver::<Vec<u8>>::open(&format!("{name}.ab"), &config()) {
            Ok(input) => break input,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    loop {
        let message = match input.recv_ref() {
            Ok(message) => message,
            Err(err) if err.is_peer_gone() => return Ok(()),
            Err(err) => return Err(err),
        };
        let mut slot = back.reserve(message.len())?;
        slot.copy_from_slice(&message);
        slot.commit();
    }
}
