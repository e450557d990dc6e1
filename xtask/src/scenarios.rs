//! `cargo xtask scenarios`: each mechanism doing what it is for, with real separate processes.
//!
//! Every scenario spawns `ipc-peer` processes, checks its own result, and cleans up after
//! itself also when it fails (a dropped `Peer` is killed and reaped).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ipc_tests::Peer;
use ipc_tests::flows::{self, ChatTransport, Outcome};

use crate::peers::{self, Profile};
use crate::table::{Table, si};

/// The size of a run, and the broker for the `amqp` scenarios.
struct Ctx {
    quick: bool,
    amqp: Option<String>,
}

impl Ctx {
    /// `full` normally, `quick` under `--quick`.
    fn size(&self, full: u64, quick: u64) -> u64 {
        if self.quick { quick } else { full }
    }
}

struct Scenario {
    name: &'static str,
    mechanism: &'static str,
    about: &'static str,
    /// Needs a RabbitMQ broker: skipped (and said so) without one.
    needs_broker: bool,
    run: fn(&Ctx, &ProgressBar) -> Result<Outcome>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "frames",
        mechanism: "ipc-core / pipe",
        about: "a producer process streams 64-byte messages as ipc-core frames through an OS pipe; the consumer checks order, every byte and the checksum",
        needs_broker: false,
        run: frames_small,
    },
    Scenario {
        name: "frames-large",
        mechanism: "ipc-core / pipe",
        about: "the same with 64 KiB messages, decoded in place from the consumer's buffer",
        needs_broker: false,
        run: frames_large,
    },
    Scenario {
        name: "frames-hostile",
        mechanism: "ipc-core / pipe",
        about: "garbage, a frame over the limit and a peer speaking another message type: the consumer refuses each with a clear error, never a panic or a hang",
        needs_broker: false,
        run: frames_hostile,
    },
    Scenario {
        name: "shm",
        mechanism: "ipc-shm",
        about: "a producer streams 1M 64-byte messages through a shared-memory ring to a consumer process; the checksum matches and no segment is left behind",
        needs_broker: false,
        run: shm_stream,
    },
    Scenario {
        name: "shm-counter",
        mechanism: "ipc-shm",
        about: "4 processes increment one shared counter under the cross-process lock; the total is exact",
        needs_broker: false,
        run: shm_counter,
    },
    Scenario {
        name: "chat-local",
        mechanism: "ipc-socket / unix",
        about: "a chat server and 8 client processes (one of them the Python client) over a Unix socket; every client sees every message in order per sender; a 9th client is killed mid-stream and the others carry on",
        needs_broker: false,
        run: chat_local,
    },
    Scenario {
        name: "chat-tcp",
        mechanism: "ipc-socket / tcp",
        about: "the same chat over TCP on 127.0.0.1",
        needs_broker: false,
        run: chat_tcp,
    },
    Scenario {
        name: "web-chat",
        mechanism: "ipc-socket / ws + unix",
        about: "two headless Chromium pages, a native process and the Python client chat in one room through one server (WebSocket and a Unix socket); join and leave notices; a page closes mid-way (needs chromium and chromium-driver)",
        needs_broker: false,
        run: web_chat,
    },
    Scenario {
        name: "chat-tls",
        mechanism: "ipc-socket / tls",
        about: "the same chat over tls: on 127.0.0.1 (certificates made at run time; Rust clients and the Python client, which checks the server with Python's ssl module)",
        needs_broker: false,
        run: chat_tls,
    },
    Scenario {
        name: "queue-decoupled",
        mechanism: "ipc-queue",
        about: "a producer sends 10,000 durable messages and exits; only then does a consumer start, and it receives all of them",
        needs_broker: false,
        run: queue_decoupled,
    },
    Scenario {
        name: "queue-crash",
        mechanism: "ipc-queue",
        about: "a consumer is killed with SIGKILL mid-stream and restarted; nothing is lost, and the redelivered messages are counted",
        needs_broker: false,
        run: queue_crash,
    },
    Scenario {
        name: "pipeline",
        mechanism: "socket + queue + shm",
        about: "requests arrive over a socket, are persisted in the queue, and are processed by 4 worker processes that answer through shared memory; a worker is killed mid-way; every request is answered once",
        needs_broker: false,
        run: pipeline,
    },
    Scenario {
        name: "amqp-decoupled",
        mechanism: "ipc-queue / RabbitMQ",
        about: "the queue-decoupled programs, unchanged but for the queue address (amqp://...#queue): a producer sends 10,000 confirmed messages to a quorum queue and exits, then a consumer receives all of them (needs --amqp URL or IPC_AMQP_URL)",
        needs_broker: true,
        run: amqp_decoupled,
    },
    Scenario {
        name: "amqp-crash",
        mechanism: "ipc-queue / RabbitMQ",
        about: "the queue-crash scenario on RabbitMQ: a consumer is killed with SIGKILL mid-stream, another drains the queue; nothing is lost (needs --amqp URL or IPC_AMQP_URL)",
        needs_broker: true,
        run: amqp_crash,
    },
];

/// Prints the scenarios, one line each.
pub(crate) fn list() {
    let mut table = Table::new(&["scenario", "mechanism", "what it shows"]);
    for s in SCENARIOS {
        table.push(vec![s.name.into(), s.mechanism.into(), s.about.into()]);
    }
    print!("{}", table.to_text());
}

/// Runs all scenarios or the one named; returns whether all passed.
pub(crate) fn run(name: Option<&str>, quick: bool, amqp: Option<String>) -> Result<bool> {
    let selected: Vec<&Scenario> = match name {
        None => SCENARIOS.iter().collect(),
        Some(name) => match SCENARIOS.iter().find(|s| s.name == name) {
            Some(s) => vec![s],
            None => {
                let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                bail!("no scenario `{name}`; scenarios: {}", names.join(", "));
            }
        },
    };
    let profile = if quick {
        Profile::Debug
    } else {
        Profile::Release
    };
    eprintln!("building the peer process (ipc-peer, {profile:?} profile)...");
    peers::build_peer(profile)?;

    let amqp = amqp.or_else(|| std::env::var("IPC_AMQP_URL").ok().filter(|u| !u.is_empty()));
    let ctx = Ctx { quick, amqp };
    let mut table = Table::new(&[
        "scenario",
        "mechanism",
        ">processes",
        ">messages",
        ">time",
        ">throughput",
        "result",
        "detail",
    ]);
    let mut failures = 0;
    let mut skipped = 0;
    for scenario in selected {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .context("progress template")?
                .progress_chars("=> "),
        );
        bar.set_prefix(scenario.name);
        // The browser scenario runs where Chromium is (and must, with IPC_REQUIRE_BROWSER=1).
        if scenario.name == "web-chat" && !ipc_tests::web_chat::browser_present()? {
            let missing = ipc_tests::web_chat::browser_missing().unwrap_or_default();
            eprintln!("{:>16} skipped: {missing}", scenario.name);
            skipped += 1;
            table.push(vec![
                scenario.name.into(),
                scenario.mechanism.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "skipped".into(),
                missing,
            ]);
            continue;
        }
        if scenario.needs_broker && ctx.amqp.is_none() {
            eprintln!("{:>16} skipped: no broker", scenario.name);
            skipped += 1;
            table.push(vec![
                scenario.name.into(),
                scenario.mechanism.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "skipped".into(),
                "to run it: --amqp amqp://guest:guest@127.0.0.1:5672/%2f (or IPC_AMQP_URL)".into(),
            ]);
            continue;
        }
        let started = Instant::now();
        let result = (scenario.run)(&ctx, &bar);
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        match result {
            Ok(outcome) => {
                let secs = elapsed.as_secs_f64().max(1e-9);
                let throughput = match (outcome.messages, outcome.bytes) {
                    (0, _) => "-".to_owned(),
                    (messages, 0) => format!("{}msg/s", si(messages as f64 / secs)),
                    (messages, bytes) => format!(
                        "{}msg/s, {}B/s",
                        si(messages as f64 / secs),
                        si(bytes as f64 / secs)
                    ),
                };
                eprintln!("{:>16} ok in {}", scenario.name, format_duration(elapsed));
                table.push(vec![
                    scenario.name.into(),
                    scenario.mechanism.into(),
                    outcome.processes.to_string(),
                    outcome.messages.to_string(),
                    format_duration(elapsed),
                    throughput,
                    "ok".into(),
                    outcome.detail,
                ]);
            }
            Err(err) => {
                failures += 1;
                eprintln!("{:>16} FAILED: {err:#}", scenario.name);
                table.push(vec![
                    scenario.name.into(),
                    scenario.mechanism.into(),
                    "-".into(),
                    "-".into(),
                    format_duration(elapsed),
                    "-".into(),
                    "FAILED".into(),
                    format!("{err:#}"),
                ]);
            }
        }
    }
    println!();
    print!("{}", table.to_text());
    if failures > 0 {
        println!(
            "\n{failures} scenario(s) failed; the peers' stderr is in target/ipc-scenarios/peers.log"
        );
        return Ok(false);
    }
    match skipped {
        0 => println!("\nall scenarios passed"),
        n => println!(
            "\nall scenarios passed; {n} skipped (they need a RabbitMQ broker or Chromium)"
        ),
    }
    Ok(true)
}

fn format_duration(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

const WAIT: Duration = Duration::from_secs(300);

/// Where the peers of scenarios write their stderr, so that expected errors (the hostile
/// cases) do not clutter the terminal, yet stay there to read when a scenario fails.
fn peer_log() -> Result<std::fs::File> {
    let path = peers::workspace_root().join("target/ipc-scenarios/peers.log");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))
}

/// Spawns a `frame-source` whose stdout is a pipe into a `frame-sink`.
fn pipe_pair(
    source_role: &str,
    source_args: &[String],
    sink_args: &[String],
) -> Result<(Peer, Peer)> {
    let (reader, writer) = std::io::pipe().context("create pipe")?;
    let mut source = Peer::role_command(source_role, source_args)?;
    source.stdout(writer).stderr(peer_log()?);
    let source = Peer::spawn_with_stdout("producer", source)?;
    let mut sink = Peer::role_command("frame-sink", sink_args)?;
    sink.stdin(reader).stderr(peer_log()?);
    let sink = Peer::spawn("consumer", sink)?;
    Ok((source, sink))
}

/// Runs a flow with its progress shown on `bar`.
fn with_bar(
    bar: &ProgressBar,
    flow: impl FnOnce(flows::Progress<'_>) -> Result<Outcome>,
) -> Result<Outcome> {
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    flow(&mut progress)
}

fn frames_small(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages of 64 B");
    with_bar(bar, |p| {
        flows::frames_over_pipe(ctx.size(1_000_000, 50_000), 64, p)
    })
}

fn frames_large(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages of 64 KiB");
    with_bar(bar, |p| {
        flows::frames_over_pipe(ctx.size(10_000, 300), 64 * 1024, p)
    })
}

fn shm_stream(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages of 64 B");
    let stream = flows::ShmStream {
        count: ctx.size(1_000_000, 100_000),
        size: 64,
        capacity: 64 * 1024,
        wait: flows::WaitMode::Blocking,
    };
    with_bar(bar, |p| flows::shm_stream(stream, p))
}

fn shm_counter(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("processes done");
    with_bar(bar, |p| flows::shm_counter(4, ctx.size(100_000, 5_000), p))
}

fn chat_local(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("clients done");
    with_bar(bar, |p| {
        flows::chat(ChatTransport::LocalSocket, 8, ctx.size(1_000, 200), p)
    })
}

fn chat_tcp(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("clients done");
    with_bar(bar, |p| {
        flows::chat(ChatTransport::Tcp, 8, ctx.size(1_000, 200), p)
    })
}

fn web_chat(_ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("chromium, a native peer and python");
    ipc_tests::web_chat::web_chat()
}

fn chat_tls(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("clients done");
    with_bar(bar, |p| {
        flows::chat(ChatTransport::Tls, 8, ctx.size(1_000, 200), p)
    })
}

fn queue_decoupled(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages");
    with_bar(bar, |p| flows::queue_decoupled(ctx.size(10_000, 2_000), p))
}

fn queue_crash(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages acknowledged");
    with_bar(bar, |p| flows::queue_crash(ctx.size(10_000, 1_000), p))
}

fn pipeline(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("requests answered");
    with_bar(bar, |p| flows::pipeline(ctx.size(20_000, 2_000), 4, p))
}

fn broker(ctx: &Ctx) -> Result<&str> {
    ctx.amqp
        .as_deref()
        .context("no broker: pass --amqp URL or set IPC_AMQP_URL")
}

fn amqp_decoupled(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages");
    let url = broker(ctx)?;
    with_bar(bar, |p| {
        flows::amqp_decoupled(url, ctx.size(10_000, 1_000), p)
    })
}

fn amqp_crash(ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message("messages acknowledged");
    let url = broker(ctx)?;
    with_bar(bar, |p| flows::amqp_crash(url, ctx.size(10_000, 1_000), p))
}

/// A hostile case: what it is, the producer role and its arguments, the consumer's
/// arguments, and the start of the error the consumer must report.
struct HostileCase {
    what: &'static str,
    role: &'static str,
    source_args: Vec<String>,
    sink_args: Vec<String>,
    expected: &'static str,
}

fn frames_hostile(_ctx: &Ctx, bar: &ProgressBar) -> Result<Outcome> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let case = |what, role, source_args, sink_args, expected| HostileCase {
        what,
        role,
        source_args,
        sink_args,
        expected,
    };
    let cases = [
        case(
            "garbage from the first byte",
            "garbage-source",
            s(&["--bytes", "65536", "--seed", "7"]),
            vec![],
            "error bad magic: bad magic byte 0",
        ),
        case(
            "garbage after a valid handshake",
            "garbage-source",
            s(&["--bytes", "65536", "--seed", "8", "--after-hello", "1"]),
            vec![],
            "error bad magic: bad magic byte 0",
        ),
        case(
            "a frame over the consumer's limit",
            "frame-source",
            s(&["--count", "10", "--size", "70000"]),
            s(&["--max-frame-len", "65536"]),
            "error too large: frame of 70004 bytes exceeds limit of 65536",
        ),
        case(
            "a producer of another message type",
            "frame-source",
            s(&["--count", "10", "--type", "someone.Else/2"]),
            vec![],
            "error message type mismatch: peer exchanges `someone.Else/2`",
        ),
    ];
    bar.set_length(cases.len() as u64);
    for HostileCase {
        what,
        role,
        source_args,
        sink_args,
        expected,
    } in cases
    {
        bar.set_message(what);
        let (mut source, mut sink) = pipe_pair(role, &source_args, &sink_args)?;
        let outcome = sink.expect_line(WAIT)?;
        let status = sink.wait(WAIT)?;
        // The producer may see a broken pipe once the consumer has given up: that is fine.
        let _ = source.wait(WAIT)?;
        if !outcome.starts_with(expected) || status.code() != Some(1) {
            bail!(
                "{what}: consumer said `{outcome}` ({status}), expected `{expected}...` and exit code 1"
            );
        }
        bar.inc(1);
    }
    Ok(Outcome {
        processes: 8,
        messages: 0,
        bytes: 0,
        detail: "4 hostile producers refused".to_owned(),
    })
}
