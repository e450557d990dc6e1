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
//! - `amqp-blocking-in-runtime [--flavor current|multi]`: creates the queue, opens a
//!   producer and a consumer, sends one message and receives it (unacknowledged), all
//!   outside any runtime; then, inside a tokio runtime of that flavor, calls every blocking
//!   entry point and checks that each fails with `InvalidInput` naming the runtime (no
//!   panic, no block), and drops the handles and the queue there. Ends with
//!   `ok refused=N seq=S` (S: the received message's sequence number).
//! - `async-produce --address ADDR --count N [--size BYTES] [--progress-every P]` and
//!   `async-consume --address ADDR --count N`: the async API (`AsyncQueue`) on either
//!   backend (ADDR is a directory or `amqp://...#queue`), on a current-thread tokio
//!   runtime. The producer sends `AmqpItem`s 0..N, one at a time, printing `progress I`
//!   after every P, and ends with `ok sent=N reconnections=R`; the consumer prints `ready` once its consumer is open,
//!   receives until it has seen all of 0..N (checking payloads; duplicates allowed),
//!   acknowledging each (an ack refused because its connection was lost is counted), and
//!   prints `ok distinct=N deliveries=D ack_errors=E`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::ErrorKind;
use ipc_queue::{Address, AsyncQueue, ProducerOptions, Queue, QueueConfig};
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
        "amqp-blocking-in-runtime" => Some(blocking_in_runtime(args)),
        "async-produce" => Some(async_produce(args)),
        "async-consume" => Some(async_consume(args)),
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

/// The outcome of the blocking calls made inside a runtime.
#[derive(Default)]
struct Refusals {
    /// Calls that failed as they should: `InvalidInput`, with a message that says why.
    refused: u32,
    /// Calls that panicked (the old behaviour), by name.
    panicked: Vec<String>,
    /// Calls that returned anything else (success included), with what they returned.
    unexpected: Vec<String>,
}

impl Refusals {
    /// Makes the blocking call `call` named `what` and records how it went: refused as it
    /// should be, a panic (caught), or anything else.
    fn check<R>(&mut self, what: &str, call: impl FnOnce() -> ipc_core::Result<R>) -> Result<()> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
            Err(_) => self.panicked.push(what.to_owned()),
            Ok(Err(err))
                if err.kind() == ErrorKind::InvalidInput
                    && err.to_string().contains("inside a tokio runtime") =>
            {
                self.refused += 1;
            }
            Ok(Err(err)) => self
                .unexpected
                .push(format!("{what}: error {:?}: {err}", err.kind())),
            Ok(Ok(_)) => self.unexpected.push(format!("{what}: succeeded")),
        }
        Ok(())
    }
}

fn blocking_in_runtime(args: &Args) -> Result<()> {
    let url = required(args, "url")?;
    let name = required(args, "queue")?;
    let flavor = args.text("flavor", "current");
    let address = Address::amqp(url.as_str(), name.as_str());
    let other = Address::amqp(url.as_str(), format!("{name}-never"));
    // Outside any runtime: the blocking api works.
    let queue = Queue::create(&address, &QueueConfig::new())?;
    let mut producer = queue.producer::<AmqpItem>(ProducerOptions::new())?;
    let mut consumer = queue.consumer::<AmqpItem>()?;
    let item = AmqpItem {
        index: 0,
        payload: vec![7; 16],
    };
    producer.send(&item)?;
    let delivery = consumer.recv_timeout(Duration::from_secs(60))?;
    let seq = delivery.seq();
    let runtime = match flavor.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread(),
        "multi" => tokio::runtime::Builder::new_multi_thread(),
        other => bail!("--flavor {other}: expected current or multi"),
    }
    .enable_all()
    .build()
    .context("build a runtime")?;
    let outcome = runtime.block_on(async move {
        let mut r = Refusals::default();
        let config = QueueConfig::new();
        let timeout = Duration::from_secs(1);
        r.check("create", || Queue::create(&other, &config))?;
        r.check("open", || Queue::open(&address))?;
        r.check("open_or_create", || {
            Queue::open_or_create(&address, &config)
        })?;
        r.check("producer", || {
            queue.producer::<AmqpItem>(ProducerOptions::new())
        })?;
        r.check("consumer", || queue.consumer::<AmqpItem>())?;
        r.check("send", || producer.send(&item))?;
        r.check("try_send", || producer.try_send(&item))?;
        r.check("send_timeout", || producer.send_timeout(&item, timeout))?;
        r.check("send_with_ttl", || producer.send_with_ttl(&item, timeout))?;
        r.check("send_batch", || producer.send_batch([&item]))?;
        r.check("flush", || producer.flush())?;
        r.check("recv", || consumer.recv())?;
        r.check("try_recv", || consumer.try_recv())?;
        r.check("recv_timeout", || consumer.recv_timeout(timeout))?;
        r.check("ack", || consumer.ack(&delivery))?;
        r.check("nack", || consumer.nack(&delivery, None))?;
        r.check("reject", || consumer.reject(&delivery, "no"))?;
        r.check("stats", || queue.stats())?;
        r.check("dead-letter stats", || queue.dead_letters()?.stats())?;
        r.check("delete", || queue.clone().delete())?;
        // Dropping every handle, and the last handle of the queue, inside the runtime.
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            drop(delivery);
            drop(producer);
            drop(consumer);
            drop(queue);
        }));
        if dropped.is_err() {
            r.panicked.push("drop".to_owned());
        }
        Ok::<Refusals, anyhow::Error>(r)
    })?;
    if !outcome.panicked.is_empty() || !outcome.unexpected.is_empty() {
        bail!(
            "inside a runtime, {} blocking calls panicked ({}) and {} did not fail as they should ({})",
            outcome.panicked.len(),
            outcome.panicked.join(", "),
            outcome.unexpected.len(),
            outcome.unexpected.join("; ")
        );
    }
    let count = outcome.refused;
    drop(runtime);
    say(&format!("ok refused={count} seq={seq}"))
}

/// A current-thread runtime: everything the async roles do shares the one thread, so a
/// call that blocked it would stall them.
fn current_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build a runtime")
}

fn async_produce(args: &Args) -> Result<()> {
    let address = Address::parse(&required(args, "address")?);
    let count: u64 = args.get("count", 100)?;
    let size: usize = args.get("size", 64)?;
    let progress_every: u64 = args.get("progress-every", 0)?;
    current_thread()?.block_on(async {
        let queue = AsyncQueue::open(address).await?;
        let mut producer = queue.producer::<AmqpItem>(ProducerOptions::new()).await?;
        for index in 0..count {
            let mut payload = vec![0u8; size];
            fill_payload(index, &mut payload);
            producer.send(&AmqpItem { index, payload }).await?;
            if progress_every != 0 && (index + 1) % progress_every == 0 {
                say(&format!("progress {}", index + 1))?;
            }
        }
        producer.flush().await?;
        say(&format!(
            "ok sent={count} reconnections={}",
            producer.reconnections()
        ))
    })
}

fn async_consume(args: &Args) -> Result<()> {
    let address = Address::parse(&required(args, "address")?);
    let count: u64 = args.get("count", 100)?;
    current_thread()?.block_on(async {
        let queue = AsyncQueue::open(address).await?;
        let mut consumer = queue.consumer::<AmqpItem>().await?;
        say("ready")?;
        let mut seen = vec![false; usize::try_from(count).context("count")?];
        let (mut distinct, mut deliveries, mut ack_errors) = (0u64, 0u64, 0u64);
        let mut expected = Vec::new();
        while distinct < count {
            let delivery = consumer.recv_timeout(Duration::from_secs(60)).await?;
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
            // An ack that cannot be delivered (its connection was lost) is reported; the
            // message comes again.
            if let Err(err) = consumer.ack(&delivery).await {
                if !matches!(err.kind(), ErrorKind::PeerClosed | ErrorKind::PeerDied) {
                    return Err(err.into());
                }
                eprintln!("async-consume: {err}");
                ack_errors += 1;
            }
        }
        say(&format!(
            "ok distinct={distinct} deliveries={deliveries} ack_errors={ack_errors}"
        ))
    })
}
