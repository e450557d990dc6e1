//! The round trip of the benchmark in one process, without waiting: send 64 bytes on one
//! channel, take them out and echo them on a second through the zero-copy path, take the
//! echo out. For instruction counts of the hot path (`valgrind --tool=callgrind`, whole
//! or per side with `--collect-atstart=no --toggle-collect='hot_path::ping_send'`, or
//! `pong_echo`, `ping_recv`), not for timing:
//! `cargo run --release -p ipc-shm --example hot_path -- 100000`.

use ipc_core::{MessageType, Result};
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender, WaitMode};

/// Serialises with `serialize_bytes`, as the benchmark's ping does.
struct ByteString<'a>(&'a [u8]);

impl serde::Serialize for ByteString<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

fn main() -> Result<()> {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let config = ChannelConfig::new()
        .with_capacity(64 * 1024)
        .with_wait_mode(WaitMode::Polling)
        .with_message_type(MessageType::named("ipc-tests.Bytes/1"));
    let name = format!("hot-path-{}", std::process::id());
    let mut ping = ShmSender::<[u8]>::create(&format!("{name}.ab"), &config)?;
    let mut pong_in = ShmReceiver::<Vec<u8>>::open(&format!("{name}.ab"), &config)?;
    let mut pong_out = ShmSender::<[u8]>::create(&format!("{name}.ba"), &config)?;
    let mut back = ShmReceiver::<Vec<u8>>::open(&format!("{name}.ba"), &config)?;
    let payload = [7u8; 64];
    let mut total = 0usize;
    for _ in 0..rounds {
        ping_send(&mut ping, &payload)?;
        pong_echo(&mut pong_in, &mut pong_out)?;
        total += ping_recv(&mut back)?;
    }
    println!("{total}");
    Ok(())
}

#[inline(never)]
fn ping_send(ping: &mut ShmSender<[u8]>, payload: &[u8]) -> Result<()> {
    ping.send_as(&ByteString(payload))
}

#[inline(never)]
fn pong_echo(pong_in: &mut ShmReceiver<Vec<u8>>, pong_out: &mut ShmSender<[u8]>) -> Result<()> {
    let message = pong_in.recv_ref()?;
    let mut slot = pong_out.reserve(message.len())?;
    slot.copy_from_slice(&message);
    slot.commit();
    Ok(())
}

#[inline(never)]
fn ping_recv(back: &mut ShmReceiver<Vec<u8>>) -> Result<usize> {
    let echo = back.recv_ref()?;
    Ok(echo.len())
}
