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
    let storage = stats.storage.as_ref();
    let oldest_ms = stats.oldest_age.map(|age| age.as_millis() as u64);
    // (label in the table, key in JSON, value, unit, meaning)
    let fields = [
        (
            "depth",
            "depth",
            Some(stats.depth),
            "",
            "messages not yet done (RabbitMQ: ready ones)",
        ),
        (
            "unacked",
            "unacked",
            stats.unacked,
            "",
            "deliveries whose lease is running",
        ),
        (
            "delayed",
            "delayed",
            stats.delayed,
            "",
            "nacked with a delay that has not passed",
        ),
        (
            "dead letters",
            "dead_letters",
            Some(stats.dead_letters),
            "",
            "messages in the dead-letter queue",
        ),
        (
            "oldest age",
            "oldest_age_ms",
            oldest_ms,
            " ms",
            "age of the oldest message not yet done",
        ),
        (
            "consumers",
            "consumers",
            stats.consumers,
            "",
            "consumers attached (RabbitMQ)",
        ),
        (
            "next seq",
            "next_seq",
            storage.map(|s| s.next_seq),
            "",
            "sequence number of the next message",
        ),
        (
            "acked",
            "acked",
            storage.map(|s| s.acked),
            "",
            "acknowledgements over the queue's life",
        ),
        (
            "lost",
            "lost",
            storage.map(|s| s.lost),
            "",
            "messages lost to corruption (reported)",
        ),
        (
            "quarantined",
            "quarantined_files",
            storage.map(|s| s.quarantined_files),
            "",
            "files in quarantine/",
        ),
        (
            "segments",
            "segments",
            storage.map(|s| s.segments),
            "",
            "segment files on disk",
        ),
        (
            "bytes",
            "bytes",
            storage.map(|s| s.bytes),
            "",
            "bytes of segment files",
        ),
    ];
    if json {
        let mut object = serde_json::Map::new();
        object.insert("address".to_owned(), address.to_string().into());
        for (_, key, value, _, _) in fields {
            object.insert(key.to_owned(), value.into());
        }
        return Ok(serde_json::to_string_pretty(&object)? + "\n");
    }
    let mut table = Table::new(&["", ">value", "meaning"]);
    for (label, _, value, unit, meaning) in fields {
        let value = value.map_or("-".to_owned(), |v| format!("{v}{unit}"));
        table.push(vec![label.to_owned(), value, meaning.to_owned()]);
    }
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
