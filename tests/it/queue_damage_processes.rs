//! Damage to an embedded queue's files between processes, as an operator or a power failure
//! leaves it: a producer process writes and exits, the files are cut, deleted or zeroed,
//! and new consumer and producer processes must report every loss (never a clean, empty
//! queue), never reuse a lost sequence number, and deliver again what lost its state.
//! The in-process variants, with every cut position and damage kind, are in
//! `queue_corruption.rs`; these run the `queue-*` roles of `ipc-peer` as real processes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ipc_tests::{Peer, TempDir, Watchdog};

const WAIT: Duration = Duration::from_secs(120);
const COUNT: u64 = 200;

/// A producer process sends `count` durable messages (created with `--create 1`) and exits;
/// returns the sequence numbers of its receipts.
fn produce(queue: &str, count: u64, incarnation: u32) -> Result<Vec<u64>> {
    let count_s = count.to_string();
    let incarnation_s = incarnation.to_string();
    let mut producer = Peer::spawn_role(
        "producer",
        "queue-produce",
        [
            "--address",
            queue,
            "--create",
            "1",
            "--incarnation",
            &incarnation_s,
            "--count",
            &count_s,
            "--size",
            "64",
            "--segment-len",
            "4096",
        ],
    )?;
    let mut seqs = Vec::new();
    loop {
        let line = producer.expect_line(WAIT)?;
        if line.starts_with("ok ") {
            break;
        }
        let seq = line
            .strip_prefix("sent ")
            .and_then(|rest| rest.split_whitespace().nth(3))
            .and_then(|seq| seq.parse().ok())
            .with_context(|| format!("producer said `{line}`"))?;
        seqs.push(seq);
    }
    producer.wait_success(WAIT)?;
    Ok(seqs)
}

/// What a draining consumer process saw: distinct messages received, and the loss reports.
struct Drained {
    received: u64,
    losses: Vec<String>,
}

/// A consumer process receives (and acknowledges) until the queue stays empty.
fn drain(queue: &str) -> Result<Drained> {
    let mut consumer = Peer::spawn_role(
        "consumer",
        "queue-consume",
        [
            "--address",
            queue,
            "--idle-exit-ms",
            "300",
            "--quiet",
            "1",
            "--losses",
            "1",
        ],
    )?;
    let mut losses = Vec::new();
    let received = loop {
        let line = consumer.expect_line(WAIT)?;
        if let Some(loss) = line.strip_prefix("loss ") {
            losses.push(loss.to_owned());
        } else if let Some(rest) = line.strip_prefix("ok ") {
            break ipc_tests::field(rest, "received")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("consumer said `{line}`"))?;
        }
    };
    consumer.wait_success(WAIT)?;
    Ok(Drained { received, losses })
}

/// `(depth, lost)` as a `queue-stats` process reads them.
fn stats(queue: &str) -> Result<(u64, u64)> {
    let mut peer = Peer::spawn_role("stats", "queue-stats", ["--address", queue])?;
    let line = peer.expect_prefixed("ok", WAIT)?;
    peer.wait_success(WAIT)?;
    let number = |key: &str| -> Result<u64> {
        ipc_tests::field(&line, key)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("stats said `{line}`"))
    };
    Ok((number("depth")?, number("lost")?))
}

/// The segment files of the queue at `queue`, oldest first.
fn segments(queue: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut segments: Vec<_> = std::fs::read_dir(queue.join("segments"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    ensure!(
        segments.len() >= 3,
        "expected several segments, found {segments:?}"
    );
    Ok(segments)
}

/// The newest segment file: the one the truncation and deletion hit.
fn last_segment(queue: &Path) -> Result<std::path::PathBuf> {
    segments(queue)?.pop().context("no segment")
}

/// Cuts or deletes the segment that a producer process had synced, then checks that
/// consumer processes report the loss, a producer process gets new numbers only, and the
/// queue goes on.
fn damaged_segment_is_reported(damage: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = TempDir::new("queue-damage")?;
    let path = dir.path().join("q");
    let queue = path.to_str().context("utf-8 path")?.to_owned();
    let first = produce(&queue, COUNT, 0)?;
    ensure!(first.len() as u64 == COUNT);
    damage(&last_segment(&path)?)?;

    let drained = drain(&queue)?;
    ensure!(
        !drained.losses.is_empty(),
        "receipted messages vanished without a report: {} of {COUNT} received, no loss reported",
        drained.received
    );
    ensure!(
        drained.received < COUNT,
        "{} of {COUNT} received after the damage",
        drained.received
    );
    let (depth, lost) = stats(&queue)?;
    ensure!(depth == 0, "depth {depth} after the drain");
    ensure!(
        lost + drained.received >= COUNT,
        "lost={lost} and {} received do not account for {COUNT} receipted messages",
        drained.received
    );

    // A receipt after the damage must follow a sync of its own: the lost numbers are never
    // handed out again.
    let last_before = *first.last().context("no receipts")?;
    let again = produce(&queue, 3, 1)?;
    ensure!(
        again.iter().all(|seq| *seq > last_before),
        "new receipts {again:?} reuse numbers up to {last_before} that were lost"
    );
    let after = drain(&queue)?;
    ensure!(
        after.received == 3 && after.losses.is_empty(),
        "after the damage: {} received, losses {:?}",
        after.received,
        after.losses
    );
    Ok(())
}

#[test]
fn a_cut_segment_is_a_reported_loss_across_processes() -> Result<()> {
    let watchdog = Watchdog::new("a cut segment", WAIT);
    damaged_segment_is_reported(|segment| {
        let len = crate::queue_support::records_end(segment)?;
        let file = std::fs::OpenOptions::new().write(true).open(segment)?;
        file.set_len(len / 2)?;
        Ok(())
    })?;
    watchdog.disarm();
    Ok(())
}

#[test]
fn a_deleted_segment_is_a_reported_loss_across_processes() -> Result<()> {
    let watchdog = Watchdog::new("a deleted segment", WAIT);
    damaged_segment_is_reported(|segment| Ok(std::fs::remove_file(segment)?))?;
    watchdog.disarm();
    Ok(())
}

/// The byte ranges of the state-log records (FORMAT.md: 40-byte header, `len` at 8, `kind`
/// at 12, `seq` at 16) of kinds `kinds` for message `seq`.
fn state_records_of(state: &[u8], seq: u64, kinds: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + 40 <= state.len() && &state[at..at + 4] == b"IPQR" {
        let len = u32::from_le_bytes(state[at + 8..at + 12].try_into().unwrap()) as usize;
        let kind = state[at + 12];
        let record_seq = u64::from_le_bytes(state[at + 16..at + 24].try_into().unwrap());
        let end = at + 40 + len;
        if record_seq == seq && kinds.contains(&kind) {
            found.push(at..end);
        }
        at = end;
    }
    found
}

/// Zeroing the lease and the ack of one message in the consumer-state log (as a lost page
/// would) must not leave it neither done nor deliverable: it comes again, the queue empties,
/// and the segments behind it are reclaimed.
#[test]
fn a_message_whose_state_is_zeroed_comes_again_and_the_queue_empties_across_processes() -> Result<()>
{
    let watchdog = Watchdog::new("zeroed state records", WAIT);
    let dir = TempDir::new("queue-zero-state")?;
    let path = dir.path().join("q");
    let queue = path.to_str().context("utf-8 path")?.to_owned();
    let seqs = produce(&queue, COUNT, 0)?;
    let mut consumer = Peer::spawn_role(
        "consumer",
        "queue-consume",
        [
            "--address",
            queue.as_str(),
            "--expect",
            "100",
            "--quiet",
            "1",
        ],
    )?;
    consumer.expect_prefixed("ok", WAIT)?;
    consumer.wait_success(WAIT)?;

    // A message near the end of what was consumed: its records lie between valid ones, and
    // its segment (4 KiB, about 37 messages) still holds messages to deliver, so it stays.
    let victim = seqs[90];
    let state_path = path.join("state.log");
    let mut state = std::fs::read(&state_path)?;
    let ranges = state_records_of(&state, victim, &[10, 11]);
    ensure!(
        ranges.len() == 2,
        "expected the lease and the ack of message {victim} in state.log, found {ranges:?}"
    );
    for range in ranges {
        state[range].fill(0);
    }
    std::fs::write(&state_path, &state)?;

    let again = drain(&queue)?;
    ensure!(
        again.received == COUNT - 100 + 1,
        "{} messages delivered, expected the {} not consumed and message {victim} again, \
         whose state was destroyed",
        again.received,
        COUNT - 100
    );
    let (depth, _) = stats(&queue)?;
    ensure!(
        depth == 0,
        "depth {depth}: a message whose state was destroyed is stuck"
    );
    // The floor moves past it: new messages are delivered and the old segments go.
    produce(&queue, 3, 1)?;
    let after = drain(&queue)?;
    ensure!(after.received == 3, "after: {} received", after.received);
    let left = std::fs::read_dir(path.join("segments"))?.count();
    ensure!(left <= 2, "{left} segment files left: the floor stopped");
    watchdog.disarm();
    Ok(())
}
