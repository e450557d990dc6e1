//! ipc-queue between real processes: time-decoupled producer and consumer, competing
//! consumers, and the kill loop (producers and consumers SIGKILLed at random moments).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ipc_queue::{Queue, QueueConfig};
use ipc_tests::{Peer, TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(60);

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Reads the peer's lines until it exits (or was killed and its stdout closed).
fn all_lines(peer: &mut Peer) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = peer.expect_line(WAIT) {
        lines.push(line);
    }
    lines
}

#[test]
fn a_producer_that_exits_before_the_consumer_starts_delivers_everything() -> Result<()> {
    let _watchdog = Watchdog::new("time-decoupled", WAIT);
    let dir = TempDir::new("ipcq-later")?;
    // The producer creates the queue, fills it and exits; only then does a consumer start.
    let path = path_arg(&dir.path().join("q"));
    let mut producer = Peer::spawn_role(
        "producer",
        "queue-produce",
        [
            "--address",
            &path,
            "--create",
            "1",
            "--count",
            "2000",
            "--batch",
            "50",
            "--size",
            "100",
            "--quiet",
            "1",
        ],
    )?;
    let outcome = producer.expect_prefixed("ok", WAIT)?;
    assert!(outcome.starts_with("sent=2000"), "{outcome}");
    producer.wait_success(WAIT)?;
    drop(producer);

    let mut consumer = Peer::spawn_role(
        "consumer",
        "queue-consume",
        ["--address", &path, "--expect", "2000", "--quiet", "1"],
    )?;
    let outcome = consumer.expect_prefixed("ok", WAIT)?;
    consumer.wait_success(WAIT)?;
    assert!(outcome.starts_with("received=2000 "), "{outcome}");
    let mut stats = Peer::spawn_role("stats", "queue-stats", ["--address", &path])?;
    let outcome = stats.expect_prefixed("ok", WAIT)?;
    assert!(outcome.starts_with("depth=0 unacked=0"), "{outcome}");
    Ok(())
}

#[test]
fn competing_consumer_processes_share_the_messages_exactly_once() -> Result<()> {
    let _watchdog = Watchdog::new("competing consumers", WAIT);
    let dir = TempDir::new("ipcq-compete")?;
    let path = dir.path().join("q");
    let config = QueueConfig::new()
        .with_segment_len(64 << 10)
        .with_state_compaction_at(4096);
    Queue::create(&path, &config)?;
    let path = path_arg(&path);
    let producers: Vec<Peer> = (0..2)
        .map(|id| {
            let id = id.to_string();
            Peer::spawn_role(
                format!("producer {id}"),
                "queue-produce",
                [
                    "--address",
                    &path,
                    "--producer",
                    &id,
                    "--count",
                    "500",
                    "--batch",
                    "10",
                    "--quiet",
                    "1",
                ],
            )
        })
        .collect::<Result<_>>()?;
    let mut consumers: Vec<Peer> = (0..3)
        .map(|i| {
            Peer::spawn_role(
                format!("consumer {i}"),
                "queue-consume",
                ["--address", &path, "--idle-exit-ms", "300"],
            )
        })
        .collect::<Result<_>>()?;
    for mut producer in producers {
        producer.wait_success(WAIT)?;
    }
    let mut seen = BTreeSet::new();
    for consumer in &mut consumers {
        for line in all_lines(consumer) {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields[0] == "got" {
                let key = (fields[1].to_owned(), fields[3].to_owned());
                assert!(seen.insert(key), "delivered twice: {line}");
            }
        }
        assert!(consumer.wait(WAIT)?.success());
    }
    assert_eq!(seen.len(), 1000);
    // 1000 leases and acks are about 84 KB of state records: compaction kept it small.
    let state_len = std::fs::metadata(Path::new(&path).join("state.log"))?.len();
    assert!(state_len < 16 << 10, "state log of {state_len} bytes");
    assert_eq!(Queue::open(&path)?.stats()?.depth, 0);
    Ok(())
}

#[test]
fn a_killed_consumer_process_gives_its_lease_back_at_once() -> Result<()> {
    let _watchdog = Watchdog::new("killed consumer", WAIT);
    let dir = TempDir::new("ipcq-lease")?;
    let path = dir.path().join("q");
    // A lease far longer than the test: only the death of the holder can end it.
    let queue = Queue::create(
        &path,
        &QueueConfig::new().with_lease(Duration::from_secs(3600)),
    )?;
    let mut producer = Peer::spawn_role(
        "producer",
        "queue-produce",
        [
            "--address",
            &path_arg(&path),
            "--count",
            "1",
            "--quiet",
            "1",
        ],
    )?;
    producer.wait_success(WAIT)?;
    let mut holder = Peer::spawn_role(
        "holder",
        "queue-consume",
        ["--address", &path_arg(&path), "--hold", "1"],
    )?;
    let got = holder.expect_prefixed("got", WAIT)?;
    assert!(got.ends_with(" 0 1"), "{got}");
    let mut consumer = queue.consumer::<RawJob>()?;
    assert!(consumer.try_recv()?.is_none(), "the lease is held");
    assert_eq!(queue.stats()?.unacked, Some(1));
    holder.kill()?;
    let delivery = consumer.recv_timeout(WAIT)?;
    assert_eq!((delivery.seq(), delivery.deliveries()), (0, 2));
    consumer.ack(&delivery)?;
    assert_eq!(queue.stats()?.depth, 0);
    Ok(())
}

/// The shape of the roles' `QueueJob`, enough to receive one here.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // Fields are read by the decoder only.
struct RawJob {
    producer: u32,
    incarnation: u32,
    n: u64,
    payload: Vec<u8>,
}

/// A message's identity: (producer, incarnation, n).
type Key = (u32, u32, u64);

/// What the kill loop's peers printed.
#[derive(Default)]
struct Record {
    /// Messages with a receipt: (producer, incarnation, n) -> seq.
    receipted: HashMap<Key, u64>,
    /// Deliveries: seq -> [(key, delivery count)].
    delivered: BTreeMap<u64, Vec<(Key, u32)>>,
    /// Acknowledged: seq -> the delivery counts acknowledged.
    acked: BTreeMap<u64, Vec<u32>>,
    /// Deliveries whose payload was not what was sent.
    corrupt: usize,
}

/// What the kill loop measured.
struct Figures {
    receipted: usize,
    /// Receipted but never delivered.
    lost: usize,
    /// Deliveries beyond the first of a message (all of unacknowledged deliveries).
    duplicates: usize,
    corrupt: usize,
}

impl Record {
    fn add(&mut self, line: &str) -> Result<()> {
        let fields: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .context("short line")?
                .parse::<u64>()
                .with_context(|| format!("field {i} of `{line}`"))
        };
        match fields[0] {
            "sent" if fields.len() == 5 => {
                let key = (num(1)? as u32, num(2)? as u32, num(3)?);
                self.receipted.insert(key, num(4)?);
            }
            "got" if fields.len() == 6 => {
                let key = (num(1)? as u32, num(2)? as u32, num(3)?);
                self.delivered
                    .entry(num(4)?)
                    .or_default()
                    .push((key, num(5)? as u32));
            }
            "acked" if fields.len() == 3 => {
                self.acked.entry(num(1)?).or_default().push(num(2)? as u32);
            }
            "corrupt" if fields.len() == 2 => self.corrupt += 1,
            "ok" => {}
            _ => bail!("unexpected line `{line}`"),
        }
        Ok(())
    }

    fn check(&self) -> Result<Figures> {
        // Every receipted message was delivered, as itself.
        let mut lost = 0;
        for (key, seq) in &self.receipted {
            let Some(deliveries) = self.delivered.get(seq) else {
                eprintln!("message {key:?} got receipt {seq} but was never delivered");
                lost += 1;
                continue;
            };
            ensure!(
                deliveries.iter().all(|(k, _)| k == key),
                "seq {seq} delivered as {deliveries:?}, receipt was for {key:?}"
            );
        }
        // Duplicates only for deliveries that were not acknowledged: after an ack of
        // delivery number c, no delivery numbered above c.
        let mut duplicates = 0;
        for (seq, deliveries) in &self.delivered {
            duplicates += deliveries.len() - 1;
            let keys: BTreeSet<_> = deliveries.iter().map(|(k, _)| k).collect();
            ensure!(
                keys.len() == 1,
                "seq {seq} delivered as different messages: {deliveries:?}"
            );
            if let Some(first_ack) = self.acked.get(seq).and_then(|a| a.iter().min()) {
                ensure!(
                    deliveries.iter().all(|(_, count)| count <= first_ack),
                    "seq {seq} delivered again after delivery {first_ack} was acknowledged: {deliveries:?}"
                );
            }
        }
        Ok(Figures {
            receipted: self.receipted.len(),
            lost,
            duplicates,
            corrupt: self.corrupt,
        })
    }
}

#[test]
fn kill_loop_loses_nothing_receipted_and_duplicates_only_unacknowledged() -> Result<()> {
    // CI runs a short loop; `IPC_SOAK=1` (or `IPC_QUEUE_KILL_ROUNDS=N`) a long one.
    let soak = std::env::var_os("IPC_SOAK").is_some();
    let rounds: usize = std::env::var("IPC_QUEUE_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if soak { 1000 } else { 50 });
    let _watchdog = Watchdog::new("kill loop", WAIT + Duration::from_secs(rounds as u64 * 2));
    let dir = TempDir::new("ipcq-kill")?;
    let path = dir.path().join("q");
    // Small segments and a small state log: rollover, reclamation and compaction all
    // happen many times, and get killed in the middle.
    let config = QueueConfig::new()
        .with_segment_len(16 << 10)
        .with_state_compaction_at(32 << 10)
        .with_max_deliveries(0)
        // Bounded, so producers wait for consumers (across processes) instead of piling up
        // a backlog that every restarted consumer must scan.
        .with_max_messages(3000);
    Queue::create(&path, &config)?;
    let path = path_arg(&path);
    let seed = std::env::var("IPC_QUEUE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    eprintln!("kill loop: {rounds} rounds, seed {seed} (IPC_QUEUE_KILL_SEED to repeat)");
    let mut rng = Rng(seed | 1);

    let mut incarnation = 0u32;
    let spawn = |slot: usize, incarnation: &mut u32| -> Result<Peer> {
        *incarnation += 1;
        let inc = incarnation.to_string();
        // Producer 0 sends batches, producer 1 pipelined sends (a window of 16);
        // consumer 2 acknowledges each delivery, consumer 3 eight at a time (`ack_batch`).
        if slot < 2 {
            let id = slot.to_string();
            let (how, many) = if slot == 0 {
                ("--batch", "4")
            } else {
                ("--window", "16")
            };
            Peer::spawn_role(
                format!("producer {slot}.{inc}"),
                "queue-produce",
                [
                    "--address",
                    &path,
                    "--producer",
                    &id,
                    "--incarnation",
                    &inc,
                    how,
                    many,
                    "--size",
                    "200",
                ],
            )
        } else {
            let ack_batch = if slot == 2 { "1" } else { "8" };
            Peer::spawn_role(
                format!("consumer {slot}.{inc}"),
                "queue-consume",
                ["--address", &path, "--ack-batch", ack_batch],
            )
        }
    };
    let mut record = Record::default();
    let mut peers: Vec<Peer> = (0..4)
        .map(|slot| spawn(slot, &mut incarnation))
        .collect::<Result<_>>()?;
    for round in 0..rounds {
        let slot = (rng.next() % 4) as usize;
        // A random moment: after a random number of lines of the victim's output.
        let lines = rng.next() % 40;
        for _ in 0..lines {
            let line = peers[slot]
                .expect_line(WAIT)
                .with_context(|| format!("round {round}: waiting for peer {slot}"))?;
            record.add(&line)?;
        }
        peers[slot].kill()?;
        for line in all_lines(&mut peers[slot]) {
            record.add(&line)?;
        }
        peers[slot] = spawn(slot, &mut incarnation)?;
    }
    // Stop the producers, then let a fresh consumer drain what is left.
    for peer in peers.iter_mut().take(2) {
        peer.kill()?;
    }
    for peer in &mut peers {
        if !peer.name().starts_with("producer") {
            peer.kill()?;
        }
        for line in all_lines(peer) {
            record.add(&line)?;
        }
    }
    let mut last = Peer::spawn_role(
        "final consumer",
        "queue-consume",
        ["--address", &path, "--idle-exit-ms", "300"],
    )?;
    for line in all_lines(&mut last) {
        record.add(&line)?;
    }
    assert!(last.wait(WAIT)?.success(), "final consumer failed");
    let figures = record.check()?;
    eprintln!(
        "kill loop: {rounds} kill rounds, {} receipted, {} lost, {} corrupt deliveries, {} duplicates (redeliveries of unacknowledged messages)",
        figures.receipted, figures.lost, figures.corrupt, figures.duplicates
    );
    assert_eq!(
        (figures.lost, figures.corrupt),
        (0, 0),
        "receipted messages lost, corrupt deliveries"
    );
    assert!(
        figures.receipted > rounds,
        "too few messages to mean anything: {}",
        figures.receipted
    );
    let stats = Queue::open(&path)?.stats()?;
    assert_eq!(
        (
            stats.depth,
            stats.storage.as_ref().map(|s| s.lost),
            stats.dead_letters
        ),
        (0, Some(0), 0),
        "{stats:?}"
    );
    Ok(())
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
