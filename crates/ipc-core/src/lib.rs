//! The shared heart of the ipc crates: the wire format, postcard encoding, errors, limits,
//! and the traits that let code run over any mechanism.
//!
//! You rarely depend on this crate alone. Pick a mechanism and it comes along:
//!
//! | crate | use it when |
//! |---|---|
//! | `ipc-shm` | both processes are on one machine and speed matters most |
//! | `ipc-socket` | processes on one or many machines, any language, event driven |
//! | `ipc-durable-queue` | the receiver may not be running yet; messages must survive crashes |
//!
//! Depend on `ipc-core` directly to write code generic over the mechanism (through
//! [`Sender`] and [`Receiver`]), or to speak the wire format yourself: a frame is a 16-byte
//! header and a postcard payload, specified byte by byte in `PROTOCOL.md`, with golden test
//! vectors.
//!
//! This crate does no I/O and has no `unsafe`.
//!
//! # Example
//!
//! ```
//! use ipc_core::{FrameDecoder, FrameKind, Limits};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Chat<'a> {
//!     from: &'a str,
//!     text: &'a str,
//! }
//!
//! let limits = Limits::default();
//! let mut wire = Vec::new();
//! ipc_core::encode_frame(&mut wire, FrameKind::Data, 0, &Chat { from: "ann", text: "hi" }, &limits)?;
//!
//! // The receiving side: bytes may arrive split anywhere.
//! let mut decoder = FrameDecoder::new(limits);
//! let (first, second) = wire.split_at(5);
//! decoder.push(first);
//! assert!(decoder.next_frame()?.is_none());
//! decoder.push(second);
//! let frame = decoder.next_frame()?.expect("a whole frame");
//! let chat: Chat<'_> = frame.decode()?; // borrows from the decoder's buffer
//! assert_eq!(chat, Chat { from: "ann", text: "hi" });
//! # Ok::<(), ipc_core::Error>(())
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | (none) | | this crate has no cargo features: everything above is always built |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

mod buffer;
mod codec;
mod de;
mod decoder;
mod error;
mod frame;
mod handshake;
mod ser;
mod transport;

pub use crate::buffer::FrameBuffer;
pub use crate::codec::{
    decode, decode_as, encode_into, encode_to_vec, encoded_len, try_encode_into,
};
pub use crate::decoder::FrameDecoder;
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::frame::{
    DEFAULT_MAX_FRAME_LEN, Frame, FrameHeader, FrameKind, HANDSHAKE_FRAME_LEN, HEADER_LEN, Limits,
    MAGIC, PROTOCOL_VERSION, encode_frame, encode_frame_into, encode_raw_frame,
};
pub use crate::handshake::{
    Agreed, Close, CloseCode, FEATURE_BATCH, FEATURE_TOKEN, Hello, MAX_NAME_LEN, MAX_TOKEN_LEN,
    MessageType,
};
pub use crate::transport::{AsyncReceiver, AsyncSender, Receiver, Sender};

/// Details of the wire format that implementers of the protocol in another language, and the
/// workspace's own crates, need, and that an ordinary user of the typed API does not: the
/// batch limits of PROTOCOL.md §5 and the FNV-1a hash behind type fingerprints and layout
/// hashes.
pub mod wire {
    pub use crate::buffer::{MAX_BATCH_LEN, MAX_BATCHED_MESSAGE};
    pub use crate::handshake::fnv1a64;
}

/// The example in this crate's README, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct Readme;
