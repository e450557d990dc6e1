//! Peer roles for ipc-queue. Each role is named `queue-...` and takes the queue's address
//! (`--address`: a directory, or `amqp://...#queue`): the same programs on either backend.
//!
//! - `queue-produce --address A [--create 1] [--segment-len BYTES] --producer ID
//!   --incarnation I [--count N] [--batch B] [--size BYTES] [--durability always|never|MS]
//!   [--abort-in-sync K] [--window W] [--wait-go 1]`:
//!   sends `QueueJob`s (with `--abort-in-sync K` the process exits at once as the leader of its
//!   `K`-th sync, holding the sync lock; with `--wait-go 1` it prints `ready` once its producer
//!   is open and waits for a line on stdin, so that a bench starts every producer at once)
//!   (creating the queue if asked and needed, with the default configuration or segments of
//!   `BYTES`), printing
//!   `sent ID I N SEQ` after each receipt; ends with `ok sent=N micros=..`. With
//!   `--window W` it sends one message at a time with the async `send_pipelined`, at most
//!   `W` unconfirmed (`--batch` is then unused), and prints the receipts as they come.
//! - `queue-consume --address A [--expect N] [--idle-exit-ms MS] [--quiet 1] [--hold 1]
//!   [--losses 1] [--ack-batch K]`: receives (with K > 1, K deliveries at a time with
//!   `recv_batch`, acknowledged together with `ack_batch`), (with `--hold 1`: one message, then keeps its lease until
//!   killed; with `--losses 1` a `Corrupted` report of lost messages, from the open or a
//!   receive, is printed as `loss TEXT` and receiving goes on, instead of failing), checks
//!   every payload byte, prints `got ID I N SEQ DELIVERIES` before acknowledging and
//!   `acked SEQ DELIVERIES` after (`corrupt SEQ` and a failure for a payload that is not
//!   what was sent); ends with `ok received=N duplicates=D checksum=0x..
//!   micros=..` after `N` distinct messages (a message delivered again is acknowledged and
//!   counted in `D`), or once the queue has been empty for `MS` ms.
//! - `queue-echo --in P --out Q --count N [--durability ..]`: receives `Vec<u8>` messages
//!   from queue P and sends each to queue Q before acknowledging it; prints `ready` once
//!   both are open and `ok echoed=N` at the end.
//! - `queue-stats --address A`: prints the queue's stats as `ok depth=.. unacked=.. ...`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::ErrorKind;
use ipc_queue::{Address, Durability, ProducerOptions, Queue, QueueConfig};
use serde::{Deserialize, Serialize};

use super::Args;
use crate::{Checksum, fill_payload};

/// The message of the queue roles.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueJob {
    /// Which producer sent it.
    pub(crate) producer: u32,
    /// Which run of that producer (a restarted producer counts up).
    pub(crate) incarnation: u32,
    /// Position in that run's stream, from 0.
    pub(crate) n: u64,
    /// `fill_payload(job_seed(..))` bytes. `serde_bytes` makes postcard copy them in one go
    /// (a plain `Vec<u8>` is a sequence, encoded byte by byte); the encoding is the same.
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
}

/// The payload seed of a job, so a consumer can check every byte.
pub(crate) fn job_seed(producer: u32, incarnation: u32, n: u64) -> u64 {
    (u64::from(producer) << 48) ^ (u64::from(incarnation) << 32) ^ n
}

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    match role {
        "queue-produce" => Some(produce(args)),
        "queue-consume" => Some(consume(args)),
        "queue-stats" => Some(stats(args)),
        "queue-echo" => Some(echo(args)),
        _ => None,
    }
}

/// The queue: a directory or `amqp://...#queue`; these roles run unchanged on either.
fn address(args: &Args) -> Result<Address> {
    let address = args.text("address", "");
    if address.is_empty() {
        bail!("--address is required");
    }
    Ok(Address::from(address))
}

fn durability(text: &str) -> Result<Durability> {
    Ok(match text {
        "always" => Durability::Always,
        "never" => Durability::Never,
        ms => Durability::Interval(Duration::from_millis(
            ms.parse().with_context(|| format!("--durability {ms}"))?,
        )),
    })
}

fn produce(args: &Args) -> Result<()> {
    let create: u8 = args.get("create", 0)?;
    let segment_len: u64 = args.get("segment-len", 0)?;
    let mut config = QueueConfig::new();
    if segment_len != 0 {
        config = config.with_segment_len(segment_len);
    }
    let queue = if create != 0 {
        Queue::open_or_create(address(args)?, &config)?
    } else {
        Queue::open(address(args)?)?
    };
    let producer_id: u32 = args.get("producer", 0)?;
    let incarnation: u32 = args.get("incarnation", 0)?;
    let count: u64 = args.get("count", u64::MAX)?;
    let batch: u64 = args.get("batch", 1)?;
    let size: usize = args.get("size", 16)?;
    let quiet: u8 = args.get("quiet", 0)?;
    let abort_in_sync: u64 = args.get("abort-in-sync", 0)?;
    let mut options =
        ProducerOptions::new().with_durability(durability(&args.text("durability", "always"))?);
    if abort_in_sync != 0 {
        options = options.with_abort_in_sync_after(abort_in_sync);
    }
    let window: u32 = args.get("window", 0)?;
    if window != 0 {
        return produce_pipelined(queue.address().clone(), options.with_window(window), args);
    }
    let mut producer = queue.producer::<QueueJob>(options)?;
    wait_go(args)?;
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut jobs = Vec::new();
    let mut n = 0;
    while n < count {
        jobs.clear();
        let end = n.saturating_add(batch.max(1)).min(count);
        for k in n..end {
            let mut payload = vec![0u8; size];
            fill_payload(job_seed(producer_id, incarnation, k), &mut payload);
            jobs.push(QueueJob {
                producer: producer_id,
                incarnation,
                n: k,
                payload,
            });
        }
        let receipts = producer.send_batch(&jobs)?;
        if quiet == 0 {
            for (job, receipt) in jobs.iter().zip(&receipts) {
                writeln!(
                    out,
                    "sent {producer_id} {incarnation} {} {}",
                    job.n,
                    receipt.seq()
                )?;
            }
            out.flush()?;
        }
        n = end;
    }
    producer.flush()?;
    writeln!(out, "ok sent={n} micros={}", started.elapsed().as_micros())?;
    Ok(())
}

/// `queue-produce --window W`: one async producer sending one message at a time with
/// `send_pipelined`, at most `W` unconfirmed; prints `sent ...` as each receipt comes.
fn produce_pipelined(address: Address, options: ProducerOptions, args: &Args) -> Result<()> {
    let producer_id: u32 = args.get("producer", 0)?;
    let incarnation: u32 = args.get("incarnation", 0)?;
    let count: u64 = args.get("count", u64::MAX)?;
    let size: usize = args.get("size", 16)?;
    let quiet = args.get::<u8>("quiet", 0)? != 0;
    let producer_window = options.window();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build a runtime")?;
    runtime.block_on(async move {
        let queue = ipc_queue::AsyncQueue::open(address).await?;
        let mut producer = queue.producer::<QueueJob>(options).await?;
        wait_go(args)?;
        let window = producer_window as usize;
        let mut out = std::io::stdout().lock();
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::with_capacity(window);
        for n in 0..count {
            let mut payload = vec![0u8; size];
            fill_payload(job_seed(producer_id, incarnation, n), &mut payload);
            let job = QueueJob {
                producer: producer_id,
                incarnation,
                n,
                payload,
            };
            pending.push_back((n, producer.send_pipelined(&job).await?));
            // A full window: the oldest receipt is the next to come.
            if pending.len() >= window
                && let Some((n, receipt)) = pending.pop_front()
            {
                let receipt = receipt.await?;
                if !quiet {
                    writeln!(
                        out,
                        "sent {producer_id} {incarnation} {n} {}",
                        receipt.seq()
                    )?;
                }
            }
        }
        while let Some((n, receipt)) = pending.pop_front() {
            let receipt = receipt.await?;
            if !quiet {
                writeln!(
                    out,
                    "sent {producer_id} {incarnation} {n} {}",
                    receipt.seq()
                )?;
            }
        }
        out.flush()?;
        drop(out);
        producer.flush().await?;
        writeln!(
            std::io::stdout(),
            "ok sent={count} micros={}",
            started.elapsed().as_micros()
        )?;
        Ok(())
    })
}

/// With `--wait-go 1`: prints `ready` and waits for a line on stdin (the go-ahead).
fn wait_go(args: &Args) -> Result<()> {
    if args.get::<u8>("wait-go", 0)? != 0 {
        println!("ready");
        std::io::stdin().read_line(&mut String::new())?;
    }
    Ok(())
}

/// Acknowledges `unacked` (one `ack`, or one `ack_batch` for several), printing `acked`
/// lines if `loud`.
fn settle(
    consumer: &mut ipc_queue::Consumer<QueueJob>,
    unacked: &mut Vec<ipc_queue::Delivery<QueueJob>>,
    loud: bool,
    out: &mut impl Write,
) -> Result<()> {
    match unacked.as_slice() {
        [] => return Ok(()),
        [one] => consumer.ack(one)?,
        many => consumer.ack_batch(&many.iter().collect::<Vec<_>>())?,
    }
    if loud {
        for delivery in unacked.iter() {
            writeln!(out, "acked {} {}", delivery.seq(), delivery.deliveries())?;
        }
        out.flush()?;
    }
    unacked.clear();
    Ok(())
}

fn consume(args: &Args) -> Result<()> {
    let queue = Queue::open(address(args)?)?;
    let expect: u64 = args.get("expect", u64::MAX)?;
    let idle_exit_ms: u64 = args.get("idle-exit-ms", 0)?;
    let quiet: u8 = args.get("quiet", 0)?;
    let hold: u8 = args.get("hold", 0)?;
    let report_losses = args.get::<u8>("losses", 0)? != 0;
    let ack_batch = args.get::<usize>("ack-batch", 1)?.max(1);
    let mut unacked = Vec::with_capacity(ack_batch);
    let mut ready = std::collections::VecDeque::with_capacity(ack_batch);
    let mut out = std::io::stdout().lock();
    // A loss found when the consumer opens (the segment holding its floor is gone) is
    // reported by that open, once; the next open goes on after it.
    let mut consumer = match queue.consumer::<QueueJob>() {
        Err(err) if err.kind() == ErrorKind::Corrupted && report_losses => {
            writeln!(out, "loss {err}")?;
            out.flush()?;
            queue.consumer::<QueueJob>()?
        }
        opened => opened?,
    };
    let mut checksum = Checksum::default();
    let mut expected = Vec::new();
    let mut received = 0u64;
    // Delivery is at least once: a message delivered again (after a lost connection, say)
    // is acknowledged again but counted once.
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0u64;
    let mut started = None;
    while received < expect {
        let wait = if idle_exit_ms == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(idle_exit_ms)
        };
        // With `--ack-batch K`, K deliveries are received at a time too (`recv_batch`).
        let fetched = if let Some(delivery) = ready.pop_front() {
            Ok(delivery)
        } else if ack_batch > 1 {
            consumer
                .recv_batch(ack_batch, wait)
                .map(|batch| {
                    ready.extend(batch);
                    ready.pop_front()
                })
                .and_then(|first| {
                    first.ok_or_else(|| ipc_core::Error::new(ErrorKind::Other, "an empty batch"))
                })
        } else {
            consumer.recv_timeout(wait)
        };
        let delivery = match fetched {
            Ok(delivery) => delivery,
            Err(err) if err.kind() == ErrorKind::Timeout && idle_exit_ms != 0 => {
                settle(&mut consumer, &mut unacked, quiet == 0, &mut out)?;
                if queue.stats()?.depth == 0 {
                    break;
                }
                continue;
            }
            Err(err) if err.kind() == ErrorKind::Corrupted && report_losses => {
                writeln!(out, "loss {err}")?;
                out.flush()?;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        started.get_or_insert_with(Instant::now);
        let job = delivery.message();
        expected.resize(job.payload.len(), 0);
        fill_payload(
            job_seed(job.producer, job.incarnation, job.n),
            &mut expected,
        );
        if job.payload != expected {
            // Said on stdout too, so that a test reading the lines counts it.
            writeln!(out, "corrupt {}", delivery.seq())?;
            out.flush()?;
            bail!(ipc_core::Error::new(
                ErrorKind::Corrupted,
                format!(
                    "payload of message {} differs from what was sent",
                    delivery.seq()
                )
            ));
        }
        if quiet == 0 {
            writeln!(
                out,
                "got {} {} {} {} {}",
                job.producer,
                job.incarnation,
                job.n,
                delivery.seq(),
                delivery.deliveries()
            )?;
            out.flush()?;
        }
        let first = seen.insert((job.producer, job.incarnation, job.n));
        if first {
            checksum.add(job_seed(job.producer, job.incarnation, job.n), &job.payload);
        }
        if hold != 0 {
            // Keep the lease and never settle it: the test kills this process.
            loop {
                std::thread::park();
            }
        }
        if first {
            received += 1;
        } else {
            duplicates += 1;
        }
        unacked.push(delivery);
        // With `--ack-batch K`, K deliveries (or what is left at the end) are acknowledged
        // together; a message that then comes again was not acknowledged.
        if unacked.len() >= ack_batch || received >= expect {
            settle(&mut consumer, &mut unacked, quiet == 0, &mut out)?;
        }
    }
    settle(&mut consumer, &mut unacked, quiet == 0, &mut out)?;
    let micros = started.map_or(0, |s| s.elapsed().as_micros());
    writeln!(
        out,
        "ok received={received} duplicates={duplicates} checksum={:#018x} micros={micros}",
        checksum.value()
    )?;
    Ok(())
}

fn echo(args: &Args) -> Result<()> {
    let input = Queue::open(args.text("in", ""))?;
    let output = Queue::open(args.text("out", ""))?;
    let count: u64 = args.get("count", u64::MAX)?;
    let options =
        ProducerOptions::new().with_durability(durability(&args.text("durability", "always"))?);
    let mut consumer = input.consumer::<Vec<u8>>()?;
    let mut producer = output.producer::<Vec<u8>>(options)?;
    println!("ready");
    let mut echoed = 0;
    while echoed < count {
        let delivery = consumer.recv()?;
        producer.send(delivery.message())?;
        consumer.ack(&delivery)?;
        echoed += 1;
    }
    println!("ok echoed={echoed}");
    Ok(())
}

fn stats(args: &Args) -> Result<()> {
    let queue = Queue::open(address(args)?)?;
    let stats = queue.stats()?;
    // What the backend cannot count shows as `-`.
    let show = |value: Option<u64>| value.map_or("-".to_owned(), |v| v.to_string());
    let storage = stats.storage.as_ref();
    println!(
        "ok depth={} unacked={} delayed={} dead_letters={} oldest_age_ms={} next_seq={} lost={} quarantined_files={} segments={} bytes={}",
        stats.depth,
        show(stats.unacked),
        show(stats.delayed),
        stats.dead_letters,
        stats.oldest_age.map_or(0, |age| age.as_millis()),
        show(storage.map(|s| s.next_seq)),
        show(storage.map(|s| s.lost)),
        show(storage.map(|s| s.quarantined_files)),
        show(storage.map(|s| s.segments)),
        show(storage.map(|s| s.bytes)),
    );
    Ok(())
}
