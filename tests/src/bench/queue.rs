//! Cross-process benchmarks of ipc-queue, with their raw baselines measured in the same run
//! on the same file system: `write` + `fdatasync` per message for durable figures, a bare
//! `write` per message for non-durable ones.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ipc_queue::{Queue, QueueConfig};

use super::{Effort, Figure};
use crate::{Peer, TempDir};

const MECHANISM: &str = "ipc-queue";

/// Measures ipc-queue's figures and their baselines.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let dir = TempDir::new("ipcq-bench")?;
    let (durable_n, fast_n) = match effort {
        Effort::Quick => (200u64, 20_000u64),
        Effort::Full => (3_000, 1_000_000),
    };
    let mut figures = Vec::new();

    // The disk is shared and its `fdatasync` rate drifts within seconds: each durable row's
    // baseline is the mean of a raw loop run just before the row and one just after it.
    let sync_name = "write + fdatasync per message";
    let mut raw = Bracket::new(dir.path(), durable_n)?;
    for producers in [1u64, 4, 16] {
        // More producers, more messages: each sends at least a quarter of `durable_n`.
        let count = durable_n * producers.min(4);
        let rate = produce(dir.path(), producers, count, 1024, "always", 1)?;
        figures.push(figure(
            &format!("durable send, {producers} producer process(es), one message per send"),
            1024,
            rate,
            sync_name,
            raw.next()?,
        ));
    }
    for producers in [1u64, 4] {
        let rate = produce(dir.path(), producers, durable_n * 10, 1024, "always", 16)?;
        figures.push(figure(
            &format!("durable send, {producers} producer process(es), batches of 16"),
            1024,
            rate,
            sync_name,
            raw.next()?,
        ));
    }
    let rate = end_to_end(dir.path(), durable_n * 10, 1024, 64)?;
    figures.push(figure(
        "end to end, durable batches of 64, one consumer process",
        1024,
        rate,
        sync_name,
        raw.next()?,
    ));
    // One message per send, pipelined (`send_pipelined`, a window of 256): no batching by
    // hand.
    for producers in [1u64, 4] {
        let rate = produce_pipelined(dir.path(), producers, durable_n * 20, 1024, PIPELINE_WINDOW)?;
        figures.push(figure(
            &format!(
                "durable send, {producers} producer process(es), pipelined (window of {PIPELINE_WINDOW})"
            ),
            1024,
            rate,
            sync_name,
            raw.next()?,
        ));
    }
    let rate = end_to_end_pipelined(dir.path(), 4, durable_n * 20, 1024, PIPELINE_WINDOW, 64)?;
    figures.push(figure(
        &format!(
            "end to end, 4 pipelined producer processes (window of {PIPELINE_WINDOW}), one consumer process acknowledging 64 at a time"
        ),
        1024,
        rate,
        sync_name,
        raw.next()?,
    ));

    let rounds = durable_n / 4;
    let latency = round_trip(dir.path(), rounds, 1024)?;
    figures.push(Figure {
        mechanism: MECHANISM.to_owned(),
        case: "round trip through two queues and an echo process, durable".to_owned(),
        payload_bytes: 1024,
        metric: "latency".to_owned(),
        value: latency,
        unit: "ns".to_owned(),
        baseline_name: "two write + fdatasync".to_owned(),
        baseline_value: 2.0 * 1e9 / raw.mean(),
    });

    let write_baseline = raw_append(dir.path(), 64, fast_n, false)?;
    let write_name = "write per message, no sync";
    let rate = produce(dir.path(), 1, fast_n, 64, "never", 1)?;
    figures.push(figure(
        "non-durable send, one message per send",
        64,
        rate,
        write_name,
        write_baseline,
    ));
    let rate = produce(dir.path(), 1, fast_n, 64, "never", 256)?;
    figures.push(figure(
        "non-durable send, batches of 256",
        64,
        rate,
        write_name,
        write_baseline,
    ));
    Ok(figures)
}

fn figure(
    case: &str,
    payload_bytes: u64,
    value: f64,
    baseline_name: &str,
    baseline_value: f64,
) -> Figure {
    Figure {
        mechanism: MECHANISM.to_owned(),
        case: case.to_owned(),
        payload_bytes,
        metric: "throughput".to_owned(),
        value,
        unit: "msg/s".to_owned(),
        baseline_name: baseline_name.to_owned(),
        baseline_value,
    }
}

/// The raw `write` + `fdatasync` loops that bracket the durable rows: each row's baseline
/// is the mean of the loop before it and the loop after it.
struct Bracket<'a> {
    dir: &'a Path,
    count: u64,
    last: f64,
    all: Vec<f64>,
}

impl<'a> Bracket<'a> {
    fn new(dir: &'a Path, count: u64) -> Result<Bracket<'a>> {
        let last = raw_append(dir, 1024, count, true)?;
        Ok(Bracket {
            dir,
            count,
            last,
            all: vec![last],
        })
    }

    /// Runs the loop after a row; returns that row's baseline.
    fn next(&mut self) -> Result<f64> {
        let after = raw_append(self.dir, 1024, self.count, true)?;
        let baseline = (self.last + after) / 2.0;
        self.last = after;
        self.all.push(after);
        Ok(baseline)
    }

    /// The mean of every loop so far.
    fn mean(&self) -> f64 {
        self.all.iter().sum::<f64>() / self.all.len() as f64
    }
}

/// Appends `count` records of `size` bytes to a file, each with its own `write` (and
/// `fdatasync` if `sync`); messages per second.
fn raw_append(dir: &Path, size: usize, count: u64, sync: bool) -> Result<f64> {
    let path = dir.join(format!("raw-{size}-{sync}"));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .context("create baseline file")?;
    let record = vec![0x5au8; size + 40];
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(&record)?;
        if sync {
            file.sync_data()?;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

fn fresh_queue(dir: &Path) -> Result<String> {
    let path = dir.join(crate::unique_name("q"));
    Queue::create(&path, &QueueConfig::new())?;
    Ok(path.display().to_string())
}

fn field(outcome: &str, key: &str) -> Result<f64> {
    outcome
        .split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .with_context(|| format!("no {key}= in `{outcome}`"))?
        .parse::<f64>()
        .with_context(|| format!("{key} in `{outcome}`"))
}

/// `producers` processes each send `count / producers` messages; aggregate messages per
/// second over the slowest producer's time.
fn produce(
    dir: &Path,
    producers: u64,
    count: u64,
    size: usize,
    durability: &str,
    batch: u64,
) -> Result<f64> {
    let path = fresh_queue(dir)?;
    let each = (count / producers).max(1);
    let (each_s, size_s, batch_s) = (each.to_string(), size.to_string(), batch.to_string());
    let mut peers = Vec::new();
    for id in 0..producers {
        let id = id.to_string();
        peers.push(spawn_gated(
            format!("bench producer {id}"),
            [
                "--address",
                &path,
                "--producer",
                &id,
                "--count",
                &each_s,
                "--size",
                &size_s,
                "--durability",
                durability,
                "--batch",
                &batch_s,
                "--quiet",
                "1",
            ],
        )?);
    }
    start_all(&mut peers)?;
    let mut slowest: f64 = 0.0;
    for peer in &mut peers {
        let outcome = peer.expect_prefixed("ok", std::time::Duration::from_secs(600))?;
        slowest = slowest.max(field(&outcome, "micros")?);
        peer.wait_success(std::time::Duration::from_secs(60))?;
    }
    if slowest <= 0.0 {
        bail!("producers reported no time");
    }
    let _ = std::fs::remove_dir_all(&path);
    Ok((each * producers) as f64 / (slowest / 1e6))
}

/// The window of the pipelined rows, as RabbitMQ publishers keep one of confirms.
const PIPELINE_WINDOW: u32 = 256;

fn spawn_pipelined(
    path: &str,
    producers: u64,
    each: u64,
    size: usize,
    window: u32,
) -> Result<Vec<Peer>> {
    let (each_s, size_s, window_s) = (each.to_string(), size.to_string(), window.to_string());
    let mut peers = Vec::new();
    for id in 0..producers {
        let id = id.to_string();
        peers.push(spawn_gated(
            format!("bench pipelined producer {id}"),
            [
                "--address",
                path,
                "--producer",
                &id,
                "--count",
                &each_s,
                "--size",
                &size_s,
                "--window",
                &window_s,
                "--quiet",
                "1",
            ],
        )?);
    }
    start_all(&mut peers)?;
    Ok(peers)
}

/// Spawns a `queue-produce` peer with `args` and `--wait-go 1` (stdin piped): it opens its
/// producer, prints `ready` and waits for [`start_all`].
fn spawn_gated<const N: usize>(name: String, args: [&str; N]) -> Result<Peer> {
    let mut command = Peer::role_command("queue-produce", args)?;
    command
        .args(["--wait-go", "1"])
        .stdin(std::process::Stdio::piped());
    Peer::spawn(name, command)
}

/// Waits until every gated producer is ready, then lets them all go at once, so that the
/// slowest producer's time covers the whole run with every producer sending (no producer
/// runs alone while the others start).
fn start_all(peers: &mut [Peer]) -> Result<()> {
    for peer in peers.iter_mut() {
        peer.expect_prefixed("ready", std::time::Duration::from_secs(60))?;
    }
    for peer in peers.iter_mut() {
        let stdin = peer.stdin().context("a gated producer without stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
    }
    Ok(())
}

/// `producers` processes each send `count / producers` messages one at a time with
/// `send_pipelined`; aggregate messages per second over the slowest producer's time.
fn produce_pipelined(
    dir: &Path,
    producers: u64,
    count: u64,
    size: usize,
    window: u32,
) -> Result<f64> {
    let path = fresh_queue(dir)?;
    let each = (count / producers).max(1);
    let mut peers = spawn_pipelined(&path, producers, each, size, window)?;
    let mut slowest: f64 = 0.0;
    for peer in &mut peers {
        let outcome = peer.expect_prefixed("ok", std::time::Duration::from_secs(600))?;
        slowest = slowest.max(field(&outcome, "micros")?);
        peer.wait_success(std::time::Duration::from_secs(60))?;
    }
    if slowest <= 0.0 {
        bail!("producers reported no time");
    }
    let _ = std::fs::remove_dir_all(&path);
    Ok((each * producers) as f64 / (slowest / 1e6))
}

/// Pipelined producer processes and one consumer process (acknowledging `ack_batch`
/// deliveries at a time) running together: messages per second as the consumer saw them.
fn end_to_end_pipelined(
    dir: &Path,
    producers: u64,
    count: u64,
    size: usize,
    window: u32,
    ack_batch: u64,
) -> Result<f64> {
    let path = fresh_queue(dir)?;
    let each = (count / producers).max(1);
    let total = (each * producers).to_string();
    let ack_batch = ack_batch.to_string();
    let mut consumer = Peer::spawn_role(
        "bench consumer",
        "queue-consume",
        [
            "--address",
            &path,
            "--expect",
            &total,
            "--ack-batch",
            &ack_batch,
            "--quiet",
            "1",
        ],
    )?;
    let mut peers = spawn_pipelined(&path, producers, each, size, window)?;
    let outcome = consumer.expect_prefixed("ok", std::time::Duration::from_secs(600))?;
    for peer in &mut peers {
        peer.wait_success(std::time::Duration::from_secs(60))?;
    }
    consumer.wait_success(std::time::Duration::from_secs(60))?;
    let micros = field(&outcome, "micros")?;
    let _ = std::fs::remove_dir_all(&path);
    Ok((each * producers) as f64 / (micros.max(1.0) / 1e6))
}

/// A producer and a consumer running together: messages per second as the consumer saw
/// them (first to last delivery).
fn end_to_end(dir: &Path, count: u64, size: usize, batch: u64) -> Result<f64> {
    let path = fresh_queue(dir)?;
    let (count_s, size_s, batch_s) = (count.to_string(), size.to_string(), batch.to_string());
    let mut consumer = Peer::spawn_role(
        "bench consumer",
        "queue-consume",
        ["--address", &path, "--expect", &count_s, "--quiet", "1"],
    )?;
    let mut producer = Peer::spawn_role(
        "bench producer",
        "queue-produce",
        [
            "--address",
            &path,
            "--count",
            &count_s,
            "--size",
            &size_s,
            "--batch",
            &batch_s,
            "--quiet",
            "1",
        ],
    )?;
    let outcome = consumer.expect_prefixed("ok", std::time::Duration::from_secs(600))?;
    producer.wait_success(std::time::Duration::from_secs(60))?;
    consumer.wait_success(std::time::Duration::from_secs(60))?;
    let micros = field(&outcome, "micros")?;
    let _ = std::fs::remove_dir_all(&path);
    Ok(count as f64 / (micros.max(1.0) / 1e6))
}

/// Nanoseconds per round trip: send to queue A, an echo process moves the message to queue
/// B, receive it from B.
fn round_trip(dir: &Path, rounds: u64, size: usize) -> Result<f64> {
    let (a, b) = (fresh_queue(dir)?, fresh_queue(dir)?);
    let rounds_s = rounds.to_string();
    let mut echo = Peer::spawn_role(
        "bench echo",
        "queue-echo",
        ["--in", &a, "--out", &b, "--count", &rounds_s],
    )?;
    echo.expect_prefixed("ready", std::time::Duration::from_secs(60))?;
    let mut producer = Queue::open(&a)?.producer::<Vec<u8>>(ipc_queue::ProducerOptions::new())?;
    let mut consumer = Queue::open(&b)?.consumer::<Vec<u8>>()?;
    let message = vec![0x42u8; size];
    let started = Instant::now();
    for _ in 0..rounds {
        producer.send(&message)?;
        let delivery = consumer.recv_timeout(std::time::Duration::from_secs(60))?;
        consumer.ack(&delivery)?;
    }
    let elapsed = started.elapsed();
    echo.wait_success(std::time::Duration::from_secs(60))?;
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
    Ok(elapsed.as_nanos() as f64 / rounds.max(1) as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_quick_bench_yields_finite_figures() -> anyhow::Result<()> {
        let figures = super::run(super::Effort::Quick)?;
        assert!(figures.len() >= 12);
        for figure in &figures {
            assert!(figure.value.is_finite() && figure.value > 0.0, "{figure:?}");
            assert!(
                figure.baseline_value.is_finite() && figure.baseline_value > 0.0,
                "{figure:?}"
            );
        }
        Ok(())
    }
}
