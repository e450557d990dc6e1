//! The web chat's server, shared by the `web-chat` example and the `socket-web-chat` peer
//! role of the tests (which includes this file with `#[path]`).
//!
//! One [`Server`] listens on a WebSocket port, which also serves the page (HTML, CSS and the
//! JavaScript client, embedded here), and on a native address (`unix:` or `tcp:`) for the
//! Rust and Python chat clients. Everyone talks [`ChatLine`]s:
//!
//! - lines are published on topic `chat` by the clients; the server forwards them to every
//!   subscriber, whatever its transport;
//! - a client that wants a join notice sends one data message, a `ChatLine` whose `from` is
//!   its name; the server publishes `NAME joined` on topic `notice`, and `NAME left` when that
//!   connection ends.

use std::collections::HashMap;
use std::sync::Arc;

use ipc_core::{MessageType, Result};
use ipc_socket::{Address, ConnectionConfig, Event, Server, ServerConfig};
use serde::{Deserialize, Serialize};

/// One chat line (the type of the Rust chat roles and the Python client).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatLine {
    /// Who says it.
    pub(crate) from: String,
    /// The sender's sequence number, from 0.
    pub(crate) seq: u64,
    /// What they say.
    pub(crate) text: String,
}

/// The agreed wire name of [`ChatLine`].
pub(crate) const CHAT_TYPE: &str = "ipc-tests.ChatLine/1";

/// The topic of join and leave notices.
pub(crate) const NOTICE_TOPIC: &str = "notice";

const INDEX_HTML: &str = include_str!("index.html");
const STYLE_CSS: &str = include_str!("style.css");
const CLIENT_JS: &str = include_str!("../../js/ipc_client.mjs");

/// The chat server's settings: `ws` is `HOST:PORT` for the page and its WebSocket
/// (`/ipc`), `native` the address of the native clients.
pub(crate) fn server_config(ws: &str, native: Address) -> Result<ServerConfig> {
    let connection =
        ConnectionConfig::new::<ChatLine>().with_message_type(MessageType::named(CHAT_TYPE));
    let html = |text: &'static str| Arc::<[u8]>::from(text.as_bytes());
    Ok(ServerConfig::new(native, connection)
        .also_listen(Address::websocket(ws, "/ipc"))
        .with_http_file("/", "text/html; charset=utf-8", html(INDEX_HTML))
        .with_http_file("/index.html", "text/html; charset=utf-8", html(INDEX_HTML))
        .with_http_file("/style.css", "text/css; charset=utf-8", html(STYLE_CSS))
        .with_http_file(
            "/ipc_client.mjs",
            "text/javascript; charset=utf-8",
            html(CLIENT_JS),
        ))
}

/// Runs the chat until the server stops; `log` gets a line per event.
pub(crate) async fn run(mut server: Server<ChatLine>, mut log: impl FnMut(&str)) {
    let handle = server.handle();
    let mut names: HashMap<ipc_socket::ConnId, String> = HashMap::new();
    let mut seq = 0u64;
    while let Some(event) = server.next_event().await {
        let notice = match event {
            Event::Connected { conn, peer } => {
                log(&format!("connected conn={conn} peer={peer}"));
                None
            }
            Event::Message { conn, message } => {
                let name: String = message.from.chars().take(64).collect();
                log(&format!("joined conn={conn} name={name}"));
                names.insert(conn, name.clone());
                Some(format!("{name} joined"))
            }
            Event::Request { conn, id, message } => {
                // Requests are echoed (a liveness probe for scripts).
                let _ = handle.respond(conn, id, &message).await;
                None
            }
            Event::Disconnected { conn, error } => {
                match &error {
                    None => log(&format!("closed conn={conn} normal")),
                    Some(err) => log(&format!("closed conn={conn} error={err}")),
                }
                names.remove(&conn).map(|name| format!("{name} left"))
            }
            Event::Rejected { peer, error } => {
                log(&format!("rejected peer={peer} error={error}"));
                None
            }
            _ => None,
        };
        if let Some(text) = notice {
            let line = ChatLine {
                from: "server".to_owned(),
                seq,
                text,
            };
            seq += 1;
            let _ = handle.publish(NOTICE_TOPIC, &line).await;
        }
    }
}
