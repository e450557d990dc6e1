//! The 64-byte stream of the benchmark in one process, without waiting: bursts of typed
//! `Sample`s (a sequence number and 64 bytes, as the bench's `shm-source` sends them) sent,
//! then received and decoded in place; or the same through the raw ring baseline. For
//! instruction counts per message (`valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='stream::send_burst'`, or `recv_burst`, `ring_send_burst`,
//! `ring_recv_burst`), not for timing:
//! `cargo run --release -p ipc-shm --example shm_stream --features baseline -- typed 1000`.

use ipc_core::{MessageType, Result};
use ipc_shm::baseline::RawRing;
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender, WaitMode};
use serde::{Deserialize, Serialize};

const BURST: u64 = 256;

/// `ipc-tests`' `Sample`: its payload is a byte string (one copy), not a sequence.
#[derive(Serialize, Deserialize)]
struct Sample<'a> {
    seq: u64,
    #[serde(borrow)]
    payload: Bytes<'a>,
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes<'a>, D::Error> {
        <&'a [u8]>::deserialize(deserializer).map(Bytes)
    }
}

#[inline(never)]
fn send_burst(sender: &mut ShmSender<Sample<'static>>, first: u64, payload: &[u8]) -> Result<()> {
    for seq in first..first + BURST {
        sender.send_as(&Sample {
            seq,
            payload: Bytes(payload),
        })?;
    }
    Ok(())
}

#[inline(never)]
fn recv_burst(receiver: &mut ShmReceiver<Sample<'static>>) -> Result<usize> {
    let mut bytes = 0;
    for _ in 0..BURST {
        let message = receiver.recv_ref()?;
        let sample: Sample<'_> = message.decode()?;
        bytes += std::hint::black_box(sample.payload.0).len();
    }
    Ok(bytes)
}

#[inline(never)]
fn ring_send_burst(ring: &RawRing, payload: &[u8]) -> Result<()> {
    ring.produce(payload, BURST)
}

#[inline(never)]
fn ring_recv_burst(ring: &RawRing, into: &mut [u8]) -> Result<()> {
    ring.consume(into, BURST).map(drop)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "typed".into());
    let bursts: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let name = format!("stream-example-{}", std::process::id());
    let payload = [7u8; 64];
    let mut total = 0usize;
    if mode == "ring" {
        let ring = RawRing::create(&name, 64, 1 << 14)?;
        let mut into = [0u8; 64];
        for _ in 0..bursts {
            ring_send_burst(&ring, &payload)?;
            ring_recv_burst(&ring, &mut into)?;
            total += into.len();
        }
    } else {
        let config = ChannelConfig::new()
            .with_capacity(1 << 20)
            .with_wait_mode(WaitMode::Polling)
            .with_message_type(MessageType::named("ipc-tests.Sample/1"));
        let mut receiver = ShmReceiver::<Sample<'static>>::create(&name, &config)?;
        let mut sender = ShmSender::<Sample<'static>>::open(&name, &config)?;
        for burst in 0..bursts {
            send_burst(&mut sender, burst * BURST, &payload)?;
            total += recv_burst(&mut receiver)?;
        }
    }
    println!("{total}");
    Ok(())
}
