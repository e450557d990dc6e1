//! Peer roles for ipc-shm. Each role is named `shm-...`.
//!
//! - `shm-source --name N --count C --size S [--create 1] [--capacity B] [--polling 1]
//!   [--progress K] [--first F] [--wait-go 1]`: sends `Sample`s `F..F+C` of `S` bytes;
//!   prints `ready` once the channel exists (then, with `--wait-go`, waits for a line on
//!   stdin), `progress n` every K messages, and `ok count=.. bytes=..`.
//! - `shm-sink --name N [--create 1] [--capacity B] [--max-senders P] [--polling 1]
//!   [--progress K] [--producers P] [--tolerate-death 1]`: receives `Sample`s until the sender closes, checking order (per
//!   producer: the high 16 bits of `seq`) and every payload byte; prints `ok count=..
//!   bytes=.. checksum=0x.. micros=.. per_producer=n0,n1,..`. With `--tolerate-death 1` a
//!   `PeerDied` ends the stream like a close, after a `peer-died ..` line.
//! - `shm-tolerant-sink --name N --max-errors E`: receives and counts errors (a scribble
//!   target); prints `ok received=.. errors=..` after E errors or the sender's close.
//! - `shm-counter --name N --count K [--wait-go 1]`: increments the shared `u64` K times
//!   under the lock (with `--wait-go`, prints `ready` once attached and waits for a line on
//!   stdin first).
//! - `shm-hold-lock --name N`: takes the lock, prints `holding`, and sleeps until killed.
//! - `shm-create-and-hold --name N`: creates a channel, prints `ready`, sleeps until killed.
//! - `shm-hostile-creator --name N`: creates channel N but points its rendezvous at an
//!   unsealed copy of the memory; prints `ready`; on a stdin line shrinks the copy, exits.
//! - `shm-state-owner --name N`: creates the shared `u64` (0), prints `ready`, waits for a
//!   line on stdin, prints `ok value=..` and exits (removing the state).
//! - `shm-pong --name N [--polling 1]`: opens channel `N.ab` (bytes), creates `N.ba`, prints
//!   `ready` and echoes every record until the pinger closes; for benchmarks.
//! - `shm-baseline-pong --name N --wait spin|futex|spin-futex`: the raw two-atomics
//!   baseline's pong side.
//! - `shm-ring-sink --name N --size S --slots K --count C`: creates the raw SPSC ring
//!   baseline (K slots of S bytes), prints `ready`, copies C messages out and prints
//!   `ok count=.. micros=..` (from the first message to the last).
//! - `shm-ring-source --name N --count C`: opens the raw ring and copies C messages in.
//! - With the feature `iceoryx2-anchor`: `shm-iceoryx2-pong --name N` (echoes `[u8; 64]`
//!   samples from `N.ab` to `N.ba`) and `shm-iceoryx2-source --name N --count C`
//!   (publishes C samples on `N`, prints `sent`, exits at a line or EOF on stdin).
//!
//! For benchmarks, `shm-source --fill 0` sends the same payload every time and `shm-sink
//! --verify 0` only decodes, so that they measure the channel rather than the checks;
//! `--raw 1` on both uses the zero-copy byte path (`reserve`/`commit`, `recv_ref`) with
//! raw payloads instead of postcard `Sample`s; `--spin N` sets the spin iterations and
//! `--yield-us N` how long a blocking wait yields before it sleeps.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ipc_core::{Error, ErrorKind, MessageType};
use ipc_shm::baseline::{BaselineWait, PingPong, RawRing};
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender, ShmState, StateConfig, WaitMode};

use super::{Args, SAMPLE_TYPE, Sample};
use crate::{Checksum, fill_payload};

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    Some(match role {
        "shm-source" => source(args),
        "shm-sink" => sink(args),
        "shm-tolerant-sink" => tolerant_sink(args),
        "shm-counter" => counter(args),
        "shm-hold-lock" => hold_lock(args),
        "shm-create-and-hold" => create_and_hold(args),
        "shm-state-owner" => state_owner(args),
        "shm-hostile-creator" => hostile_creator(args),
        "shm-baseline-pong" => baseline_pong(args),
        "shm-pong" => pong(args),
        "shm-ring-sink" => ring_sink(args),
        "shm-ring-source" => ring_source(args),
        #[cfg(feature = "iceoryx2-anchor")]
        "shm-iceoryx2-pong" => crate::bench::shm::anchor::pong(&args.text("name", ""))
            .map(|answered| println!("ok count={answered}")),
        #[cfg(feature = "iceoryx2-anchor")]
        "shm-iceoryx2-source" => iceoryx2_source(args),
        _ => return None,
    })
}

/// The channel type of the sample roles: `Sample<'static>` named explicitly.
type SampleSender = ShmSender<Sample<'static>>;
type SampleReceiver = ShmReceiver<Sample<'static>>;

/// The message type of the ping-pong roles: a postcard byte sequence.
const BYTES_TYPE: &str = "ipc-tests.Bytes/1";

fn config(args: &Args) -> Result<ChannelConfig> {
    let capacity: usize = args.get("capacity", 256 * 1024)?;
    let max_senders: usize = args.get("max-senders", 1)?;
    let spin: u32 = args.get("spin", ChannelConfig::new().spin_iterations())?;
    let yield_us: u64 = args.get(
        "yield-us",
        ChannelConfig::new().yield_duration().as_micros() as u64,
    )?;
    let polling: u8 = args.get("polling", 0)?;
    let mode = if polling != 0 {
        WaitMode::Polling
    } else {
        WaitMode::Blocking
    };
    Ok(ChannelConfig::new()
        .with_capacity(capacity)
        .with_max_senders(max_senders)
        .with_spin_iterations(spin)
        .with_yield_duration(Duration::from_micros(yield_us))
        .with_wait_mode(mode)
        .with_message_type(MessageType::named(SAMPLE_TYPE)))
}

fn source(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let count: u64 = args.get("count", 1000)?;
    let size: usize = args.get("size", 64)?;
    let first: u64 = args.get("first", 0)?;
    let progress: u64 = args.get("progress", 0)?;
    let config = config(args)?;
    let mut sender = if args.get::<u8>("create", 0)? != 0 {
        SampleSender::create(&name, &config)?
    } else {
        SampleSender::open(&name, &config)?
    };
    println!("ready");
    if args.get::<u8>("wait-go", 0)? != 0 {
        // Wait for the test's go-ahead on stdin, so that every producer is attached first.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    let fill = args.get::<u8>("fill", 1)? != 0;
    let mut payload = vec![0u8; size];
    if args.get::<u8>("raw", 0)? != 0 {
        // The zero-copy byte path: write each payload straight into its slot in the ring.
        for seq in first..first + count {
            if fill {
                fill_payload(seq, &mut payload);
            }
            let mut slot = sender.reserve(size)?;
            slot.copy_from_slice(&payload);
            slot.commit();
        }
        println!("ok count={count} bytes={}", count * size as u64);
        return Ok(());
    }
    for seq in first..first + count {
        if fill {
            fill_payload(seq, &mut payload);
        }
        sender.send_as(&Sample {
            seq,
            payload: &payload,
        })?;
        let sent = seq - first + 1;
        if progress != 0 && sent.is_multiple_of(progress) {
            println!("progress {sent}");
        }
    }
    println!("ok count={count} bytes={}", count * size as u64);
    Ok(())
}

fn sink(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let progress: u64 = args.get("progress", 0)?;
    let producers: usize = args.get("producers", 1)?;
    let config = config(args)?;
    let mut receiver = if args.get::<u8>("create", 0)? != 0 {
        SampleReceiver::create(&name, &config)?
    } else {
        SampleReceiver::open(&name, &config)?
    };
    println!("ready");
    let mut checksum = Checksum::default();
    let mut expected = Vec::new();
    // Per producer: the next sequence number, in the low 48 bits.
    let mut next = vec![0u64; producers];
    let verify = args.get::<u8>("verify", 1)? != 0;
    let raw = args.get::<u8>("raw", 0)? != 0;
    let tolerate_death = args.get::<u8>("tolerate-death", 0)? != 0;
    let (mut count, mut bytes) = (0u64, 0u64);
    // The clock starts at the first message, so that the sender's start-up is not counted.
    let mut started = None;
    loop {
        let message = match receiver.recv_ref() {
            Ok(message) => message,
            Err(err) if err.kind() == ErrorKind::PeerClosed => break,
            Err(err) if err.kind() == ErrorKind::PeerDied && tolerate_death => {
                println!("peer-died {err}");
                break;
            }
            Err(err) => return Err(err.into()),
        };
        started.get_or_insert_with(Instant::now);
        if raw {
            // Read the bytes where they lie: the first and last of every record.
            let record: &[u8] = &message;
            std::hint::black_box((record.first(), record.last()));
            count += 1;
            bytes += record.len() as u64;
            continue;
        }
        let sample: Sample<'_> = message.decode()?;
        if !verify {
            count += 1;
            bytes += sample.payload.len() as u64;
            continue;
        }
        let producer = (sample.seq >> 48) as usize;
        let Some(slot) = next.get_mut(producer) else {
            bail!(Error::new(
                ErrorKind::Corrupted,
                format!("message {count} names producer {producer} of {producers}")
            ));
        };
        if sample.seq & 0xffff_ffff_ffff != *slot {
            bail!(Error::new(
                ErrorKind::Corrupted,
                format!(
                    "message {count} carries sequence number {:#x}, expected {:#x}",
                    sample.seq, *slot
                )
            ));
        }
        *slot += 1;
        super::check_payload(count, &sample, &mut expected)?;
        checksum.add(sample.seq, sample.payload);
        count += 1;
        bytes += sample.payload.len() as u64;
        if progress != 0 && count.is_multiple_of(progress) {
            println!("progress {count}");
        }
    }
    let per_producer: Vec<String> = next.iter().map(u64::to_string).collect();
    println!(
        "ok count={count} bytes={bytes} checksum={:#018x} micros={} per_producer={}",
        checksum.value(),
        started.map_or(0, |s| s.elapsed().as_micros()),
        per_producer.join(",")
    );
    Ok(())
}

fn tolerant_sink(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let max_errors: u64 = args.get("max-errors", 100)?;
    let config = config(args)?;
    let mut receiver = SampleReceiver::create(&name, &config)?;
    println!("ready");
    let (mut received, mut errors) = (0u64, 0u64);
    while errors < max_errors {
        let outcome = receiver
            .recv_ref_timeout(Duration::from_millis(50))
            .and_then(|message| message.decode::<Sample<'_>>().map(|s| s.payload.len()));
        match outcome {
            Ok(_) => {
                received += 1;
                if received == 1 {
                    println!("receiving");
                }
            }
            Err(err) if err.kind() == ErrorKind::PeerClosed => break,
            Err(_) => errors += 1,
        }
    }
    println!("ok received={received} errors={errors}");
    Ok(())
}

fn counter(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let count: u64 = args.get("count", 1000)?;
    let mut state = ShmState::<u64>::open(&name, &StateConfig::new())?;
    if args.get::<u8>("wait-go", 0)? != 0 {
        // Attached: wait for the test's go-ahead on stdin.
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    let mut recovered = 0;
    for _ in 0..count {
        let mut value = state.lock(Duration::from_secs(20))?;
        if value.recovered() {
            recovered += 1;
        }
        *value += 1;
    }
    println!("ok count={count} recovered={recovered}");
    Ok(())
}

fn hold_lock(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let mut state = ShmState::<u64>::open(&name, &StateConfig::new())?;
    let _held = state.lock(Duration::from_secs(20))?;
    println!("holding");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `shm-hostile-creator`: creates channel `N`, then points its rendezvous (the fd number at
/// offset 24, as the ipc-shm README documents) at a copy of the memory in a plain tmpfs
/// file that it can still shrink; prints `ready`, and on a line on stdin shrinks the copy to
/// 0 and exits.
fn hostile_creator(args: &Args) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let name = args.text("name", "");
    let _receiver = SampleReceiver::create(&name, &config(args)?)?;
    let memory = std::fs::read(ipc_shm::segment_memory_path(&name)?)?;
    let copy_path = format!("/dev/shm/ipc-tests-hostile-{}", std::process::id());
    let copy = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&copy_path)?;
    std::fs::remove_file(&copy_path)?;
    copy.write_all_at(&memory, 0)?;
    let fd = u32::try_from(copy.as_raw_fd())?;
    std::fs::File::options()
        .write(true)
        .open(ipc_shm::segment_path(&name))?
        .write_all_at(&fd.to_le_bytes(), 24)?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    copy.set_len(0)?;
    Ok(())
}

/// `shm-state-owner`: creates the shared `u64` (0), prints `ready`, waits for a line on
/// stdin, then prints `ok value=..` with the value read under the lock.
fn state_owner(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let mut state = ShmState::<u64>::create(&name, 0, &StateConfig::new())?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let value = state.load(Duration::from_secs(20))?;
    println!("ok value={value}");
    Ok(())
}

fn create_and_hold(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let _receiver = SampleReceiver::create(&name, &config(args)?)?;
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `shm-pong`: opens `N.ab`, creates `N.ba`, echoes every record until the ping closes.
fn pong(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let config = config(args)?.with_message_type(MessageType::named(BYTES_TYPE));
    let mut back = ShmSender::<[u8]>::create(&format!("{name}.ba"), &config)?;
    let mut input = open_retrying(|| ShmReceiver::<Vec<u8>>::open(&format!("{name}.ab"), &config))?;
    println!("ready");
    let mut count = 0u64;
    loop {
        let message = match input.recv_ref() {
            Ok(message) => message,
            Err(err) if err.is_peer_gone() => break,
            Err(err) => return Err(err.into()),
        };
        let mut slot = back.reserve(message.len())?;
        slot.copy_from_slice(&message);
        slot.commit();
        count += 1;
    }
    println!("ok count={count}");
    Ok(())
}

/// Opens with retries while the name does not exist yet (the peer creates it concurrently).
fn open_retrying<T>(mut open: impl FnMut() -> ipc_core::Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Ok(value) => return Ok(value),
            Err(err) if err.kind() == ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

fn baseline_pong(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let wait = match args.text("wait", "spin").as_str() {
        "spin" => BaselineWait::Spin,
        "futex" => BaselineWait::Futex,
        "spin-futex" => BaselineWait::SpinThenFutex,
        other => bail!("--wait {other}: expected spin, futex or spin-futex"),
    };
    let pair = PingPong::create(&name)?;
    println!("ready");
    let answered = pair.pong(wait)?;
    println!("ok count={answered}");
    Ok(())
}

fn ring_sink(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let size: usize = args.get("size", 64)?;
    let slots: usize = args.get("slots", 16 * 1024)?;
    let count: u64 = args.get("count", 1000)?;
    let ring = RawRing::create(&name, size, slots)?;
    println!("ready");
    let mut buffer = vec![0u8; size];
    let elapsed = ring.consume(&mut buffer, count)?;
    println!("ok count={count} micros={}", elapsed.as_micros());
    Ok(())
}

fn ring_source(args: &Args) -> Result<()> {
    let name = args.text("name", "");
    let count: u64 = args.get("count", 1000)?;
    let ring = RawRing::open(&name)?;
    let message = vec![0x5au8; ring.slot_len()];
    ring.produce(&message, count)?;
    println!("ok count={count}");
    Ok(())
}

#[cfg(feature = "iceoryx2-anchor")]
fn iceoryx2_source(args: &Args) -> Result<()> {
    crate::bench::shm::anchor::source(&args.text("name", ""), args.get("count", 1000)?)
}
