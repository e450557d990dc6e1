//! What several queue test modules share: producer processes whose every receipt must come
//! out of a consumer process.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use ipc_tests::Peer;

/// Runs `producers` `queue-produce` processes of `each` 1000-byte messages on the queue at
/// `address` (with `extra` arguments, e.g. a window), collects every receipt they print,
/// then drains the queue with one `queue-consume` process: the deliveries must be exactly
/// the receipted messages, producer, sequence and checksum alike.
pub(crate) fn every_receipt_is_delivered(
    address: &str,
    producers: u32,
    each: u64,
    extra: &[&str],
    wait: Duration,
) -> Result<()> {
    let mut peers = Vec::new();
    for id in 0..producers {
        peers.push(spawn_producer(address, id, each, extra)?);
    }
    let mut receipted = BTreeMap::new();
    for peer in &mut peers {
        ensure!(
            read_receipts(peer, &mut receipted, wait)?,
            "{} ended early",
            peer.name()
        );
        peer.wait_success(wait)?;
    }
    ensure!(receipted.len() as u64 == u64::from(producers) * each);
    let total = receipted.len().to_string();
    let (got, ok) = deliveries(address, &["--expect", &total], wait)?;
    ensure!(ok.starts_with(&format!("ok received={total} ")), "{ok}");
    ensure!(got == receipted, "deliveries differ from receipts");
    Ok(())
}

/// A `queue-produce` process of `each` 1000-byte messages as producer `id` on the queue at
/// `address`, with `extra` arguments.
pub(crate) fn spawn_producer(address: &str, id: u32, each: u64, extra: &[&str]) -> Result<Peer> {
    let (id_s, each_s) = (id.to_string(), each.to_string());
    let mut args = vec![
        "--address",
        address,
        "--producer",
        &id_s,
        "--count",
        &each_s,
        "--size",
        "1000",
    ];
    args.extend_from_slice(extra);
    Peer::spawn_role(format!("producer {id}"), "queue-produce", args)
}

/// A message's sequence number and what identifies it: its producer and its checksum.
pub(crate) type Receipts = BTreeMap<u64, (String, String)>;

/// Reads the `sent` lines of a `queue-produce` peer into `receipted` until its `ok` line
/// (returns true) or the end of its output (false: it died).
pub(crate) fn read_receipts(
    peer: &mut Peer,
    receipted: &mut Receipts,
    wait: Duration,
) -> Result<bool> {
    loop {
        let Ok(line) = peer.expect_line(wait) else {
            return Ok(false);
        };
        if line.starts_with("ok") {
            return Ok(true);
        }
        let words: Vec<&str> = line.split(' ').collect();
        ensure!(words.len() == 5 && words[0] == "sent", "{line}");
        receipted.insert(
            words[4].parse::<u64>()?,
            (words[1].to_owned(), words[3].to_owned()),
        );
    }
}

/// What one `queue-consume` process (with `args` besides the address) receives from the
/// queue at `address`, and its closing `ok` line.
pub(crate) fn deliveries(
    address: &str,
    args: &[&str],
    wait: Duration,
) -> Result<(Receipts, String)> {
    let mut all = vec!["--address", address];
    all.extend_from_slice(args);
    let mut consumer = Peer::spawn_role("consumer", "queue-consume", all)?;
    let mut got = BTreeMap::new();
    loop {
        let line = consumer.expect_line(wait)?;
        if let Some(rest) = line.strip_prefix("got ") {
            let words: Vec<&str> = rest.split(' ').collect();
            ensure!(words.len() >= 4, "{line}");
            got.insert(
                words[3].parse::<u64>()?,
                (words[0].to_owned(), words[2].to_owned()),
            );
        } else if line.starts_with("ok") {
            consumer.wait_success(wait)?;
            return Ok((got, line));
        }
    }
}

/// Where the records of a segment file end (`FORMAT.md`): at the file's end, or where zeros
/// written ahead of the log begin. Follows the record headers' lengths only.
pub(crate) fn records_end(segment: &std::path::Path) -> Result<u64> {
    let bytes = std::fs::read(segment)?;
    let mut pos = 0usize;
    while pos + 40 <= bytes.len() && bytes[pos..pos + 4] == *b"IPQR" {
        let len = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into()?) as usize;
        pos += 40 + len;
    }
    Ok(pos.min(bytes.len()) as u64)
}

/// Cuts the zeros written ahead off every segment of the queue at `queue` (after checking
/// that only zeros follow the records), so that a test can damage a segment by its length
/// as if the records ran to the file's end: a layout the format allows too (a segment
/// written on a full disk has no zeros ahead).
pub(crate) fn strip_zeros(queue: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(queue.join("segments"))? {
        let path = entry?.path();
        let end = records_end(&path)?;
        let bytes = std::fs::read(&path)?;
        ensure!(
            bytes[end as usize..].iter().all(|&b| b == 0),
            "{} holds more than zeros after its records",
            path.display()
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(end)?;
    }
    Ok(())
}
