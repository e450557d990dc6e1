//! Helpers for the tests that need RabbitMQ: the broker URL from `IPC_AMQP_URL` (or a broker
//! found at the default address), queue names that clean up after themselves, and
//! `rabbitmqctl` for the broker's side of things.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The broker that a newcomer's machine most likely has: RabbitMQ's defaults.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How many broker tests this test binary skipped so far (each skip prints the count).
static SKIPPED: AtomicUsize = AtomicUsize::new(0);

/// The broker URL: `IPC_AMQP_URL`, or when it is unset [`DEFAULT_AMQP_URL`] if a RabbitMQ
/// answers there; `None` (after printing that `test` is skipped, with a count) when neither,
/// or when `IPC_AMQP_URL` is set but empty (which says: no broker here, do not probe).
///
/// A newcomer's `cargo test --workspace` on a machine with a local RabbitMQ thus runs the
/// broker tests, and on one without it says so on the terminal rather than passing them.
///
/// # Panics
///
/// When `IPC_REQUIRE_AMQP=1` (CI sets it) and no broker is found: there, a broker test
/// that did not run is a failure, not a skip.
pub fn amqp_url(test: &str) -> Option<String> {
    match std::env::var("IPC_AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        Ok(_) => {
            skip_unless_optional(test, "IPC_AMQP_URL is set but empty");
            None
        }
        Err(_) if default_broker_answers() => Some(DEFAULT_AMQP_URL.to_owned()),
        Err(_) => {
            skip_unless_optional(
                test,
                "IPC_AMQP_URL not set and no RabbitMQ answers on 127.0.0.1:5672",
            );
            None
        }
    }
}

/// Whether an AMQP 0-9-1 broker answers on 127.0.0.1:5672: it must reply to the protocol
/// header with a method frame (`Connection.Start`). Probed once per test binary.
fn default_broker_answers() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| {
        let probe = || -> std::io::Result<bool> {
            let addr = SocketAddr::from(([127, 0, 0, 1], 5672));
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"AMQP\x00\x00\x09\x01")?;
            let mut frame_type = [0u8; 1];
            stream.read_exact(&mut frame_type)?;
            // 1 is a method frame; a broker that dislikes the version answers with its own
            // header instead ("AMQP...").
            Ok(frame_type[0] == 1)
        };
        probe().unwrap_or(false)
    })
}

/// Reports that `test` is skipped for `reason` on the terminal, or panics if
/// `IPC_REQUIRE_AMQP=1` says the broker tests must run.
///
/// The line goes straight to the process's stderr, not through `println!`, which the test
/// harness captures and shows only for failed tests: a skip must be seen.
pub fn skip_unless_optional(test: &str, reason: &str) {
    if std::env::var("IPC_REQUIRE_AMQP").is_ok_and(|v| v == "1") {
        panic!("{test}: cannot run ({reason}) but IPC_REQUIRE_AMQP=1 requires it");
    }
    let skipped = SKIPPED.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {reason} ({skipped} broker test(s) of this binary skipped so far; \
         set IPC_AMQP_URL to run them)"
    );
}

/// A unique queue name that deletes the queue and its dead-letter queue on drop.
#[derive(Debug)]
pub struct TestQueue {
    url: String,
    name: String,
}

impl TestQueue {
    /// A fresh name under `prefix` on the broker at `url` (nothing is declared yet).
    pub fn new(url: &str, prefix: &str) -> TestQueue {
        TestQueue {
            url: url.to_owned(),
            name: crate::unique_name(prefix),
        }
    }

    /// The queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's address: the broker URL with `#name`.
    pub fn address(&self) -> ipc_queue::Address {
        ipc_queue::Address::amqp(self.url.as_str(), self.name.as_str())
    }

    /// The queue's address as a command-line argument for a peer process: the broker URL
    /// (password included) with `#name`.
    pub fn address_arg(&self) -> String {
        format!("{}#{}", self.url, self.name)
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        if let Ok(queue) = ipc_queue::Queue::open(self.address()) {
            let _ = queue.delete();
        }
    }
}

/// Runs `rabbitmqctl` with `args` and returns its stdout.
pub fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("run rabbitmqctl")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The broker's view of queue `name`: `(type, durable, messages)` from
/// `rabbitmqctl list_queues name type durable messages`, or `None` if it has no such queue.
pub fn broker_queue(name: &str) -> Result<Option<(String, bool, u64)>> {
    let out = rabbitmqctl(&["-q", "list_queues", "name", "type", "durable", "messages"])?;
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() == 4 && fields[0] == name {
            let messages = fields[3].parse().unwrap_or(u64::MAX);
            return Ok(Some((fields[1].to_owned(), fields[2] == "true", messages)));
        }
    }
    Ok(None)
}

/// Polls `rabbitmqctl list_queues` until queue `name` holds `expected` messages (the
/// broker refreshes these statistics every few seconds); an error naming the last count
/// after `timeout`.
pub fn wait_broker_messages(name: &str, expected: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = broker_queue(name)?;
        if found.as_ref().map(|q| q.2) == Some(expected) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("broker lists queue {name} as {found:?}, expected {expected} messages");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Closes, from the broker's side, every connection whose client-provided name mentions
/// `queue` (the ipc-queue handles name their connections after their queue); returns how
/// many. Other tests' connections are left alone.
pub fn close_connections_of(queue: &str) -> Result<usize> {
    let out = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"])?;
    let mut closed = 0;
    for line in out.lines() {
        if !line.contains(queue) {
            continue;
        }
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        // A connection may be gone already; that is fine.
        if rabbitmqctl(&["close_connection", pid, "test"]).is_ok() {
            closed += 1;
        }
    }
    Ok(closed)
}
