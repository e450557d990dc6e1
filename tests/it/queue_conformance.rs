//! The queue conformance suite: one set of tests, written once against the backend-neutral
//! API, run against both backends. `embedded::*` runs each test on a queue directory,
//! `amqp::*` on a RabbitMQ quorum queue (`IPC_AMQP_URL`, or RabbitMQ found on 127.0.0.1:5672; printed as skipped without either).
//! The only thing that differs between the two runs is the queue's address; where the
//! backends differ by design (`AMQP.md`, "Differences"), the test says so in one `match`.
//!
//! Backend-specific behaviour lives beside: `queue_semantics.rs` (directory permissions,
//! leases, segment reclamation, durability modes) and `amqp_semantics.rs` (the broker's own
//! view, a dead broker, a lost connection).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use ipc_core::{AsyncReceiver, AsyncSender, ErrorKind, Receiver, Sender};
use ipc_queue::{Address, AsyncQueue, DeadLetter, ProducerOptions, Queue, QueueConfig, WhenFull};
use ipc_tests::amqp::{TestQueue, amqp_url};
use ipc_tests::{Peer, TempDir, Watchdog, field};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Embedded,
    Amqp,
}

/// Where a test's queues live; removes them on drop.
struct Place {
    backend: Backend,
    dir: Option<TempDir>,
    url: String,
    broker_queues: Vec<TestQueue>,
}

impl Place {
    /// A place on `backend`, or `None` (printed as skipped) when it cannot run here.
    fn new(backend: Backend, test: &str) -> Result<Option<Place>> {
        Ok(match backend {
            Backend::Embedded => Some(Place {
                backend,
                dir: Some(TempDir::new("ipcq-conf")?),
                url: String::new(),
                broker_queues: Vec::new(),
            }),
            Backend::Amqp => amqp_url(test).map(|url| Place {
                backend,
                dir: None,
                url,
                broker_queues: Vec::new(),
            }),
        })
    }

    /// A fresh address no queue has yet.
    fn address(&mut self) -> Address {
        match &self.dir {
            Some(dir) => Address::from(dir.path().join(ipc_tests::unique_name("q"))),
            None => {
                let queue = TestQueue::new(&self.url, "ipcq-conf");
                let address = queue.address();
                self.broker_queues.push(queue);
                address
            }
        }
    }

    /// A fresh address no queue has yet, and the same as a command-line argument for a peer
    /// process (the broker password included).
    fn address_and_arg(&mut self) -> (Address, String) {
        match &self.dir {
            Some(dir) => {
                let path = dir.path().join(ipc_tests::unique_name("q"));
                let arg = path.to_string_lossy().into_owned();
                (Address::from(path), arg)
            }
            None => {
                let queue = TestQueue::new(&self.url, "ipcq-conf");
                let pair = (queue.address(), queue.address_arg());
                self.broker_queues.push(queue);
                pair
            }
        }
    }

    /// A fresh queue with `config`.
    fn queue(&mut self, config: &QueueConfig) -> Result<Queue> {
        let address = self.address();
        Ok(Queue::create(address, config)?)
    }
}

/// Runs `test` on a fresh place on `backend` under a watchdog; prints that it was skipped
/// when the backend is not available here.
fn run(backend: Backend, name: &str, test: fn(&mut Place) -> Result<()>) -> Result<()> {
    let _watchdog = Watchdog::new(name, WAIT * 2);
    match Place::new(backend, name)? {
        Some(mut place) => test(&mut place),
        None => Ok(()),
    }
}

/// Runs each named test on both backends: `embedded::NAME` and `amqp::NAME`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::run(super::Backend::Embedded, stringify!($name), super::$name)
                }
            )*
        }
        mod amqp {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::run(super::Backend::Amqp, stringify!($name), super::$name)
                }
            )*
        }
    };
}

conformance!(
    messages_survive_reopening_and_come_out_in_order_with_their_receipts,
    nack_redelivers_with_a_count_and_reject_and_undecodable_go_to_the_dead_letter_queue,
    too_many_deliveries_and_expired_messages_are_dead_lettered,
    a_bounded_queue_is_full_until_consumers_make_room,
    a_dropped_consumer_gives_its_deliveries_back_at_once,
    generic_code_runs_through_the_core_traits,
    async_handles_survive_a_cancelled_recv_and_drop_inside_a_runtime,
    async_api_settles_like_the_blocking_one_on_a_current_thread_runtime,
    async_producer_and_consumer_processes_exchange_messages,
    async_producer_sends_batches_and_ttls_and_meets_a_full_queue,
);

fn messages_survive_reopening_and_come_out_in_order_with_their_receipts(
    place: &mut Place,
) -> Result<()> {
    let backend = place.backend;
    let address = place.address();
    let queue = Queue::create(&address, &QueueConfig::new())?;
    let err = Queue::create(&address, &QueueConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = Queue::open(place.address()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let mut receipts = Vec::new();
    for i in 0..100 {
        receipts.push(producer.send(&format!("message {i}"))?);
    }
    let batch: Vec<String> = (100..150).map(|i| format!("message {i}")).collect();
    receipts.extend(producer.send_batch(&batch)?);
    drop(producer);
    assert!(receipts.windows(2).all(|w| w[0].seq() + 1 == w[1].seq()));

    // Another handle, as another process would open it.
    let queue = Queue::open(&address)?;
    assert_eq!(queue.stats()?.depth, 150);
    let mut consumer = queue.consumer::<String>()?;
    for (i, receipt) in receipts.iter().enumerate() {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.message(), &format!("message {i}"));
        assert_eq!(delivery.seq(), receipt.seq());
        assert_eq!(delivery.deliveries(), 1);
        consumer.ack(&delivery)?;
    }
    let err = consumer
        .recv_timeout(Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(consumer.try_recv()?.is_none());
    drop(consumer);
    let stats = settled_stats(&queue)?;
    assert_eq!((stats.depth, stats.dead_letters), (0, 0), "{stats:?}");
    match backend {
        Backend::Embedded => assert_eq!((stats.unacked, stats.oldest_age), (Some(0), None)),
        // RabbitMQ does not count unacknowledged messages in a queue's depth.
        Backend::Amqp => assert_eq!(stats.unacked, None),
    }
    Ok(())
}

fn nack_redelivers_with_a_count_and_reject_and_undecodable_go_to_the_dead_letter_queue(
    place: &mut Place,
) -> Result<()> {
    let backend = place.backend;
    let queue = place.queue(&QueueConfig::new())?;
    let mut producer = queue.producer::<String>(ProducerOptions::new())?;
    let again = producer.send(&"again".to_owned())?;
    let mut consumer = queue.consumer::<String>()?;
    let first = consumer.recv_timeout(WAIT)?;
    assert_eq!((first.seq(), first.deliveries()), (again.seq(), 1));
    match backend {
        Backend::Embedded => consumer.nack(&first, Some(Duration::from_millis(10)))?,
        // RabbitMQ has no delayed requeue.
        Backend::Amqp => {
            let err = consumer
                .nack(&first, Some(Duration::from_millis(10)))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            consumer.nack(&first, None)?;
        }
    }
    let second = consumer.recv_timeout(WAIT)?;
    assert_eq!(
        (second.message().as_str(), second.seq(), second.deliveries()),
        ("again", again.seq(), 2)
    );
    consumer.ack(&second)?;

    let bad = producer.send(&"bad".to_owned())?;
    let delivery = consumer.recv_timeout(WAIT)?;
    assert_eq!(delivery.seq(), bad.seq());
    consumer.reject(&delivery, "no thanks")?;
    // Not a String: 9 bytes of 0xff is an overlong varint length.
    let mut raw = queue.producer::<[u8; 9]>(ProducerOptions::new())?;
    let garbage = raw.send(&[0xff; 9])?;
    let err = consumer.recv_timeout(WAIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("dead-letter"), "{err}");
    assert!(consumer.try_recv()?.is_none());
    drop(consumer);

    // Dead letters, in whatever order the backend hands them out.
    let mut dead = queue.dead_letters()?.consumer::<DeadLetter>()?;
    let mut letters = BTreeMap::new();
    for _ in 0..2 {
        let delivery = dead.recv_timeout(WAIT)?;
        dead.ack(&delivery)?;
        let letter = delivery.into_message();
        letters.insert(letter.payload.clone(), letter);
    }
    let mut bad_bytes = Vec::new();
    ipc_core::encode_to_vec("bad", &mut bad_bytes, 64)?;
    let rejected = &letters[&bad_bytes];
    assert_eq!(rejected.seq, bad.seq());
    assert_eq!(rejected.decode::<String>()?, "bad");
    match backend {
        Backend::Embedded => assert_eq!(rejected.reason, "rejected: no thanks"),
        // AMQP's basic.reject carries no reason.
        Backend::Amqp => assert!(rejected.reason.starts_with("rejected"), "{rejected:?}"),
    }
    let undecodable = &letters[&vec![0xffu8; 9]];
    assert_eq!(undecodable.seq, garbage.seq());
    let expected = match backend {
        Backend::Embedded => "does not decode",
        Backend::Amqp => "rejected",
    };
    assert!(undecodable.reason.starts_with(expected), "{undecodable:?}");
    assert!(dead.try_recv()?.is_none());
    assert_eq!(settled_stats(&queue)?.depth, 0);
    Ok(())
}

fn too_many_deliveries_and_expired_messages_are_dead_lettered(place: &mut Place) -> Result<()> {
    // A delivery limit.
    let queue = place.queue(&QueueConfig::new().with_max_deliveries(2))?;
    let receipt = queue.producer::<u32>(ProducerOptions::new())?.send(&1)?;
    let mut consumer = queue.consumer::<u32>()?;
    for expected in 1..=2 {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(delivery.deliveries(), expected);
        consumer.nack(&delivery, None)?;
    }
    let err = consumer
        .recv_timeout(Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "a third delivery: {err}");
    let letter = dead_letter(&queue)?;
    assert!(letter.reason.starts_with("delivered"), "{letter:?}");
    assert_eq!((letter.seq, letter.decode::<u32>()?), (receipt.seq(), 1));

    // A message's own time-to-live, beside one without. (On RabbitMQ a message expires at
    // the head of the queue, so the short-lived one goes first.)
    let queue = place.queue(&QueueConfig::new())?;
    let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
    producer.send_with_ttl(&1, Duration::from_millis(20))?;
    producer.send_with_ttl(&2, Duration::from_secs(3600))?;
    std::thread::sleep(Duration::from_millis(60)); // Lets the TTL pass; not a synchronisation.
    let mut consumer = queue.consumer::<u32>()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    assert_eq!(*delivery.message(), 2);
    consumer.ack(&delivery)?;
    let letter = dead_letter(&queue)?;
    assert!(letter.reason.starts_with("expired"), "{letter:?}");
    assert_eq!(letter.decode::<u32>()?, 1);

    // The queue's time-to-live.
    let queue = place.queue(&QueueConfig::new().with_ttl(Some(Duration::from_millis(20))))?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&3)?;
    std::thread::sleep(Duration::from_millis(60)); // Lets the TTL pass; not a synchronisation.
    let err = queue
        .consumer::<u32>()?
        .recv_timeout(Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let letter = dead_letter(&queue)?;
    assert!(letter.reason.starts_with("expired"), "{letter:?}");
    assert_eq!(letter.decode::<u32>()?, 3);
    assert_eq!(settled_stats(&queue)?.depth, 0);
    Ok(())
}

/// The next dead letter of `queue`, acknowledged.
fn dead_letter(queue: &Queue) -> Result<DeadLetter> {
    let mut dead = queue.dead_letters()?.consumer::<DeadLetter>()?;
    let delivery = dead.recv_timeout(WAIT)?;
    dead.ack(&delivery)?;
    Ok(delivery.into_message())
}

fn a_bounded_queue_is_full_until_consumers_make_room(place: &mut Place) -> Result<()> {
    let backend = place.backend;
    let queue = place.queue(&QueueConfig::new().with_max_messages(3))?;
    let mut producer =
        queue.producer::<u32>(ProducerOptions::new().with_when_full(WhenFull::Fail))?;
    // The embedded bound is exact. A quorum queue applies it after the fact: the message
    // that crosses it is taken, and producers are refused a moment later.
    let mut accepted = 0u32;
    let err = loop {
        match producer.send(&accepted) {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted <= 10, "a queue bounded to 3 took {accepted}");
    };
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    match backend {
        Backend::Embedded => assert_eq!(accepted, 3),
        Backend::Amqp => assert!(accepted >= 3, "only {accepted} taken: {err}"),
    }
    let err = producer.try_send(&99).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    let mut waiting = queue.producer::<u32>(ProducerOptions::new())?;
    let err = waiting
        .send_timeout(&99, Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");

    // Consumers make room; the waiting producer gets in.
    let mut consumer = queue.consumer::<u32>()?;
    for expected in 0..accepted {
        let delivery = consumer.recv_timeout(WAIT)?;
        assert_eq!(*delivery.message(), expected);
        consumer.ack(&delivery)?;
    }
    waiting.send_timeout(&99, WAIT)?;
    let delivery = consumer.recv_timeout(WAIT)?;
    assert_eq!(*delivery.message(), 99);
    consumer.ack(&delivery)?;

    // A bound in bytes.
    let config = QueueConfig::new()
        .with_segment_len(4096)
        .with_max_bytes(16384);
    let queue = place.queue(&config)?;
    let mut producer =
        queue.producer::<Vec<u8>>(ProducerOptions::new().with_when_full(WhenFull::Fail))?;
    let payload = vec![7u8; 1000];
    let mut sent = 0;
    let err = loop {
        match producer.send(&payload) {
            Ok(_) => sent += 1,
            Err(err) => break err,
        }
        assert!(sent < 100, "the byte bound never applied");
    };
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    assert!(sent >= 8, "only {sent} KiB taken into 16 KiB");
    Ok(())
}

fn a_dropped_consumer_gives_its_deliveries_back_at_once(place: &mut Place) -> Result<()> {
    let backend = place.backend;
    let queue = place.queue(&QueueConfig::new())?;
    queue.producer::<u32>(ProducerOptions::new())?.send(&7)?;
    let mut first = queue.consumer::<u32>()?;
    let delivery = first.recv_timeout(WAIT)?;
    let mut second = queue.consumer::<u32>()?;
    let err = second.recv_timeout(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "held by the first: {err}");
    drop(first);
    let again = second.recv_timeout(WAIT)?;
    assert_eq!((again.seq(), again.deliveries()), (delivery.seq(), 2));
    second.ack(&again)?;
    // A delivery settles only on the backend that made it, and acking twice is harmless
    // on the embedded backend; on RabbitMQ the first consumer's connection is gone.
    match backend {
        Backend::Embedded => second.ack(&delivery)?,
        Backend::Amqp => {
            let err = second.ack(&delivery).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PeerClosed, "{err}");
        }
    }
    Ok(())
}

/// Code written against `ipc_core`'s traits, knowing nothing of queues.
fn pump<S: Sender<Message = u32>>(sender: &mut S, count: u32) -> ipc_core::Result<()> {
    for i in 0..count {
        sender.send(&i)?;
    }
    sender.flush()
}

/// How long a broker's counts may trail the acknowledgements that settled its messages.
const COUNTS_SETTLE: Duration = Duration::from_secs(10);

/// The queue's stats once its depth has come down to 0, or the last stats read when it has
/// not within [`COUNTS_SETTLE`]. An embedded queue counts at once; RabbitMQ applies
/// acknowledgements (which it does not confirm) a little later, longer under load.
fn settled_stats(queue: &Queue) -> ipc_core::Result<ipc_queue::Stats> {
    let deadline = std::time::Instant::now() + COUNTS_SETTLE;
    loop {
        let stats = queue.stats()?;
        if stats.depth == 0 || std::time::Instant::now() >= deadline {
            return Ok(stats);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`settled_stats`] for an [`AsyncQueue`].
async fn settled_stats_async(queue: &AsyncQueue) -> ipc_core::Result<ipc_queue::Stats> {
    let deadline = std::time::Instant::now() + COUNTS_SETTLE;
    loop {
        let stats = queue.stats().await?;
        if stats.depth == 0 || std::time::Instant::now() >= deadline {
            return Ok(stats);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn drain<R: Receiver<Message = u32>>(receiver: &mut R, count: u32) -> ipc_core::Result<u64> {
    let mut sum = 0;
    for _ in 0..count {
        sum += u64::from(receiver.recv_timeout(WAIT)?);
    }
    Ok(sum)
}

fn generic_code_runs_through_the_core_traits(place: &mut Place) -> Result<()> {
    let queue = place.queue(&QueueConfig::new())?;
    pump(&mut queue.producer::<u32>(ProducerOptions::new())?, 100)?;
    assert_eq!(drain(&mut queue.consumer::<u32>()?, 100)?, 4950);
    // The trait's receive acknowledges: nothing comes back. On RabbitMQ, a quorum queue
    // may drop acknowledgements sent just before their channel closes and deliver those
    // messages again (rabbitmq-server#10327, open; our consumer closes its channel before
    // its connection, which is all a client can do): at least once allows that, so a few
    // may come back there, marked as delivered before. Without the acknowledgements all
    // 100 would.
    let mut again = queue.consumer::<u32>()?;
    let mut returned = Vec::new();
    while let Some(delivery) = again.try_recv()? {
        assert!(
            place.backend == Backend::Amqp && delivery.deliveries() >= 2,
            "message {} came back after it was acknowledged ({} deliveries)",
            delivery.message(),
            delivery.deliveries()
        );
        returned.push(*delivery.message());
        again.ack(&delivery)?;
    }
    // How many depends on how far the broker was behind when the channel closed: up to 13,
    // all among the last acknowledged, in this project's runs. A broken acknowledgement
    // path would bring back all 100.
    assert!(
        returned.len() <= 50,
        "{} acknowledged messages came back: {returned:?}",
        returned.len()
    );
    if !returned.is_empty() {
        println!(
            "the broker delivered {returned:?} again after their acknowledgements (rabbitmq-server#10327)"
        );
    }
    // (`again` stays open: its own last acknowledgements cannot be dropped by a close.)
    assert_eq!(settled_stats(&queue)?.depth, 0);
    drop(again);
    Ok(())
}

fn async_handles_survive_a_cancelled_recv_and_drop_inside_a_runtime(
    place: &mut Place,
) -> Result<()> {
    let address = place.address();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let queue = Queue::create_async(&address, &QueueConfig::new()).await?;
        let err = AsyncQueue::create(&address, &QueueConfig::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        let reopened = Queue::open_async(&address).await?;
        let mut producer = reopened.producer::<String>(ProducerOptions::new()).await?;
        let mut consumer = queue.consumer::<String>().await?;
        // A recv cancelled while the queue is empty loses nothing.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        assert!(cancelled.is_err(), "nothing was sent yet");
        assert!(consumer.try_recv().await?.is_none());
        let err = consumer
            .recv_timeout(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        let mut seqs = Vec::new();
        for i in 0..20 {
            seqs.push(producer.send(&format!("async {i}")).await?.seq());
        }
        AsyncSender::send(&mut producer, &"via the trait".to_owned()).await?;
        AsyncSender::flush(&mut producer).await?;
        // Receives cancelled at every stage (waiting, looking, holding a message) lose
        // nothing and duplicate nothing: each message comes out once, in order.
        let mut cancels = 0u32;
        let mut got = Vec::new();
        while got.len() < seqs.len() {
            match tokio::time::timeout(Duration::from_micros(200), consumer.recv()).await {
                Ok(delivery) => got.push(delivery?),
                Err(_) => cancels += 1,
            }
        }
        println!("{cancels} receives cancelled");
        for (i, (delivery, seq)) in got.iter().zip(&seqs).enumerate() {
            assert_eq!(delivery.message(), &format!("async {i}"));
            assert_eq!(delivery.seq(), *seq);
            assert_eq!(delivery.deliveries(), 1);
            consumer.ack(delivery).await?;
        }
        assert_eq!(AsyncReceiver::recv(&mut consumer).await?, "via the trait");
        assert_eq!(settled_stats_async(&queue).await?.depth, 0);
        // Dropping the handles and the queues inside the runtime must not panic.
        drop(producer);
        drop(consumer);
        drop(reopened);
        queue.delete().await?;
        let err = Queue::open_async(&address).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        Ok::<(), anyhow::Error>(())
    })?;
    drop(runtime);

    // Handles that outlive the runtime they were opened on drop without a panic, outside
    // any runtime.
    let address = place.address();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handles = runtime.block_on(async {
        let queue = AsyncQueue::create(&address, &QueueConfig::new()).await?;
        let mut producer = queue.producer::<String>(ProducerOptions::new()).await?;
        producer.send(&"left behind".to_owned()).await?;
        let consumer = queue.consumer::<String>().await?;
        Ok::<_, anyhow::Error>((queue, producer, consumer))
    })?;
    // And handles owned by a task still waiting when its runtime shuts down.
    let (queue, producer, consumer) = handles;
    let more = runtime.block_on(async {
        let mut producer = queue.producer::<String>(ProducerOptions::new()).await?;
        producer.send(&"also left".to_owned()).await?;
        Ok::<_, anyhow::Error>((producer, queue.consumer::<String>().await?))
    })?;
    runtime.spawn(async move {
        let _owned = more;
        std::future::pending::<()>().await;
    });
    drop(runtime);
    drop((queue, producer, consumer));
    // The messages are still there for the blocking api.
    let queue = Queue::open(&address)?;
    let mut consumer = queue.consumer::<String>()?;
    let mut texts = Vec::new();
    for _ in 0..2 {
        let delivery = consumer.recv_timeout(WAIT)?;
        texts.push(delivery.message().clone());
        consumer.ack(&delivery)?;
    }
    texts.sort();
    assert_eq!(texts, ["also left", "left behind"]);
    Ok(())
}

fn async_api_settles_like_the_blocking_one_on_a_current_thread_runtime(
    place: &mut Place,
) -> Result<()> {
    let backend = place.backend;
    let address = place.address();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let queue =
            AsyncQueue::create(&address, &QueueConfig::new().with_max_deliveries(0)).await?;
        let mut consumer = queue.consumer::<String>().await?;
        // The consumer waits first, on the runtime's only thread: its wait must not block
        // the thread, or the producer task below could never run.
        let waiting = tokio::spawn(async move {
            let delivery = consumer.recv().await?;
            Ok::<_, ipc_core::Error>((consumer, delivery))
        });
        let sender = queue.clone();
        let producing = tokio::spawn(async move {
            let mut producer = sender.producer::<String>(ProducerOptions::new()).await?;
            let mut seqs = Vec::new();
            for text in ["first", "second", "third"] {
                seqs.push(producer.send(&text.to_owned()).await?.seq());
            }
            Ok::<_, ipc_core::Error>(seqs)
        });
        let seqs = producing.await??;
        let (mut consumer, first) = waiting.await??;
        assert_eq!(first.message(), "first");
        assert_eq!(first.seq(), seqs[0]);
        // nack: delivered again, counted (where it lines up with the others depends on
        // the backend and on what the broker has pushed to the consumer already).
        consumer.nack(&first, None).await?;
        let mut by_text = BTreeMap::new();
        for _ in 0..3 {
            let delivery = consumer.recv().await?;
            by_text.insert(delivery.message().clone(), delivery);
        }
        let counts: Vec<(&str, u32)> = by_text
            .iter()
            .map(|(text, delivery)| (text.as_str(), delivery.deliveries()))
            .collect();
        assert_eq!(counts, [("first", 2), ("second", 1), ("third", 1)]);
        consumer.ack(&by_text["first"]).await?;
        consumer.ack(&by_text["third"]).await?;
        // A delayed nack is embedded only.
        let delayed = consumer
            .nack(&by_text["second"], Some(Duration::from_millis(1)))
            .await;
        let second = match backend {
            Backend::Embedded => {
                delayed?;
                consumer.recv().await?
            }
            Backend::Amqp => {
                let err = delayed.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
                by_text.remove("second").expect("received above")
            }
        };
        assert_eq!(second.message(), "second");
        consumer.reject(&second, "not wanted").await?;
        // The rejected message is in the dead-letter queue.
        let mut dead = queue.dead_letters()?.consumer::<DeadLetter>().await?;
        let letter = dead.recv_timeout(WAIT).await?;
        assert_eq!(letter.message().seq, seqs[1]);
        assert!(
            letter.message().reason.contains("rejected"),
            "{:?}",
            letter.message()
        );
        assert_eq!(
            ipc_core::decode::<String>(&letter.message().payload)?,
            "second"
        );
        dead.ack(&letter).await?;
        let stats = settled_stats_async(&queue).await?;
        assert_eq!(stats.depth, 0, "{stats:?}");
        // The blocking api in the same place: RabbitMQ refuses it inside a runtime (it
        // would have to block the runtime's only thread); the embedded backend serves it.
        let blocking = Queue::open(&address).and_then(|queue| queue.stats());
        match backend {
            Backend::Embedded => assert_eq!(blocking?.depth, 0),
            Backend::Amqp => {
                let err = blocking.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
                assert!(err.to_string().contains("inside a tokio runtime"), "{err}");
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

fn async_producer_and_consumer_processes_exchange_messages(place: &mut Place) -> Result<()> {
    let (address, arg) = place.address_and_arg();
    Queue::create(&address, &QueueConfig::new())?;
    let common = ["--address", arg.as_str(), "--count", "300", "--size", "100"];
    let mut consumer = Peer::spawn_role("async consumer", "async-consume", common)?;
    consumer.expect_prefixed("ready", WAIT)?;
    let mut producer = Peer::spawn_role("async producer", "async-produce", common)?;
    let produced = producer.expect_prefixed("ok ", WAIT)?;
    assert_eq!(field(&produced, "sent"), Some("300"), "{produced}");
    producer.wait_success(WAIT)?;
    let consumed = consumer.expect_prefixed("ok ", WAIT)?;
    assert_eq!(field(&consumed, "distinct"), Some("300"), "{consumed}");
    consumer.wait_success(WAIT)?;
    Ok(())
}

fn async_producer_sends_batches_and_ttls_and_meets_a_full_queue(place: &mut Place) -> Result<()> {
    let backend = place.backend;
    let bounded = place.address();
    let plain = place.address();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // A full queue: the same bounds as the blocking api (exact embedded, approximate
        // on a quorum queue).
        let queue = AsyncQueue::create(&bounded, &QueueConfig::new().with_max_messages(3)).await?;
        let failing = ProducerOptions::new().with_when_full(WhenFull::Fail);
        let mut producer = queue.producer::<u32>(failing).await?;
        let mut accepted = 0u32;
        let err = loop {
            match producer.send(&accepted).await {
                Ok(_) => accepted += 1,
                Err(err) => break err,
            }
            assert!(accepted <= 10, "a queue bounded to 3 took {accepted}");
        };
        assert_eq!(err.kind(), ErrorKind::Full, "{err}");
        match backend {
            Backend::Embedded => assert_eq!(accepted, 3),
            Backend::Amqp => assert!(accepted >= 3, "only {accepted} taken: {err}"),
        }
        let err = producer.try_send(&99).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Full, "{err}");
        let mut waiting = queue.producer::<u32>(ProducerOptions::new()).await?;
        let err = waiting
            .send_timeout(&99, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        let mut consumer = queue.consumer::<u32>().await?;
        for expected in 0..accepted {
            let delivery = consumer.recv_timeout(WAIT).await?;
            assert_eq!(*delivery.message(), expected);
            consumer.ack(&delivery).await?;
        }
        waiting.send_timeout(&99, WAIT).await?;
        let delivery = consumer.recv_timeout(WAIT).await?;
        assert_eq!(*delivery.message(), 99);
        consumer.ack(&delivery).await?;

        // A batch: one receipt per message, in order; a message's own time-to-live. (On
        // RabbitMQ a message expires at the head of the queue, so the short-lived one goes
        // first.)
        let queue = AsyncQueue::create(&plain, &QueueConfig::new()).await?;
        let mut producer = queue.producer::<u32>(ProducerOptions::new()).await?;
        producer
            .send_with_ttl(&1, Duration::from_millis(20))
            .await?;
        let numbers: Vec<u32> = (10..15).collect();
        let refs: Vec<&u32> = numbers.iter().collect();
        let receipts = producer.send_batch(&refs).await?;
        assert_eq!(receipts.len(), 5);
        assert!(
            receipts.windows(2).all(|w| w[0].seq() + 1 == w[1].seq()),
            "{receipts:?}"
        );
        assert!(producer.send_batch(&[]).await?.is_empty());
        // Lets the TTL pass; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut consumer = queue.consumer::<u32>().await?;
        for (number, receipt) in numbers.iter().zip(&receipts) {
            let delivery = consumer.recv_timeout(WAIT).await?;
            assert_eq!(
                (delivery.message(), delivery.seq()),
                (number, receipt.seq())
            );
            consumer.ack(&delivery).await?;
        }
        let mut dead = queue.dead_letters()?.consumer::<DeadLetter>().await?;
        let letter = dead.recv_timeout(WAIT).await?;
        assert!(
            letter.message().reason.starts_with("expired"),
            "{:?}",
            letter.message()
        );
        assert_eq!(letter.message().decode::<u32>()?, 1);
        dead.ack(&letter).await?;
        // Too large for the queue (1 MiB by default): an error, and nothing is sent.
        let mut bytes = queue.producer::<Vec<u8>>(ProducerOptions::new()).await?;
        let err = bytes.send(&vec![0; 2 << 20]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        let err = bytes.try_send(&vec![0; 2 << 20]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        assert!(consumer.try_recv().await?.is_none());
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
