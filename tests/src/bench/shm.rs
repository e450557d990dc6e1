//! Cross-process benchmarks of ipc-shm, with their raw baselines measured in the same run:
//!
//! | figure | baseline |
//! |---|---|
//! | round trip of 64 B, polling | spin ping-pong on two atomics in shared memory |
//! | round trip of 64 B, blocking (the default wait: spin, yield, then sleep) | ping-pong on two atomics with the same wait: 100 polls, 50 µs of yielding, then a futex |
//! | round trip of 64 B, blocking set to sleep at once (no spins, no yield) | futex ping-pong on two atomics, sleeping at once |
//! | stream of 64 B and 1 KiB messages (msg/s), typed | raw SPSC ring of fixed slots between two processes (copy in, copy out, `head` and `tail` on their own lines) |
//! | stream of 64 KiB messages (MB/s), zero-copy byte path | the same raw ring, 64 KiB slots |
//! | anchor (feature `iceoryx2-anchor`): iceoryx2 round trip, `[u8; 64]`, busy poll | spin ping-pong on two atomics |
//! | anchor (feature `iceoryx2-anchor`): iceoryx2 stream of `[u8; 64]`, busy poll | raw SPSC ring of 64-byte slots |
//!
//! This process is one side of every round trip; the other is an `ipc-peer` role. Streams
//! run between two peers (the iceoryx2 stream: a peer and this process). A figure and its
//! baseline run in turns (five of each for round trips, three for streams, neither pinned
//! to a core), so that both see the same load on a shared machine. The iceoryx2 rows are
//! anchors: their ratio to the same baseline is what ipc-shm's ratio is compared with.

#[cfg(feature = "iceoryx2-anchor")]
use std::io::Write;
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

    #[cfg(feature = "iceoryx2-anchor")]
    {
        let (iceoryx2, spin) = anchor_round_trips(counts.round_trips)?;
        figures.push(Figure {
            mechanism: "iceoryx2".into(),
            ..latency(
                "round trip (anchor: publish/subscribe [u8; 64], busy poll)",
                iceoryx2,
                "spin ping-pong, two atomics",
                spin,
            )
        });
    }

    let (small, small_ring) = streams(counts.small_messages, 64, false)?;
    figures.push(stream_figure(
        "ipc-shm",
        "stream",
        64,
        &small,
        &small_ring,
        false,
    ));

    let medium_count = counts.small_messages / 5;
    let (medium, medium_ring) = streams(medium_count, 1024, false)?;
    figures.push(stream_figure(
        "ipc-shm",
        "stream",
        1024,
        &medium,
        &medium_ring,
        false,
    ));

    let (big, big_ring) = streams(counts.big_messages, 65_536, true)?;
    figures.push(stream_figure(
        "ipc-shm", "stream", 65_536, &big, &big_ring, true,
    ));

    #[cfg(feature = "iceoryx2-anchor")]
    {
        let (iceoryx2, ring) = anchor_streams(counts.small_messages)?;
        figures.push(stream_figure(
            "iceoryx2",
            "stream (anchor: publish/subscribe [u8; 64], busy poll)",
            64,
            &iceoryx2,
            &ring,
            false,
        ));
    }
    Ok(figures)
}

/// A stream figure beside the raw ring of the same run: msg/s, or MB/s for `bytes`.
fn stream_figure(
    mechanism: &str,
    case: &str,
    size: usize,
    ours: &Rate,
    ring: &Rate,
    bytes: bool,
) -> Figure {
    let size_name = match size {
        65_536 => "64 KiB".to_owned(),
        1024 => "1 KiB".to_owned(),
        other => format!("{other} B"),
    };
    let (value, baseline_value, unit) = if bytes {
        (ours.megabytes_per_second, ring.megabytes_per_second, "MB/s")
    } else {
        (ours.messages_per_second, ring.messages_per_second, "msg/s")
    };
    Figure {
        mechanism: mechanism.into(),
        case: case.into(),
        payload_bytes: size as u64,
        metric: "throughput".into(),
        value,
        unit: unit.into(),
        baseline_name: format!(
            "raw SPSC ring of {size_name} slots, two processes (copy in, copy out)"
        ),
        baseline_value,
    }
}

/// How many turns of (raw ring, channel) a stream figure takes.
const STREAM_TURNS: u64 = 3;

/// `count` messages of `size` bytes through ipc-shm and as many through the raw ring, in
/// [`STREAM_TURNS`] alternating turns; the median turn of each.
fn streams(count: u64, size: usize, raw: bool) -> Result<(Rate, Rate)> {
    let per_turn = count / STREAM_TURNS + 1;
    let (mut ours, mut ring) = (Vec::new(), Vec::new());
    for _ in 0..STREAM_TURNS {
        ring.push(ring_stream(per_turn, size)?);
        ours.push(stream(per_turn, size, raw)?);
    }
    Ok((median_rate(ours), median_rate(ring)))
}

fn median_rate(mut rates: Vec<Rate>) -> Rate {
    rates.sort_by(|a, b| a.messages_per_second.total_cmp(&b.messages_per_second));
    let middle = rates.len() / 2;
    rates.swap_remove(middle)
}

/// The raw ring: a `shm-ring-source` copies `count` messages of `size` bytes into fixed
/// slots, a `shm-ring-sink` copies them out, timing from its first message to its last.
/// The ring has as many bytes as the channel's ring of the same figure.
fn ring_stream(count: u64, size: usize) -> Result<Rate> {
    let name = unique_name("bench-ring");
    let slots = (stream_capacity(size) / size).to_string();
    let (count_s, size_s) = (count.to_string(), size.to_string());
    let sink_args = [
        "--name", &name, "--size", &size_s, "--slots", &slots, "--count", &count_s,
    ];
    let mut sink = Peer::spawn_role("ring-sink", "shm-ring-sink", sink_args)?;
    expect_ready(&mut sink)?;
    let source_args = ["--name", &name, "--count", &count_s];
    let mut source = Peer::spawn_role("ring-source", "shm-ring-source", source_args)?;
    let outcome = sink.expect_prefixed("ok", WAIT)?;
    source.wait_success(WAIT)?;
    sink.wait_success(WAIT)?;
    let micros: u64 = outcome
        .split_whitespace()
        .find_map(|field| field.strip_prefix("micros="))
        .context("ring sink outcome without micros")?
        .parse()?;
    let timed = count.saturating_sub(1).max(1);
    Ok(Rate::new(
        timed,
        timed * size as u64,
        Duration::from_micros(micros.max(1)),
    ))
}

/// The ring size of the stream figures, for the channel and the raw ring alike.
fn stream_capacity(size: usize) -> usize {
    (size * 64).next_power_of_two().max(1 << 20)
}

/// iceoryx2's round trip, alternated with the spin ping-pong as the channel's is.
#[cfg(feature = "iceoryx2-anchor")]
fn anchor_round_trips(rounds: u32) -> Result<(Duration, Duration)> {
    let per_turn = rounds / REPEATS + 1;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        theirs.extend(baseline_round_trip(BaselineWait::Spin, per_turn)?);
        let name = unique_name("bench-ix-rt");
        let mut peer = Peer::spawn_role("iceoryx2-pong", "shm-iceoryx2-pong", ["--name", &name])?;
        expect_ready(&mut peer)?;
        ours.extend(anchor::ping(&name, BATCHES, per_turn / BATCHES as u32 + 1)?);
        peer.wait_success(WAIT)?;
    }
    Ok((median(ours), median(theirs)))
}

/// iceoryx2's 64-byte stream, alternated with the raw ring of 64-byte slots.
#[cfg(feature = "iceoryx2-anchor")]
fn anchor_streams(count: u64) -> Result<(Rate, Rate)> {
    let per_turn = count / STREAM_TURNS + 1;
    let (mut ours, mut ring) = (Vec::new(), Vec::new());
    for _ in 0..STREAM_TURNS {
        ring.push(ring_stream(per_turn, 64)?);
        let name = unique_name("bench-ix-stream");
        let count_s = per_turn.to_string();
        let source = std::cell::RefCell::new(None);
        let elapsed = anchor::sink(
            &name,
            per_turn,
            || {
                let mut command = Peer::role_command(
                    "shm-iceoryx2-source",
                    ["--name", &name, "--count", &count_s],
                )?;
                command.stdin(std::process::Stdio::piped());
                let mut peer = Peer::spawn("iceoryx2-source", command)?;
                expect_ready(&mut peer)?;
                *source.borrow_mut() = Some(peer);
                Ok(())
            },
            || {
                let mut source = source.borrow_mut();
                let stdin = source
                    .as_mut()
                    .and_then(Peer::stdin)
                    .context("iceoryx2 source without stdin")?;
                writeln!(stdin, "go")?;
                stdin.flush()?;
                Ok(())
            },
        )?;
        if let Some(mut peer) = source.into_inner() {
            peer.expect_prefixed("sent", WAIT)?;
            peer.close_stdin();
            peer.wait_success(WAIT)?;
        }
        let timed = per_turn.saturating_sub(1).max(1);
        ours.push(Rate::new(timed, timed * 64, elapsed));
    }
    Ok((median_rate(ours), median_rate(ring)))
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
    let capacity = stream_capacity(size).to_string();
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

fn expect_ready(peer: &mut Peer) -> Result<()> {
    let line = peer.expect_line(WAIT)?;
    if line != "ready" {
        bail!("peer `{}` said `{line}` instead of ready", peer.name());
    }
    Ok(())
}

/// The iceoryx2 anchor (feature `iceoryx2-anchor`): publish/subscribe of `[u8; 64]` over
/// iceoryx2's IPC services, both ends busy-polling `receive`, as in iceoryx2's own
/// benchmark. Both sides of each pair call these functions: this process and an `ipc-peer`
/// role.
#[cfg(feature = "iceoryx2-anchor")]
pub mod anchor {
    use std::time::{Duration, Instant};

    use anyhow::{Result, anyhow, bail};
    use iceoryx2::port::publisher::Publisher;
    use iceoryx2::port::subscriber::Subscriber;
    use iceoryx2::prelude::*;
    use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

    /// The payload: 64 bytes, like the ipc-shm figures.
    pub type Payload = [u8; 64];
    type Port = PortFactory<ipc::Service, Payload, ()>;

    /// A busy wait longer than this means the other side is gone.
    const GIVE_UP: Duration = Duration::from_secs(30);
    /// Room in the subscriber's queue for the stream (the round trip needs one).
    const STREAM_BUFFER: usize = 4096;
    /// The first byte of the sample that tells the pong side to finish.
    const STOP: u8 = 0xff;

    fn node() -> Result<Node<ipc::Service>> {
        // Without a config file iceoryx2 warns on every start; its defaults are what we want.
        set_log_level(LogLevel::Error);
        NodeBuilder::new()
            .create::<ipc::Service>()
            .map_err(|err| anyhow!("iceoryx2 node: {err:?}"))
    }

    fn service(node: &Node<ipc::Service>, name: &str, stream: bool) -> Result<Port> {
        let service_name =
            ServiceName::new(name).map_err(|err| anyhow!("iceoryx2 name {name}: {err:?}"))?;
        let builder = node
            .service_builder(&service_name)
            .publish_subscribe::<Payload>()
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0);
        let builder = if stream {
            // Nothing may be lost: the publisher waits for room instead of overwriting.
            builder
                .subscriber_max_buffer_size(STREAM_BUFFER)
                .enable_safe_overflow(false)
        } else {
            builder
                .subscriber_max_buffer_size(1)
                .enable_safe_overflow(true)
        };
        builder
            .open_or_create()
            .map_err(|err| anyhow!("iceoryx2 service {name}: {err:?}"))
    }

    fn publisher(port: &Port) -> Result<Publisher<ipc::Service, Payload, ()>> {
        port.publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(|err| anyhow!("iceoryx2 publisher: {err:?}"))
    }

    fn subscriber(port: &Port, stream: bool) -> Result<Subscriber<ipc::Service, Payload, ()>> {
        let builder = port.subscriber_builder();
        let builder = if stream {
            builder.buffer_size(STREAM_BUFFER)
        } else {
            builder
        };
        builder
            .create()
            .map_err(|err| anyhow!("iceoryx2 subscriber: {err:?}"))
    }

    fn send(publisher: &Publisher<ipc::Service, Payload, ()>, payload: Payload) -> Result<()> {
        let sample = publisher
            .loan_uninit()
            .map_err(|err| anyhow!("iceoryx2 loan: {err:?}"))?;
        sample
            .write_payload(payload)
            .send()
            .map_err(|err| anyhow!("iceoryx2 send: {err:?}"))?;
        Ok(())
    }

    /// Busy-polls `subscriber` for the next sample.
    fn receive(subscriber: &Subscriber<ipc::Service, Payload, ()>) -> Result<Payload> {
        let mut spins = 0u32;
        let mut since = None;
        loop {
            let received = subscriber
                .receive()
                .map_err(|err| anyhow!("iceoryx2 receive: {err:?}"))?;
            if let Some(sample) = received {
                return Ok(*sample.payload());
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 16)
                && since.get_or_insert_with(Instant::now).elapsed() > GIVE_UP
            {
                bail!("iceoryx2 peer silent for {} s", GIVE_UP.as_secs());
            }
        }
    }

    /// The pong side of the round trip (`shm-iceoryx2-pong`): subscribes to `N.ab`,
    /// publishes on `N.ba`, prints `ready`, and echoes every sample until the stop sample.
    pub fn pong(name: &str) -> Result<u64> {
        let node = node()?;
        let ab = service(&node, &format!("{name}.ab"), false)?;
        let ba = service(&node, &format!("{name}.ba"), false)?;
        let input = subscriber(&ab, false)?;
        let back = publisher(&ba)?;
        println!("ready");
        let mut answered = 0;
        loop {
            let payload = receive(&input)?;
            if payload[0] == STOP {
                return Ok(answered);
            }
            send(&back, payload)?;
            answered += 1;
        }
    }

    /// The ping side: opens the pong's services and measures batches of `per_batch` round
    /// trips after a warm-up; tells the pong to stop. The time per round trip of each batch.
    pub fn ping(name: &str, batches: usize, per_batch: u32) -> Result<Vec<Duration>> {
        let node = node()?;
        let ab = service(&node, &format!("{name}.ab"), false)?;
        let ba = service(&node, &format!("{name}.ba"), false)?;
        let output = publisher(&ab)?;
        let echo = subscriber(&ba, false)?;
        let payload = [0x5a; 64];
        let round = || -> Result<()> {
            send(&output, payload)?;
            std::hint::black_box(receive(&echo)?);
            Ok(())
        };
        for _ in 0..per_batch / 10 + 1 {
            round()?;
        }
        let mut times = Vec::with_capacity(batches);
        for _ in 0..batches {
            let started = Instant::now();
            for _ in 0..per_batch {
                round()?;
            }
            times.push(started.elapsed() / per_batch.max(1));
        }
        let mut stop = payload;
        stop[0] = STOP;
        send(&output, stop)?;
        Ok(times)
    }

    /// The source of the stream (`shm-iceoryx2-source`): creates its publisher on `N`,
    /// prints `ready`, waits for a line on stdin (the sink has connected to it by then:
    /// samples sent before a subscriber connected can miss it), publishes `count` samples,
    /// waiting for room, prints `sent`, then keeps its publisher until stdin closes or sends
    /// a line, so that the sink reads every sample first.
    pub fn source(name: &str, count: u64) -> Result<()> {
        let node = node()?;
        let port = service(&node, name, true)?;
        let output = publisher(&port)?;
        println!("ready");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go)?;
        let payload = [0x5a; 64];
        for _ in 0..count {
            send(&output, payload)?;
        }
        println!("sent");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(())
    }

    /// The sink of the stream, in this process: subscribes to `N`, has the source started
    /// (`start`, which returns once its publisher exists), connects to it, tells it to go
    /// (`go`), and receives `count` samples; the time from the first to the last.
    pub fn sink(
        name: &str,
        count: u64,
        start: impl FnOnce() -> Result<()>,
        go: impl FnOnce() -> Result<()>,
    ) -> Result<Duration> {
        let node = node()?;
        let port = service(&node, name, true)?;
        let input = subscriber(&port, true)?;
        start()?;
        // Looking for samples connects the subscriber to the publishers that exist now.
        input
            .has_samples()
            .map_err(|err| anyhow!("iceoryx2 connect: {err:?}"))?;
        go()?;
        std::hint::black_box(receive(&input)?);
        let started = Instant::now();
        for _ in 1..count {
            std::hint::black_box(receive(&input)?);
        }
        Ok(started.elapsed())
    }
}
