//! Peer roles for the web chat (`cargo run -p ipc-socket --example web-chat`), whose server
//! code is included from the example, so the browser test runs the very same server.
//!
//! - `socket-web-chat --http HOST:PORT --native ADDRESS`: the web chat server. Prints
//!   `ready http=URL native=ADDRESS`, then one line per event (`connected`, `joined conn=#n
//!   name=NAME`, `closed`, `rejected`), and `ok` when its stdin closes.
//! - `socket-web-peer --address A --name NAME`: a native chat participant. Subscribes to
//!   `chat` and `notice`, announces its name, prints `joined`; then publishes `TEXT` on `chat`
//!   for every stdin line `say TEXT`, prints `got chat FROM: TEXT` and `got notice TEXT` for
//!   what arrives, and closes with `ok` when stdin closes.
//! - `socket-raw-ws --address ws://HOST:PORT/PATH --mode echo|sink`: the raw tungstenite
//!   baseline server of the WebSocket bench rows (`bench/ws.rs`).

use std::io::BufRead;

use anyhow::{Context, Result};
use ipc_core::MessageType;
use ipc_socket::{Address, Client, ClientConfig, ConnectionConfig, Incoming, Server};

use super::Args;
use super::socket::{runtime, say};

#[path = "../../../crates/ipc-socket/examples/web-chat/chat.rs"]
#[allow(dead_code, reason = "shared with the example, which uses all of it")]
mod chat;

pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    match role {
        "socket-web-chat" => Some(runtime().and_then(|rt| rt.block_on(web_chat(args)))),
        "socket-web-peer" => Some(runtime().and_then(|rt| rt.block_on(web_peer(args)))),
        "socket-raw-ws" => Some(raw_ws(args)),
        _ => None,
    }
}

async fn web_chat(args: &Args) -> Result<()> {
    let native: Address = args.text("native", "tcp:127.0.0.1:0").parse()?;
    let config = chat::server_config(&args.text("http", "127.0.0.1:0"), native)?;
    let server = Server::<chat::ChatLine>::bind(config).await?;
    let [native, ws] = server.addresses() else {
        anyhow::bail!("expected two addresses");
    };
    let page = ws
        .to_string()
        .replace("ws://", "http://")
        .replace("/ipc", "/");
    say(format_args!("ready http={page} native={native}"));
    let done = super::socket::stdin_closed();
    tokio::select! {
        () = chat::run(server, |line| say(line)) => {}
        _ = done => {}
    }
    say("ok");
    Ok(())
}

async fn web_peer(args: &Args) -> Result<()> {
    let name = args.text("name", "native");
    let connection = ConnectionConfig::new::<chat::ChatLine>()
        .with_message_type(MessageType::named(chat::CHAT_TYPE));
    let address: Address = args.text("address", "").parse()?;
    let client = std::sync::Arc::new(
        Client::<chat::ChatLine>::connect(ClientConfig::new(address, connection).no_reconnect())
            .await?,
    );
    client.subscribe("chat").await?;
    client.subscribe(chat::NOTICE_TOPIC).await?;
    client
        .send(&chat::ChatLine {
            from: name.clone(),
            seq: 0,
            text: String::new(),
        })
        .await?;
    say("joined");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seq = 0;
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                let text = line.strip_prefix("say ").context("expected `say TEXT` on stdin")?;
                client
                    .publish("chat", &chat::ChatLine { from: name.clone(), seq, text: text.to_owned() })
                    .await?;
                seq += 1;
            }
            incoming = client.recv() => match incoming? {
                Incoming::Publication { topic, message } if topic == "chat" => {
                    say(format_args!("got chat {}: {}", message.from, message.text));
                }
                Incoming::Publication { topic, message } => {
                    say(format_args!("got {topic} {}", message.text));
                }
                other => say(format_args!("got other {other:?}")),
            },
        }
    }
    match std::sync::Arc::try_unwrap(client) {
        Ok(client) => client.close().await?,
        Err(_) => anyhow::bail!("client still shared"),
    }
    say("ok");
    Ok(())
}

fn raw_ws(args: &Args) -> Result<()> {
    let address: Address = args.text("address", "").parse()?;
    crate::bench::ws::raw_server(&address, &args.text("mode", "echo"))
}
