//! Peer roles for ipc-queue's RabbitMQ backend. Each role is named `amqp-...` and takes
//! `--url URL --queue NAME`.
//!
//! - `amqp-produce [--create 1] [--count N] [--size BYTES] [--batch B] [--progress-every P]`:
//!   sends `AmqpItem`s 0..N (creating the queue if asked), in batches of `B` (pipelined
//!   confirms), printing `ready` once connected and `progress I` after every `P` confirmed
//!   messages; ends with `ok sent=N reconnections=R micros=..`.
//! - `amqp-consume --count N [--idle-exit-ms MS] [--drain 1] [--print 1]`: receives until it
//!   has seen all of 0..N (duplicates allowed), checking every payload byte, and
//!   acknowledges each; prints `ready` once consuming (with `--print 1` also `got I
//!   DELIVERIES` before and `acked I` after each acknowledgement); ends with
//!   `ok distinct=N deliveries=D ack_errors=E micros=..`, or fails if the queue stays
//!   empty for `MS` ms before then (with `--drain 1` that ends it successfully instead).
//! - `amqp-echo --in Q --out R --count N`: receives `Vec<u8>` messages from Q and sends each
//!   to R before acknowledging it; prints `ready` once both are open, `ok echoed=N` at the end.
//! - `amqp-raw-consume --count N` and `amqp-raw-echo --in Q --out R --count N`: the same
//!   work through raw lapin, the baselines of the benchmarks.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::ErrorKind;
use ipc_queue::{Address, ProducerOptions, Queue, QueueConfig};
use serde::{Deserialize, Serialize};

use super::Args;
use crate::fill_payload;

/// The message of the amqp roles.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct AmqpItem {
    /// Position in the stream, from 0.
    pub(crate) index: u64,
    /// `fill_payload(index)` bytes.
    pub(crate) payload: Vec<u8>,
}

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    match role {
        "amqp-produce" => Some(produce(args)),
        "amqp-consume" => Some(consume(args)),
        "amqp-echo" => Some(echo(args)),
        "amqp-raw-consume" => Some(raw_consume(args)),
        "amqp-raw-echo" => Some(raw_echo(args)),
        _ => None,
    }
}

fn required(args: &Args, key: &str) -> Result<String> {
    let value = args.text(key, "");
    if value.is_empty() {
        bail!("--{key} is required");
    }
    Ok(value)
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("write stdout")?;
    out.flush().context("flush stdout")
}

fn produce(args: &Args) -> Result<()> {
    let url = required(args, "url")?;
    let name = required(args, "queue")?;
    let count: u64 = args.get("count", 100)?;
    let size: usize = args.get("size", 64)?;
    let batch: usize = args.get("batch", 1)?;
    let progress_every: u64 = args.get("progress-every", 0)?;
    let queue = if args.get("create", 0u8)? == 1 {
        Queue::open_or_create(Address::amqp(url, name), &QueueConfig::new())?
    } else {
        Queue::open(Address::amqp(url, name))?
    };
    let mut producer = queue.producer::<AmqpItem>(ProducerOptions::new())?;
    say("ready")?;
    let start = Instant::now();
    let mut items = Vec::with_capacity(batch.max(1));
    let mut index = 0;
    while index < count {
        items.clear();
        while items.len() < batch.max(1) && index < count {
            let mut payload = vec![0u8; size];
            fill_payload(index, &mut payload);
            items.push(AmqpItem { index, payload });
            index += 1;
        }
        producer.send_batch(&items)?;
        let before = index - items.len() as u64;
        if let (Some(a), Some(b)) = (
            before.checked_div(progress_every),
            index.checked_div(progress_every),
        ) && a != b
        {
            say(&format!("progress {index}"))?;
        }
    }
    say(&format!(
        "ok sent={count} reconnections={} micros={}",
        producer.reconnections(),
        start.elapsed().as_micros()
    ))
}

fn consume(args: &Args) -> Result<()> {
    let url = required(args, "url")?;
    let name = required(args, "queue")?;
    let count: u64 = args.get("count", 100)?;
    let idle = Duration::from_millis(args.get("idle-exit-ms", 30_000)?);
    let drain = args.get::<u8>("drain", 0)? != 0;
    let print = args.get::<u8>("print", 0)? != 0;
    let queue = Queue::open(Address::amqp(url, name.as_str()))?;
    let mut consumer = queue.consumer::<AmqpItem>()?;
    say("ready")?;
    let start = Instant::now();
    let mut seen = vec![false; usize::try_from(count).context("count")?];
    let mut distinct = 0u64;
    let mut deliveries = 0u64;
    let mut ack_errors = 0u64;
    let mut expected = Vec::new();
    while distinct < count {
        let delivery = match consumer.recv_timeout(idle) {
            Ok(delivery) => delivery,
            Err(err) if err.kind() == ErrorKind::Timeout && drain => break,
            Err(err) if err.kind() == ErrorKind::Timeout => {
                bail!(
                    "queue {name} idle for {idle:?} after {distinct} of {count} distinct messages"
                )
            }
            Err(err) => return Err(err.into()),
        };
        deliveries += 1;
        let item = delivery.message();
        expected.resize(item.payload.len(), 0);
        fill_payload(item.index, &mut expected);
        if item.payload != expected {
            bail!("message {} has a wrong payload", item.index);
        }
        let Some(slot) = seen.get_mut(item.index as usize) else {
            bail!("message index {} out of range 0..{count}", item.index);
        };
        if !*slot {
            *slot = true;
            distinct += 1;
        }
        if print {
            say(&format!("got {} {}", item.index, delivery.deliveries()))?;
        }
        // An ack that cannot be delivered is reported; the message comes again.
        match consumer.ack(&delivery) {
            Ok(()) if print => say(&format!("acked {}", item.index))?,
            Ok(()) => {}
            Err(err) => {
                eprintln!("amqp-consume: {err}");
                ack_errors += 1;
            }
        }
    }
    say(&format!(
        "ok distinct={distinct} deliveries={deliveries} ack_errors={ack_errors} micros={}",
        start.elapsed().as_micros()
    ))
}

fn echo(args: &Args) -> Result<()> {
    let url = required(args, "url")?;
    let input = Queue::open(Address::amqp(url.as_str(), required(args, "in")?))?;
    let output = Queue::open(Address::amqp(url, required(args, "out")?))?;
    let count: u64 = args.get("count", 100)?;
    let mut consumer = input.consumer::<Vec<u8>>()?;
    let mut producer = output.producer::<Vec<u8>>(ProducerOptions::new())?;
    say("ready")?;
    for _ in 0..count {
        let delivery = consumer.recv_timeout(Duration::from_secs(60))?;
        producer.send(delivery.message())?;
        consumer.ack(&delivery)?;
    }
    say(&format!("ok echoed={count}"))
}

fn raw_consume(args: &Args) -> Result<()> {
    crate::bench::amqp::raw_consume_role(
        &required(args, "url")?,
        &required(args, "queue")?,
        args.get("count", 100)?,
    )
}

fn raw_echo(args: &Args) -> Result<()> {
    crate::bench::amqp::raw_echo_role(
        &required(args, "url")?,
        &required(args, "in")?,
        &required(args, "out")?,
        args.get("count", 100)?,
    )
}
