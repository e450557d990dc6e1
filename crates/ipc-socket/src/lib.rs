//! Typed, framed connections over local sockets (Unix domain sockets, named pipes) and TCP,
//! blocking and async, for many clients and any language.
//!
//! Choose this crate over `ipc-shm` when the processes may run on different machines or are
//! written in other languages (the wire format, messaging patterns included, is ipc-core's
//! `PROTOCOL.md`), and over `ipc-durable-queue` when both sides run at the same time and nothing
//! needs to survive a crash.
//!
//! - [`Address`]: `local:NAME`, `unix:/path`, `tcp:HOST:PORT`, `ws://HOST:PORT/PATH`
//!   (WebSocket, for browsers), `tls:HOST:PORT` or `wss://HOST:PORT/PATH` (WebSocket over
//!   TLS; both feature `tls`), one API over all of them.
//! - [`Connection`] / [`Listener`]: blocking, one peer, messages both ways
//!   ([`Sender`](ipc_core::Sender) / [`Receiver`](ipc_core::Receiver)).
//! - [`AsyncConnection`] (feature `tokio`): the same for tokio, splittable into halves
//!   ([`AsyncSender`](ipc_core::AsyncSender) / [`AsyncReceiver`](ipc_core::AsyncReceiver)).
//! - [`Server`] (feature `tokio`): many clients, bounded per-client queues with a
//!   [`Policy`], duplex messages, request/response and publish/subscribe with topics.
//! - [`Client`] (feature `tokio`): requests with correlation ids and deadlines,
//!   subscriptions, and reconnection with jittered exponential back-off that resubscribes.
//!
//! Every connection starts with ipc-core's handshake (protocol version, frame limits,
//! message-type fingerprint), watches its peer with ping/pong heartbeats and ends with an
//! explicit close frame.
//!
//! # Example
//!
//! On tokio (feature `tokio`); the blocking API's example is on [`Connection`].
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use ipc_socket::{Client, ClientConfig, ConnectionConfig, Incoming, Server, ServerConfig};
//! use ipc_core::MessageType;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let config =
//!     ConnectionConfig::new::<String>().with_message_type(MessageType::named("chat/1"));
//! let server_config = ServerConfig::new("tcp:127.0.0.1:0".parse()?, config.clone());
//! let server = Server::<String>::bind(server_config).await?;
//!
//! let client_config = ClientConfig::new(server.address().clone(), config);
//! let ann = Client::<String>::connect(client_config.clone()).await?;
//! let bob = Client::<String>::connect(client_config).await?;
//! ann.subscribe("room/1").await?; // acknowledged: everything published from now on arrives
//! bob.publish("room/1", &"hi ann".to_owned()).await?;
//! match ann.recv().await? {
//!     Incoming::Publication { topic, message } => {
//!         assert_eq!((topic.as_str(), message.as_str()), ("room/1", "hi ann"));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), ipc_core::Error>(())
//! # }).unwrap();
//! # }
//! ```
//!
//! # Security
//!
//! Socket files are created with mode 0600 (owner only). Namespaced names on Linux are
//! abstract sockets without permission bits: restrict them with
//! [`ServerConfig::allow_uids`] (peer credentials) or use a socket file. A socket file left
//! by a crashed server is removed only after a connect attempt to it is refused; a live
//! server's socket is never taken over.
//!
//! Between machines, use `tls:` or `wss://` addresses (feature `tls`: server
//! authentication, `TlsServerConfig::require_client_certificates` for mutual TLS, the
//! client's certificate in `Peer::certificate` and `Connection::peer_certificate`) and/or
//! tokens
//! ([`ConnectionConfig::with_accepted_tokens`], [`Token`]). A server refuses to listen on a
//! non-loopback `tcp:` address without either unless
//! [`ConnectionConfig::with_insecure_public_bind`] is set. The crate README's "TLS, mutual
//! TLS and tokens" says what each refusal looks like.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tokio` | yes | the tokio API: `AsyncConnection` and its halves, `Server` (`ServerConfig`, `ServerHandle`, `Event`, `Peer`, `Policy`, `ConnId`), `Client` (`ClientConfig`, `Incoming`, `Backoff`) |
//! | `tls` | no | `tls:HOST:PORT` and `wss://HOST:PORT/PATH` addresses over rustls (ring provider), blocking and (with `tokio`) tokio: `TlsServerConfig`, `TlsClientConfig`, mutual TLS and `PeerCertificate`; without it such addresses parse but connecting or listening is an `InvalidInput` error |
//!
//! The blocking API ([`Connection`], [`Listener`], over every address) is always built;
//! tokens need no feature. A program that uses only the blocking API leaves tokio out of
//! its build entirely:
//!
//! ```toml
//! ipc-socket = { version = "0.1", default-features = false } # or features = ["tls"]
//! ```
#![cfg_attr(
    feature = "tokio",
    doc = "[`AsyncConnection`]: crate::AsyncConnection\n[`Server`]: crate::Server\n[`Policy`]: crate::Policy\n[`Client`]: crate::Client\n[`ServerConfig::allow_uids`]: crate::ServerConfig::allow_uids"
)]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "[`AsyncConnection`]: #feature-flags\n[`Server`]: #feature-flags\n[`Policy`]: #feature-flags\n[`Client`]: #feature-flags\n[`ServerConfig::allow_uids`]: #feature-flags"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod address;
#[cfg(feature = "tokio")]
mod async_conn;
mod blocking;
#[cfg(feature = "tokio")]
mod client;
mod config;
mod protocol;
#[cfg(feature = "tokio")]
mod server;
mod stream;
#[cfg(feature = "tls")]
mod tls;
mod token;
#[cfg(feature = "tokio")]
mod wire;
mod ws;

pub use crate::address::Address;
#[cfg(feature = "tokio")]
pub use crate::async_conn::{AsyncConnection, AsyncRecvHalf, AsyncSendHalf, SendFuture};
pub use crate::blocking::{Connection, Listener};
#[cfg(feature = "tokio")]
pub use crate::client::{Backoff, Client, ClientConfig, Incoming};
pub use crate::config::{ConnectionConfig, Heartbeat};
#[cfg(feature = "tokio")]
pub use crate::server::{ConnId, Event, Peer, Policy, Server, ServerConfig, ServerHandle};
#[cfg(feature = "tls")]
pub use crate::tls::{PeerCertificate, TlsClientConfig, TlsServerConfig};
pub use crate::token::Token;

/// The shared foundation: frames, handshake, errors, traits.
pub use ipc_core as core;

/// The README's examples (all on tokio), compiled and run as a doc test.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
