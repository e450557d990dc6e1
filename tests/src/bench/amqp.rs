//! Benchmarks of ipc-queue's RabbitMQ backend beside raw lapin doing the same work in the
//! same run, on the same broker and the same kind of queue (durable quorum queues,
//! persistent messages, publisher confirms, manual acks, the same prefetch). Without
//! `IPC_AMQP_URL` it measures nothing and returns no figures.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_core::Stream;
use ipc_queue::{Address, ProducerOptions, Queue, QueueConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::{Effort, Figure};
use crate::roles::AmqpItem;
use crate::{Peer, fill_payload};

const MECHANISM: &str = "ipc-queue (amqp)";
/// Messages published before their confirms are awaited, on both sides.
const WINDOW: usize = 256;
/// The prefetch of every consumer, on both sides (ipc-queue's default).
const PREFETCH: u16 = 64;
const WAIT: Duration = Duration::from_secs(120);
/// Runs of each figure and its baseline, interleaved; the best of each side counts.
const RUNS: usize = 3;

/// Measures the figures and their raw lapin baselines; none without `IPC_AMQP_URL`.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let Ok(url) = std::env::var("IPC_AMQP_URL") else {
        eprintln!("ipc-queue (amqp) bench: skipped: IPC_AMQP_URL not set");
        return Ok(Vec::new());
    };
    let (publish_n, rounds) = match effort {
        Effort::Quick => (1_000u64, 50u64),
        Effort::Full => (30_000, 1_500),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start a runtime")?;
    let mut figures = Vec::new();

    // The machine is shared and noisy: each side is the best of `RUNS` runs, interleaved,
    // and which side goes first alternates (a broker busy with the previous run's cleanup
    // slows whoever comes next).
    let (ours, raw) = best_of_runs(
        f64::max,
        // Both queues exist before either side publishes; both are deleted after the run.
        || Ok((BenchQueue::new(&url)?, BenchQueue::new(&url)?)),
        |(raw_queue, our_queue), raw_turn| {
            if raw_turn {
                runtime.block_on(raw_publish(&url, raw_queue.name(), publish_n))
            } else {
                ipc_publish(our_queue, publish_n)
            }
        },
    )?;
    figures.push(figure(
        &format!("confirmed publish, windows of {WINDOW}"),
        "throughput",
        ours,
        "msg/s",
        "raw lapin, same window",
        raw,
    ));

    // RabbitMQ's own ceiling beside the embedded backend's pipelined rows: 4 publishers,
    // each with its own connection and a window of 256 confirms.
    let (ours, raw) = best_of_runs(
        f64::max,
        || Ok((BenchQueue::new(&url)?, BenchQueue::new(&url)?)),
        |(raw_queue, our_queue), raw_turn| {
            if raw_turn {
                runtime.block_on(raw_publish_many(
                    &url,
                    raw_queue.name(),
                    PUBLISHERS,
                    publish_n,
                ))
            } else {
                ipc_publish_many(our_queue, PUBLISHERS, publish_n)
            }
        },
    )?;
    figures.push(figure(
        &format!("confirmed publish, {PUBLISHERS} publishers, windows of {WINDOW} each"),
        "throughput",
        ours,
        "msg/s",
        "raw lapin, same publishers and windows",
        raw,
    ));

    let (ours, raw) = best_of_runs(
        f64::max,
        || Ok(()),
        |(), raw_turn| {
            let role = if raw_turn {
                "amqp-raw-consume"
            } else {
                "amqp-consume"
            };
            end_to_end(&url, publish_n, role)
        },
    )?;
    figures.push(figure(
        "end to end, one consumer process",
        "throughput",
        ours,
        "msg/s",
        "raw lapin consumer process",
        raw,
    ));

    let (ours, raw) = best_of_runs(
        f64::min,
        || Ok(()),
        |(), raw_turn| {
            let role = if raw_turn {
                "amqp-raw-echo"
            } else {
                "amqp-echo"
            };
            round_trip(&url, rounds, role)
        },
    )?;
    figures.push(figure(
        "round trip through an echo process",
        "latency",
        ours,
        "ns",
        "raw lapin echo process",
        raw,
    ));
    Ok(figures)
}

/// Measures both sides `RUNS` times, raw lapin first in even runs and ipc-queue first in
/// odd ones, each run on what `setup` makes for it; keeps the best of each side by `better`
/// (`f64::max` for throughput, `f64::min` for latency). Returns (ipc-queue, raw lapin).
fn best_of_runs<C>(
    better: fn(f64, f64) -> f64,
    mut setup: impl FnMut() -> Result<C>,
    mut measure: impl FnMut(&C, bool) -> Result<f64>,
) -> Result<(f64, f64)> {
    let (mut ours, mut raw): (Option<f64>, Option<f64>) = (None, None);
    for run in 0..RUNS {
        let context = setup()?;
        let first_raw = run.is_multiple_of(2);
        for raw_turn in [first_raw, !first_raw] {
            let value = measure(&context, raw_turn)?;
            let best = if raw_turn { &mut raw } else { &mut ours };
            *best = Some(best.map_or(value, |b| better(b, value)));
        }
    }
    Ok((ours.unwrap_or(f64::NAN), raw.unwrap_or(f64::NAN)))
}

fn figure(
    case: &str,
    metric: &str,
    value: f64,
    unit: &str,
    baseline_name: &str,
    baseline_value: f64,
) -> Figure {
    Figure {
        mechanism: MECHANISM.to_owned(),
        case: case.to_owned(),
        payload_bytes: 1024,
        metric: metric.to_owned(),
        value,
        unit: unit.to_owned(),
        baseline_name: baseline_name.to_owned(),
        baseline_value,
    }
}

/// A fresh quorum queue, deleted on drop.
struct BenchQueue(Option<Queue>);

impl BenchQueue {
    fn new(url: &str) -> Result<BenchQueue> {
        let name = crate::unique_name("ipcq-bench");
        Ok(BenchQueue(Some(Queue::create(
            Address::amqp(url, name),
            &QueueConfig::new(),
        )?)))
    }
}

impl BenchQueue {
    fn get(&self) -> &Queue {
        self.0.as_ref().expect("the queue lives until drop")
    }

    fn name(&self) -> &str {
        self.get().address().amqp_queue().unwrap_or_default()
    }
}

impl Drop for BenchQueue {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            let _ = queue.delete();
        }
    }
}

fn items(count: u64) -> Vec<AmqpItem> {
    (0..count)
        .map(|index| {
            let mut payload = vec![0u8; 1024];
            fill_payload(index, &mut payload);
            AmqpItem { index, payload }
        })
        .collect()
}

/// ipc-queue: `send_batch` of `WINDOW` messages at a time; messages per second.
fn ipc_publish(queue: &BenchQueue, count: u64) -> Result<f64> {
    let mut producer = queue.get().producer::<AmqpItem>(ProducerOptions::new())?;
    let items = items(count);
    let started = Instant::now();
    for chunk in items.chunks(WINDOW) {
        producer.send_batch(chunk)?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Publishers of the many-publisher rows, each on its own connection.
const PUBLISHERS: u64 = 4;

/// ipc-queue: `publishers` threads, each with its own producer (and connection) sending
/// `count / publishers` messages with `send_batch` of `WINDOW`; aggregate messages per
/// second from the start to the last confirm.
fn ipc_publish_many(queue: &BenchQueue, publishers: u64, count: u64) -> Result<f64> {
    let each = (count / publishers).max(1);
    let mut producers = Vec::new();
    for _ in 0..publishers {
        producers.push(queue.get().producer::<AmqpItem>(ProducerOptions::new())?);
    }
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = producers
            .into_iter()
            .map(|mut producer| {
                scope.spawn(move || -> Result<()> {
                    for chunk in items(each).chunks(WINDOW) {
                        producer.send_batch(chunk)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a publisher thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((each * publishers) as f64 / started.elapsed().as_secs_f64())
}

/// Raw lapin: `publishers` tasks, each on its own connection and channel, publishing
/// `count / publishers` messages `WINDOW` confirms at a time.
async fn raw_publish_many(url: &str, queue: &str, publishers: u64, count: u64) -> Result<f64> {
    let each = (count / publishers).max(1);
    let mut channels = Vec::new();
    for _ in 0..publishers {
        let (connection, channel) = raw_channel(url).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push((connection, channel));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (_, channel) in &channels {
        let (channel, queue) = (channel.clone(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            raw_publish_items(&channel, &queue, &items(each)).await
        }));
    }
    for task in tasks {
        task.await.context("a raw publisher task")??;
    }
    let rate = (each * publishers) as f64 / started.elapsed().as_secs_f64();
    for (connection, _) in channels {
        let _ = connection.close(200, "bye".into()).await;
    }
    Ok(rate)
}

/// The properties ipc-queue gives a message (AMQP.md), so the raw baseline sends the
/// same bytes to the broker.
fn same_properties(seq: u64) -> BasicProperties {
    let sent_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut headers = FieldTable::default();
    headers.insert(
        ipc_queue::HEADER_TYPE.into(),
        AMQPValue::LongString(std::any::type_name::<AmqpItem>().into()),
    );
    headers.insert(
        ipc_queue::HEADER_SEQ.into(),
        AMQPValue::LongLongInt(seq as i64),
    );
    headers.insert(
        ipc_queue::HEADER_SENT_MS.into(),
        AMQPValue::LongLongInt(sent_ms),
    );
    BasicProperties::default()
        .with_content_type(ipc_queue::CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_message_id(format!("{seq:016x}").into())
        .with_timestamp((sent_ms / 1000) as u64)
        .with_headers(headers)
}

/// Publishes the ipc-core encoding of every item through raw lapin with the same
/// properties as ipc-queue, `WINDOW` confirms at a time.
pub(crate) async fn raw_publish_items(
    channel: &Channel,
    queue: &str,
    items: &[AmqpItem],
) -> Result<()> {
    let mut body = Vec::new();
    for chunk in items.chunks(WINDOW) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for item in chunk {
            body.clear();
            ipc_core::encode_to_vec(item, &mut body, 1 << 20)?;
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        same_properties(item.index),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                other => bail!("raw publish not confirmed: {other:?}"),
            }
        }
    }
    Ok(())
}

async fn raw_channel(url: &str) -> Result<(Connection, Channel)> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Raw lapin: the same publishing as [`ipc_publish`]; messages per second.
async fn raw_publish(url: &str, queue: &str, count: u64) -> Result<f64> {
    let (connection, channel) = raw_channel(url).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let items = items(count);
    let started = Instant::now();
    raw_publish_items(&channel, queue, &items).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = connection.close(200, "bye".into()).await;
    Ok(rate)
}

/// Publishes `count` messages with ipc-queue while a consumer process (`role`) consumes
/// and acknowledges them; messages per second from the first send to the consumer's end.
fn end_to_end(url: &str, count: u64, role: &str) -> Result<f64> {
    let queue = BenchQueue::new(url)?;
    let count_s = count.to_string();
    let mut consumer = Peer::spawn_role(
        "bench consumer",
        role,
        ["--url", url, "--queue", queue.name(), "--count", &count_s],
    )?;
    consumer.expect_prefixed("ready", WAIT)?;
    let mut producer = queue.get().producer::<AmqpItem>(ProducerOptions::new())?;
    let items = items(count);
    let started = Instant::now();
    for chunk in items.chunks(WINDOW) {
        producer.send_batch(chunk)?;
    }
    consumer.expect_prefixed("ok ", WAIT)?;
    let elapsed = started.elapsed();
    consumer.wait_success(WAIT)?;
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// `rounds` round trips through an echo process (`role`): send to one queue, receive the
/// echo from another and acknowledge it; nanoseconds per round trip.
fn round_trip(url: &str, rounds: u64, role: &str) -> Result<f64> {
    let (a, b) = (BenchQueue::new(url)?, BenchQueue::new(url)?);
    let rounds_s = rounds.to_string();
    let mut echo = Peer::spawn_role(
        "bench echo",
        role,
        [
            "--url",
            url,
            "--in",
            a.name(),
            "--out",
            b.name(),
            "--count",
            &rounds_s,
        ],
    )?;
    echo.expect_prefixed("ready", WAIT)?;
    let mut producer = a.get().producer::<Vec<u8>>(ProducerOptions::new())?;
    let mut consumer = b.get().consumer::<Vec<u8>>()?;
    let message = vec![0x42u8; 1024];
    let started = Instant::now();
    for _ in 0..rounds {
        producer.send(&message)?;
        let delivery = consumer.recv_timeout(WAIT)?;
        consumer.ack(&delivery)?;
    }
    let elapsed = started.elapsed();
    echo.wait_success(WAIT)?;
    Ok(elapsed.as_nanos() as f64 / rounds.max(1) as f64)
}

/// The raw lapin consumer role: consumes `count` messages with manual acks and the same
/// prefetch as ipc-queue, decoding and checking each.
pub(crate) fn raw_consume_role(url: &str, queue: &str, count: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (connection, channel) = raw_channel(url).await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "raw".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        println!("ready");
        let mut expected = Vec::new();
        for _ in 0..count {
            let delivery = next(&mut consumer).await?;
            // The same checks as the `amqp-consume` role.
            let item: AmqpItem = ipc_core::decode(&delivery.data)?;
            expected.resize(item.payload.len(), 0);
            fill_payload(item.index, &mut expected);
            if item.payload != expected {
                bail!("message {} has a wrong payload", item.index);
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        println!("ok consumed={count}");
        let _ = connection.close(200, "bye".into()).await;
        Ok(())
    })
}

/// The raw lapin echo role: consumes from `input`, publishes each body to `output` with a
/// confirm, then acknowledges it.
pub(crate) fn raw_echo_role(url: &str, input: &str, output: &str, count: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (connection, channel) = raw_channel(url).await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                input.into(),
                "raw-echo".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        println!("ready");
        for _ in 0..count {
            let delivery = next(&mut consumer).await?;
            let confirm = publish
                .basic_publish(
                    "".into(),
                    output.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    same_properties(delivery.delivery_tag),
                )
                .await?
                .await?;
            if !matches!(confirm, Confirmation::Ack(None)) {
                bail!("raw echo not confirmed: {confirm:?}");
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        println!("ok echoed={count}");
        let _ = connection.close(200, "bye".into()).await;
        Ok(())
    })
}

async fn next(consumer: &mut lapin::Consumer) -> Result<lapin::message::Delivery> {
    match poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx)).await {
        Some(delivery) => Ok(delivery?),
        None => bail!("the raw consumer ended"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_quick_bench_yields_finite_figures_when_the_broker_is_there() -> anyhow::Result<()> {
        let figures = super::run(super::Effort::Quick)?;
        if std::env::var("IPC_AMQP_URL").is_err() {
            assert!(figures.is_empty());
            return Ok(());
        }
        assert_eq!(figures.len(), 4);
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
