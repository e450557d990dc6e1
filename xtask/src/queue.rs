//! `cargo xtask queue stats ADDRESS`: a look inside a queue, a directory or a broker queue
//! (`amqp://user:password@host:port/vhost#queue`).

use anyhow::{Context, Result};
use ipc_queue::{Address, Queue};

use crate::table::Table;

/// Prints the queue's stats as a table (or as JSON).
pub(crate) fn stats(address: &str, json: bool) -> Result<()> {
    print!("{}", render(address, json)?);
    Ok(())
}

/// The queue's stats as a table (or as JSON). What the backend cannot count shows as `-`
/// (`null` in JSON).
fn render(address: &str, json: bool) -> Result<String> {
    let address = Address::from(address);
    let queue = Queue::open(&address).with_context(|| format!("open queue {address}"))?;
    let stats = queue.stats()?;
    let oldest_ms = stats.oldest_age.map(|age| age.as_millis() as u64);
    let storage = stats.storage.as_ref();
    if json {
        let value = serde_json::json!({
            "address": address.to_string(),
            "depth": stats.depth,
            "unacked": stats.unacked,
            "delayed": stats.delayed,
            "dead_letters": stats.dead_letters,
            "oldest_age_ms": oldest_ms,
            "consumers": stats.consumers,
            "next_seq": storage.map(|s| s.next_seq),
            "acked": storage.map(|s| s.acked),
            "lost": storage.map(|s| s.lost),
            "quarantined_files": storage.map(|s| s.quarantined_files),
            "segments": storage.map(|s| s.segments),
            "bytes": storage.map(|s| s.bytes),
        });
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let show = |value: Option<u64>| value.map_or("-".to_owned(), |v| v.to_string());
    let mut table = Table::new(&["", ">value", "meaning"]);
    let mut row = |name: &str, value: String, meaning: &str| {
        table.push(vec![name.to_owned(), value, meaning.to_owned()]);
    };
    row(
        "depth",
        stats.depth.to_string(),
        "messages not yet done (RabbitMQ: ready ones)",
    );
    row(
        "unacked",
        show(stats.unacked),
        "deliveries whose lease is running",
    );
    row(
        "delayed",
        show(stats.delayed),
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
        "consumers",
        show(stats.consumers),
        "consumers attached (RabbitMQ)",
    );
    row(
        "next seq",
        show(storage.map(|s| s.next_seq)),
        "sequence number of the next message",
    );
    row(
        "acked",
        show(storage.map(|s| s.acked)),
        "acknowledgements over the queue's life",
    );
    row(
        "lost",
        show(storage.map(|s| s.lost)),
        "messages lost to corruption (reported)",
    );
    row(
        "quarantined",
        show(storage.map(|s| s.quarantined_files)),
        "files in quarantine/",
    );
    row(
        "segments",
        show(storage.map(|s| s.segments)),
        "segment files on disk",
    );
    row(
        "bytes",
        show(storage.map(|s| s.bytes)),
        "bytes of segment files",
    );
    Ok(format!("queue {address}\n{}", table.to_text()))
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

        let text = render(&path.to_string_lossy(), false)?;
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(line("depth")[1], "2", "{text}");
        assert_eq!(line("acked")[1], "1", "{text}");
        assert_eq!(line("next seq")[2], "3", "{text}");

        let json: serde_json::Value =
            serde_json::from_str(&render(&path.to_string_lossy(), true)?)?;
        assert_eq!(json["depth"], 2);
        assert_eq!(json["dead_letters"], 0);

        let err = render(&dir.path().join("none").to_string_lossy(), false).unwrap_err();
        assert!(format!("{err:#}").contains("no queue at"), "{err:#}");
        Ok(())
    }
}
