//! The cross-crate pipeline: requests arrive over a socket, are persisted in a durable queue,
//! and are processed by worker processes that send their answers back through shared memory.
//! Each role is named `pipeline-...`.
//!
//! - `pipeline-gateway --address A --queue Q --shm NAME --workers W`: a socket server for
//!   [`Calc`] requests. Each request is persisted in queue `Q` (batched: one sync for every
//!   request that arrived meanwhile) and answered when a worker's `Answer` comes back
//!   through the shared-memory channel `NAME` (created here, `W` sender slots). An answer
//!   for a request already answered (a worker died between answering and acknowledging) is
//!   counted and dropped, so every request is answered once. Prints `ready address=..`;
//!   after its stdin closes, `ok requests=.. answered=.. duplicates=..`.
//! - `pipeline-worker --queue Q --shm NAME --id I`: takes tasks from queue `Q`, computes,
//!   sends the answer through `NAME`, then acknowledges the task. Prints `progress N` every
//!   100 tasks. Runs until killed (or until the gateway is gone).
//! - `pipeline-client --address A --count N --in-flight K`: sends `N` requests, `K` in
//!   flight at a time, and checks that each is answered once, correctly; prints
//!   `progress n` and `ok answered=N`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ipc_core::{ErrorKind, MessageType};
use ipc_queue::{ProducerOptions, Queue};
use ipc_shm::{ChannelConfig, ShmReceiver, ShmSender};
use ipc_socket::{Client, ClientConfig, ConnId, ConnectionConfig, Event, Server, ServerConfig};
use serde::{Deserialize, Serialize};

use super::Args;
use super::socket::{runtime, say, stdin_closed};

/// A request and its response over the socket: the response carries `compute(value)`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Calc {
    /// The client's request number.
    pub id: u64,
    /// The input, or in a response the result.
    pub value: u64,
}

/// A task in the durable queue.
#[derive(Serialize, Deserialize, Debug)]
struct Task {
    /// The gateway's number for the request.
    task: u64,
    input: u64,
}

/// A worker's answer, through shared memory.
#[derive(Serialize, Deserialize, Debug)]
struct Answer {
    task: u64,
    output: u64,
    worker: u32,
}

/// What the workers compute.
pub fn compute(input: u64) -> u64 {
    input.wrapping_mul(input).wrapping_add(1)
}

fn socket_config() -> ConnectionConfig {
    ConnectionConfig::new::<Calc>().with_message_type(MessageType::named("ipc-tests.Calc/1"))
}

fn shm_config(workers: usize) -> ChannelConfig {
    ChannelConfig::new()
        .with_capacity(64 * 1024)
        .with_max_senders(workers)
        .with_message_type(MessageType::named("ipc-tests.Answer/1"))
}

/// Runs `role` if it is a pipeline role.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    match role {
        "pipeline-gateway" => Some(gateway(args)),
        "pipeline-worker" => Some(worker(args)),
        "pipeline-client" => Some(runtime().and_then(|rt| rt.block_on(client(args)))),
        _ => None,
    }
}

fn gateway(args: &Args) -> Result<()> {
    let queue_path = args.text("queue", "");
    let shm_name = args.text("shm", "");
    let workers: usize = args.get("workers", 4)?;
    let queue = Queue::open(&queue_path)?;
    let mut producer = queue.producer::<Task>(ProducerOptions::new())?;
    let mut answers = ShmReceiver::<Answer>::create(&shm_name, &shm_config(workers))?;

    // The persister: a thread that stores tasks in batches (one sync per batch) and only
    // then lets workers see them.
    let (to_persist, persist_rx) = std::sync::mpsc::channel::<Task>();
    let persister = std::thread::Builder::new()
        .name("persister".into())
        .spawn(move || -> Result<()> {
            while let Ok(first) = persist_rx.recv() {
                let mut batch = vec![first];
                batch.extend(persist_rx.try_iter());
                producer.send_batch(&batch)?;
            }
            Ok(())
        })
        .context("spawn persister")?;

    // The collector: a thread that receives answers from shared memory.
    let (answer_tx, mut answer_rx) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            loop {
                match answers.recv_timeout(Duration::from_millis(200)) {
                    Ok(answer) => {
                        if answer_tx.send(answer).is_err() {
                            return;
                        }
                    }
                    // No worker yet, or all idle: keep waiting while the gateway runs.
                    Err(err) if err.kind() == ErrorKind::Timeout || err.is_peer_gone() => {
                        if answer_tx.is_closed() {
                            return;
                        }
                    }
                    Err(err) => {
                        eprintln!("pipeline-gateway: answers channel failed: {err}");
                        return;
                    }
                }
            }
        })
        .context("spawn collector")?;

    let rt = runtime()?;
    let (requests, answered, duplicates) = rt.block_on(async move {
        let address = args.text("address", "").parse()?;
        let mut server = Server::<Calc>::bind(ServerConfig::new(address, socket_config())).await?;
        say(format_args!("ready address={}", server.address()));
        let handle = server.handle();
        let mut done = stdin_closed();
        let mut pending: HashMap<u64, (ConnId, u32, u64)> = HashMap::new();
        let (mut next_task, mut answered, mut duplicates) = (0u64, 0u64, 0u64);
        loop {
            tokio::select! {
                event = server.next_event() => match event {
                    Some(Event::Request { conn, id, message }) => {
                        let task = next_task;
                        next_task += 1;
                        pending.insert(task, (conn, id, message.id));
                        to_persist
                            .send(Task { task, input: message.value })
                            .context("persister stopped")?;
                    }
                    Some(_) => {}
                    None => break,
                },
                Some(answer) = answer_rx.recv() => match pending.remove(&answer.task) {
                    Some((conn, id, request)) => {
                        answered += 1;
                        let response = Calc { id: request, value: answer.output };
                        // A client that left no longer needs its answer.
                        let _ = handle.respond(conn, id, &response).await;
                    }
                    None => duplicates += 1,
                },
                _ = &mut done => break,
            }
        }
        server.shutdown().await;
        Ok::<_, anyhow::Error>((next_task, answered, duplicates))
    })?;
    match persister.join() {
        Ok(result) => result?,
        Err(_) => bail!("persister thread panicked"),
    }
    say(format_args!(
        "ok requests={requests} answered={answered} duplicates={duplicates}"
    ));
    Ok(())
}

fn worker(args: &Args) -> Result<()> {
    let queue = Queue::open(args.text("queue", ""))?;
    let id: u32 = args.get("id", 0)?;
    let workers: usize = args.get("workers", 4)?;
    let mut consumer = queue.consumer::<Task>()?;
    let mut answers = ShmSender::<Answer>::open(&args.text("shm", ""), &shm_config(workers))?;
    say("ready");
    let mut done = 0u64;
    loop {
        let delivery = consumer.recv()?;
        let task = delivery.message();
        let answer = Answer {
            task: task.task,
            output: compute(task.input),
            worker: id,
        };
        // Answer first, acknowledge after: a crash in between answers twice (the gateway
        // drops the second), never zero times.
        answers.send(&answer)?;
        consumer.ack(&delivery)?;
        done += 1;
        if done.is_multiple_of(100) {
            say(format_args!("progress {done}"));
        }
    }
}

async fn client(args: &Args) -> Result<()> {
    let count: u64 = args.get("count", 1000)?;
    let in_flight: u64 = args.get("in-flight", 16)?.max(1);
    let address = args.text("address", "").parse()?;
    let client =
        Arc::new(Client::<Calc>::connect(ClientConfig::new(address, socket_config())).await?);
    let answered = Arc::new(AtomicU64::new(0));
    let step = (count / 20).max(1);
    let mut tasks = Vec::new();
    for lane in 0..in_flight {
        let client = Arc::clone(&client);
        let answered = Arc::clone(&answered);
        tasks.push(tokio::spawn(async move {
            let mut id = lane;
            while id < count {
                let response = client
                    .request(&Calc { id, value: id }, Duration::from_secs(120))
                    .await?;
                ensure!(
                    response
                        == Calc {
                            id,
                            value: compute(id)
                        },
                    "request {id} answered with {response:?}"
                );
                let n = answered.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(step) {
                    say(format_args!("progress {n}"));
                }
                id += in_flight;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await.context("request task panicked")??;
    }
    say(format_args!(
        "ok answered={}",
        answered.load(Ordering::Relaxed)
    ));
    Ok(())
}
