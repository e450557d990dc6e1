//! Cross-process benchmarks of ipc-shm, with their raw baselines measured in the same run:
//!
//! | figure | baseline |
//! |---|---|
//! | round trip of 64 B, polling | spin ping-pong on two atomics in shared memory |
//! | round trip of 64 B, blocking (the default wait: spin, yield, then sleep) | ping-pong on two atomics with the same wait: 100 polls, 50 µs of yielding, then a futex |
//! | round trip of 64 B, blocking set to sleep at once (no spins, no yield) | futex ping-pong on two atomics, sleeping at once |
//! | stream of 64 B messages (msg/s) | memcpy of 64 B messages in one process |
//! | stream of 64 KiB messages (MB/s), zero-copy byte path | memcpy of 64 KiB buffers in one process |
//!
//! This process is one side of every pair; the other is an `ipc-peer` role. A round trip
//! and its baseline run in turns (five of each, neither pinned to a core), so that
//! both see the same load on a shared machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::MessageType;
use ipc_shm::baseline::{BaselineWait, PingPong};
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender, WaitMode};

use super::{Effort, Figure};
use crate::{Peer, unique_name};

const WAIT: Duration = Duration::from_secs(120);
const BYTES_TYPE: &str = "ipc-tests.Bytes/1";

struct Counts {
    round_trips: u32,
    small_messages: u64,
    big_messages: u64,
}

/// Measures ipc-shm's figures and their baselines.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let counts = match effort {
        Effort::Quick => Counts {
            round_trips: 1_000,
            small_messages: 50_000,
            big_messages: 2_000,
        },
        Effort::Full => Counts {
            round_trips: 200_000,
            small_messages: 5_000_000,
            big_messages: 50_000,
        },
    };
    let mut figures = Vec::new();

    let (polling, spin) = round_trips(
        RoundTrip::Channel(WaitMode::Polling, Wait::Default),
        BaselineWait::Spin,
        counts.round_trips,
    )?;
    figures.push(latency(
        "round trip (polling)",
        polling,
        "spin ping-pong, two atomics",
        spin,
    ));

    let (blocking, spin_futex) = round_trips(
        RoundTrip::Channel(WaitMode::Blocking, Wait::Default),
        BaselineWait::SpinThenFutex,
        counts.round_trips / 4,
    )?;
    figures.push(latency(
        "round trip (blocking: spin, yield, sleep)",
        blocking,
        "two atomics, same spin-yield-futex wait",
        spin_futex,
    ));

    let (sleeping, futex) = round_trips(
        RoundTrip::Channel(WaitMode::Blocking, Wait::SleepAtOnce),
        BaselineWait::Futex,
        counts.round_trips / 20,
    )?;
    figures.push(latency(
        "round trip (blocking, sleeping at once)",
        sleeping,
        "futex ping-pong, two atomics",
        futex,
    ));

    let small = stream(counts.small_messages, 64, false)?;
    let small_copy = memcpy_rate(64, counts.small_messages);
    figures.push(Figure {
        mechanism: "ipc-shm".into(),
        case: "stream".into(),
        payload_bytes: 64,
        metric: "throughput".into(),
        value: small.messages_per_second,
        unit: "msg/s".into(),
        baseline_name: "memcpy of 64 B messages, one process".into(),
        baseline_value: small_copy.messages_per_second,
    });

    let medium_count = counts.small_messages / 5;
    let medium = stream(medium_count, 1024, false)?;
    let medium_copy = memcpy_rate(1024, medium_count);
    figures.push(Figure {
        mechanism: "ipc-shm".into(),
        case: "stream".into(),
        payload_bytes: 1024,
        metric: "throughput".into(),
        value: medium.messages_per_second,
        unit: "msg/s".into(),
        baseline_name: "memcpy of 1 KiB messages, one process".into(),
        baseline_value: medium_copy.messages_per_second,
    });

    let big = stream(counts.big_messages, 65_536, true)?;
    let big_copy = memcpy_rate(65_536, counts.big_messages.max(2_000));
    figures.push(Figure {
        mechanism: "ipc-shm".into(),
        case: "stream".into(),
        payload_bytes: 65_536,
        metric: "throughput".into(),
        value: big.megabytes_per_second,
        unit: "MB/s".into(),
        baseline_name: "memcpy of 64 KiB buffers, one process".into(),
        baseline_value: big_copy.megabytes_per_second,
    });
    Ok(figures)
}

fn latency(case: &str, value: Duration, baseline_name: &str, baseline: Duration) -> Figure {
    Figure {
        mechanism: "ipc-shm".into(),
        case: case.into(),
        payload_bytes: 64,
        metric: "latency".into(),
        value: value.as_nanos() as f64,
        unit: "ns".into(),
        baseline_name: baseline_name.into(),
        baseline_value: baseline.as_nanos() as f64,
    }
}

/// What a round trip goes through.
#[derive(Clone, Copy)]
enum RoundTrip {
    /// ipc-shm channels in this wait mode.
    Channel(WaitMode, Wait),
    /// The raw two-atomics ping-pong.
    Baseline(BaselineWait),
}

/// How a blocking channel waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The default: spin, yield, then sleep.
    Default,
    /// No spins and no yielding: every wait sleeps on the futex, as the futex baseline does.
    SleepAtOnce,
}

/// How many turns of (baseline, channel) a round-trip figure takes.
const REPEATS: u32 = 5;

/// `rounds` round trips through `channel` and as many through `baseline`, in [`REPEATS`]
/// turns; the median batch of each.
fn round_trips(
    channel: RoundTrip,
    baseline: BaselineWait,
    rounds: u32,
) -> Result<(Duration, Duration)> {
    let per_turn = rounds / REPEATS + 1;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        theirs.extend(measure(RoundTrip::Baseline(baseline), per_turn)?);
        ours.extend(measure(channel, per_turn)?);
    }
    Ok((median(ours), median(theirs)))
}

fn measure(what: RoundTrip, rounds: u32) -> Result<Vec<Duration>> {
    match what {
        RoundTrip::Channel(mode, wait) => channel_round_trip(mode, wait, rounds),
        RoundTrip::Baseline(wait) => baseline_round_trip(wait, rounds),
    }
}

/// The raw baseline: this process pings, a peer pongs. The time per round trip of each
/// batch.
fn baseline_round_trip(wait: BaselineWait, rounds: u32) -> Result<Vec<Duration>> {
    let name = unique_name("bench-base");
    let wait_arg = match wait {
        BaselineWait::Spin => "spin",
        BaselineWait::Futex => "futex",
        BaselineWait::SpinThenFutex => "spin-futex",
    };
    let mut peer = Peer::spawn_role(
        "baseline-pong",
        "shm-baseline-pong",
        ["--name", &name, "--wait", wait_arg],
    )?;
    expect_ready(&mut peer)?;
    let pair = PingPong::open(&name)?;
    let batches = (|| {
        pair.ping(rounds / 10 + 1, wait)?; // warm-up
        let mut batches = Vec::with_capacity(BATCHES);
        for _ in 0..BATCHES {
            batches.push(pair.ping(rounds / BATCHES as u32 + 1, wait)?);
        }
        Ok::<_, anyhow::Error>(batches)
    })();
    pair.stop();
    peer.wait_success(WAIT)?;
    batches
}

/// Round trips are measured in batches and the median batch reported: on a shared machine
/// a batch that lost its core to another process says nothing about IPC.
const BATCHES: usize = 7;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// ipc-shm's round trip: this process sends a 64-byte byte string, postcard-encoded into
/// the ring, on `N.ab` and waits for the echo on `N.ba`; the `shm-pong` peer echoes the
/// record through the zero-copy path. The time per round trip of each batch.
fn channel_round_trip(mode: WaitMode, wait: Wait, rounds: u32) -> Result<Vec<Duration>> {
    let name = unique_name("bench-rt");
    let (spin, yield_for) = match wait {
        Wait::Default => {
            let defaults = ChannelConfig::new();
            (defaults.spin_iterations(), defaults.yield_duration())
        }
        Wait::SleepAtOnce => (0, Duration::ZERO),
    };
    let config = ChannelConfig::new()
        .with_capacity(64 * 1024)
        .with_wait_mode(mode)
        .with_spin_iterations(spin)
        .with_yield_duration(yield_for)
        .with_message_type(MessageType::named(BYTES_TYPE));
    let mut out = ShmSender::<[u8]>::create(&format!("{name}.ab"), &config)?;
    let polling = if mode == WaitMode::Polling { "1" } else { "0" };
    let (spin, yield_us) = (spin.to_string(), yield_for.as_micros().to_string());
    let args = [
        "--name",
        &name,
        "--polling",
        polling,
        "--spin",
        &spin,
        "--yield-us",
        &yield_us,
        "--capacity",
        "65536",
    ];
    let mut peer = Peer::spawn_role("pong", "shm-pong", args)?;
    expect_ready(&mut peer)?;
    let mut back = ShmReceiver::<Vec<u8>>::open(&format!("{name}.ba"), &config)?;
    let payload = [7u8; 64];
    let mut round_trips = |rounds: u32| -> Result<Duration> {
        let started = Instant::now();
        for _ in 0..rounds {
            out.send_as(&ByteString(&payload))?;
            let echo = back.recv_ref()?;
            // 64 bytes and a one-byte length prefix.
            if echo.len() != 65 {
                bail!("echo of {} bytes, expected 65", echo.len());
            }
        }
        Ok(started.elapsed() / rounds.max(1))
    };
    round_trips(rounds / 10 + 1)?; // warm-up
    let mut batches = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        batches.push(round_trips(rounds / BATCHES as u32 + 1)?);
    }
    drop(out);
    peer.wait_success(WAIT)?;
    Ok(batches)
}

/// A byte string that serialises with `serialize_bytes` (one copy) rather than as a sequence
/// of `u8` (one call per byte); the same postcard encoding as `[u8]`.
struct ByteString<'a>(&'a [u8]);

impl serde::Serialize for ByteString<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct Rate {
    messages_per_second: f64,
    megabytes_per_second: f64,
}

impl Rate {
    fn new(count: u64, bytes: u64, elapsed: Duration) -> Rate {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Rate {
            messages_per_second: count as f64 / seconds,
            megabytes_per_second: bytes as f64 / seconds / 1e6,
        }
    }
}

/// Streams `count` messages of `size` bytes from a `shm-source` to a `shm-sink` (both
/// peers, without per-byte checks); the sink times from its first message to the close.
/// `raw` uses the zero-copy byte path: the source copies each payload into its reserved
/// slot once, the sink reads it in place.
fn stream(count: u64, size: usize, raw: bool) -> Result<Rate> {
    let raw = if raw { "1" } else { "0" };
    let name = unique_name("bench-stream");
    let capacity = (size * 64).next_power_of_two().max(1 << 20).to_string();
    let (count_s, size_s) = (count.to_string(), size.to_string());
    let sink_args = [
        "--name",
        &name,
        "--create",
        "1",
        "--verify",
        "0",
        "--capacity",
        &capacity,
        "--raw",
        raw,
    ];
    let mut sink = Peer::spawn_role("sink", "shm-sink", sink_args)?;
    expect_ready(&mut sink)?;
    let source_args = [
        "--name", &name, "--count", &count_s, "--size", &size_s, "--fill", "0", "--raw", raw,
    ];
    let mut source = Peer::spawn_role("source", "shm-source", source_args)?;
    let outcome = sink.expect_prefixed("ok", WAIT)?;
    source.wait_success(WAIT)?;
    sink.wait_success(WAIT)?;
    let micros: u64 = outcome
        .split_whitespace()
        .find_map(|field| field.strip_prefix("micros="))
        .context("sink outcome without micros")?
        .parse()?;
    // The clock started at the first message: count the rest.
    let timed = count.saturating_sub(1).max(1);
    Ok(Rate::new(
        timed,
        timed * size as u64,
        Duration::from_micros(micros.max(1)),
    ))
}

/// Copies `count` messages of `size` bytes between two buffers in this process (cycling
/// through 4 MiB of destination, as a ring would).
fn memcpy_rate(size: usize, count: u64) -> Rate {
    let source = vec![0x5au8; size];
    let slots = (4 << 20) / size.max(1);
    let mut destination = vec![0u8; slots.max(1) * size];
    let started = Instant::now();
    for i in 0..count {
        let at = (i as usize % slots.max(1)) * size;
        destination[at..at + size].copy_from_slice(black_box(&source));
        black_box(&mut destination);
    }
    Rate::new(count, count * size as u64, started.elapsed())
}

fn expect_ready(peer: &mut Peer) -> Result<()> {
    let line = peer.expect_line(WAIT)?;
    if line != "ready" {
        bail!("peer `{}` said `{line}` instead of ready", peer.name());
    }
    Ok(())
}
