//! `cargo xtask queue stats PATH`: a look inside an embedded ipc-queue directory.

use std::path::Path;

use anyhow::{Context, Result};
use ipc_queue::Queue;

use crate::table::Table;

/// Prints the queue's stats as a table (or as JSON).
pub(crate) fn stats(path: &Path, json: bool) -> Result<()> {
    print!("{}", render(path, json)?);
    Ok(())
}

/// The queue's stats as a table (or as JSON).
fn render(path: &Path, json: bool) -> Result<String> {
    let queue = Queue::open(path).with_context(|| format!("open queue {}", path.display()))?;
    let stats = queue.stats()?;
    let oldest_ms = stats.oldest_age.map(|age| age.as_millis() as u64);
    if json {
        let value = serde_json::json!({
            "path": path.display().to_string(),
            "depth": stats.depth,
            "unacked": stats.unacked,
            "delayed": stats.delayed,
            "dead_letters": stats.dead_letters,
            "oldest_age_ms": oldest_ms,
            "next_seq": stats.next_seq,
            "acked": stats.acked,
            "lost": stats.lost,
            "quarantined_files": stats.quarantined_files,
            "segments": stats.segments,
            "bytes": stats.bytes,
        });
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let mut table = Table::new(&["", ">value", "meaning"]);
    let mut row = |name: &str, value: String, meaning: &str| {
        table.push(vec![name.to_owned(), value, meaning.to_owned()]);
    };
    row(
        "depth",
        stats.depth.to_string(),
        "messages not yet acknowledged or dead-lettered",
    );
    row(
        "unacked",
        stats.unacked.to_string(),
        "deliveries whose lease is running",
    );
    row(
        "delayed",
        stats.delayed.to_string(),
        "nacked with a delay that has not passed",
    );
    row(
        "dead letters",
        stats.dead_letters.to_string(),
        "messages in the dead-letter queue",
    );
    row(
        "oldest age",
        oldest_ms.map_or("-".to_owned(), |ms| format!("{ms} ms")),
        "age of the oldest message not yet done",
    );
    row(
        "next seq",
        stats.next_seq.to_string(),
        "sequence number of the next message",
    );
    row(
        "acked",
        stats.acked.to_string(),
        "acknowledgements over the queue's life",
    );
    row(
        "lost",
        stats.lost.to_string(),
        "messages lost to corruption (reported)",
    );
    row(
        "quarantined",
        stats.quarantined_files.to_string(),
        "files in quarantine/",
    );
    row(
        "segments",
        stats.segments.to_string(),
        "segment files on disk",
    );
    row("bytes", stats.bytes.to_string(), "bytes of segment files");
    Ok(format!("queue {}\n{}", path.display(), table.to_text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_queue::{ProducerOptions, QueueConfig};

    #[test]
    fn shows_depth_and_acknowledgements() -> Result<()> {
        let dir = ipc_tests::TempDir::new("xtask-stats")?;
        let path = dir.path().join("q");
        let queue = Queue::create(&path, &QueueConfig::new())?;
        let mut producer = queue.producer::<u32>(ProducerOptions::new())?;
        for n in 0..3 {
            producer.send(&n)?;
        }
        let mut consumer = queue.consumer::<u32>()?;
        let delivery = consumer.recv()?;
        consumer.ack(&delivery)?;

        let text = render(&path, false)?;
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(line("depth")[1], "2", "{text}");
        assert_eq!(line("acked")[1], "1", "{text}");
        assert_eq!(line("next seq")[2], "3", "{text}");

        let json: serde_json::Value = serde_json::from_str(&render(&path, true)?)?;
        assert_eq!(json["depth"], 2);
        assert_eq!(json["dead_letters"], 0);

        let err = render(&dir.path().join("none"), false).unwrap_err();
        assert!(format!("{err:#}").contains("no queue at"), "{err:#}");
        Ok(())
    }
}
