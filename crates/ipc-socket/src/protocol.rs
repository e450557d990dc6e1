//! The frame-level protocol of a plain duplex connection, shared by the blocking
//! [`Connection`](crate::Connection) and the tokio [`AsyncConnection`](crate::AsyncConnection):
//! buffers sized for a connection, the check of the peer's hello, the sorting of control
//! frames, and the errors for a stream that ends. The two connections are siblings on top
//! of this module; neither uses the other.

use std::fmt;

use ipc_core::wire::MAX_BATCHED_MESSAGE;
use ipc_core::{
    Close, Error, ErrorKind, FEATURE_TOKEN, Frame, FrameBuffer, FrameDecoder, FrameKind, Hello,
    Limits, MAX_TOKEN_LEN, Result, encode_raw_frame,
};

use crate::config::ConnectionConfig;

/// What this side writes to open a connection: its hello and, when it has a token, the
/// `Auth` frame that carries it.
pub(crate) fn opening(config: &ConnectionConfig, ours: &Hello, out: &mut Vec<u8>) -> Result<()> {
    ours.encode_frame(out)?;
    if let Some(token) = config.token() {
        encode_raw_frame(
            out,
            FrameKind::Auth,
            0,
            token.as_bytes(),
            &Limits::default(),
        )?;
    }
    Ok(())
}

/// The source of every token refusal: it makes the close code 11 (unauthorized).
#[derive(Debug)]
struct Unauthorized;

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("token check failed")
    }
}

impl std::error::Error for Unauthorized {}

fn unauthorized(reason: &'static str) -> Error {
    Error::new(ErrorKind::PermissionDenied, reason).with_source(Unauthorized)
}

/// Whether `err` is a token refusal (close code 11).
pub(crate) fn is_unauthorized(err: &Error) -> bool {
    std::error::Error::source(err).is_some_and(|source| source.is::<Unauthorized>())
}

/// The frames of a handshake, one at a time: the peer's hello, then its `Auth` frame if its
/// hello announced one. A side that holds tokens checks the token before it compares the
/// hello with its own, so that a peer without a token learns nothing (not even a type
/// mismatch) but the refusal.
pub(crate) struct Opening<'a> {
    config: &'a ConnectionConfig,
    ours: &'a Hello,
    /// The peer's hello, waiting for its `Auth` frame, and the agreed limits if already
    /// compared.
    hello: Option<(Hello, Option<Limits>)>,
}

/// What a handshake frame did.
pub(crate) enum Step {
    /// Another frame must follow.
    More,
    /// The handshake is done: the peer's hello and the limits to send with.
    Done(Hello, Limits),
}

impl<'a> Opening<'a> {
    pub(crate) fn new(config: &'a ConnectionConfig, ours: &'a Hello) -> Opening<'a> {
        Opening {
            config,
            ours,
            hello: None,
        }
    }

    pub(crate) fn on_frame(&mut self, frame: Frame<'_>) -> Result<Step> {
        if let Some((theirs, agreed)) = self.hello.take() {
            check_auth(frame, self.config)?;
            let send_limits = match agreed {
                Some(limits) => limits,
                None => agree(self.ours, &theirs)?,
            };
            return Ok(Step::Done(theirs, send_limits));
        }
        let theirs = decode_peer_hello(frame)?;
        let agreed = if self.config.accepted_tokens().is_some() {
            None
        } else {
            Some(agree(self.ours, &theirs)?)
        };
        match (expects_auth(self.config, &theirs)?, agreed) {
            (false, Some(send_limits)) => Ok(Step::Done(theirs, send_limits)),
            (false, None) => {
                let send_limits = agree(self.ours, &theirs)?;
                Ok(Step::Done(theirs, send_limits))
            }
            (true, agreed) => {
                self.hello = Some((theirs, agreed));
                Ok(Step::More)
            }
        }
    }
}

/// After the peer's hello: whether an `Auth` frame must follow it. A side that holds
/// tokens refuses a hello without one.
pub(crate) fn expects_auth(config: &ConnectionConfig, theirs: &Hello) -> Result<bool> {
    if theirs.features() & FEATURE_TOKEN != 0 {
        return Ok(true);
    }
    if config.accepted_tokens().is_some() {
        return Err(unauthorized("no token presented"));
    }
    Ok(false)
}

/// Checks the frame after a hello that announced a token. The errors never contain the
/// token's bytes.
pub(crate) fn check_auth(frame: Frame<'_>, config: &ConnectionConfig) -> Result<()> {
    if frame.kind() != FrameKind::Auth {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "expected an Auth frame after a hello that sets feature bit 2, got {:?}",
                frame.kind()
            ),
        ));
    }
    let token = frame.payload();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "auth frame of {} bytes: tokens have 1 to {MAX_TOKEN_LEN} bytes",
                token.len()
            ),
        ));
    }
    match config.accepted_tokens() {
        Some(accepted) if !crate::token::accepts(accepted, token) => {
            Err(unauthorized("the token presented is not accepted"))
        }
        _ => Ok(()),
    }
}

/// How much a one-peer connection reads at once at most: many small frames per read.
pub(crate) const READ_ROOM: usize = 64 * 1024;

/// A decoder for a one-peer connection, with room for large reads.
pub(crate) fn read_decoder(config: &ConnectionConfig) -> FrameDecoder {
    let mut decoder = FrameDecoder::new(*config.limits());
    decoder.reserve(READ_ROOM);
    decoder
}

/// The write buffer of a connection: room for a flush threshold's worth of frames.
pub(crate) fn write_buffer(config: &ConnectionConfig) -> FrameBuffer {
    FrameBuffer::with_capacity(config.flush_threshold().min(1 << 20) + MAX_BATCHED_MESSAGE + 1024)
}

/// Whether the peer's hello agrees with ours: the limits to send with.
pub(crate) fn agree(ours: &Hello, theirs: &Hello) -> Result<Limits> {
    Ok(ours.agree(theirs)?.send_limit())
}

/// The peer's first frame as a hello, not yet compared with ours (a side that holds tokens
/// checks the token first, and tells a peer without one nothing about itself).
pub(crate) fn decode_peer_hello(frame: Frame<'_>) -> Result<Hello> {
    match frame.kind() {
        FrameKind::Hello => Hello::decode(frame.payload()),
        FrameKind::Close => Err(Close::decode(frame.payload())?.into_error()),
        kind => Err(Error::new(
            ErrorKind::Protocol,
            format!("expected a hello frame first, got {kind:?}"),
        )),
    }
}

/// What the front of a duplex connection's receive buffer holds after the handshake.
pub(crate) enum Front {
    /// A data frame (received whole or not): the caller takes it.
    Data,
    /// Nothing whole yet: more input is needed.
    More,
    /// A control frame, already taken out of the buffer, and what it asks.
    Control(Inbound),
}

/// What a control frame (anything but data) asks of a plain duplex connection.
pub(crate) enum Inbound {
    Ping(u32),
    Ignore,
    Closed(Error),
    Bad(Error),
}

/// Looks at the front of the receive buffer: a data frame stays for the caller to take,
/// a control frame is taken and sorted (see [`classify`]).
#[inline]
pub(crate) fn front(decoder: &mut FrameDecoder) -> Front {
    match decoder.peek_header() {
        Ok(Some(header)) if header.kind() == FrameKind::Data => Front::Data,
        Ok(None) => Front::More,
        Ok(Some(_)) => match decoder.next_frame() {
            Ok(Some(frame)) => Front::Control(classify(frame)),
            Ok(None) => Front::More,
            Err(err) => Front::Control(Inbound::Bad(err)),
        },
        Err(err) => Front::Control(Inbound::Bad(err)),
    }
}

/// Sorts a control frame received after the handshake on a duplex connection; callers
/// take data frames before (see `FrameDecoder::peek_header`).
pub(crate) fn classify(frame: Frame<'_>) -> Inbound {
    match frame.kind() {
        FrameKind::Data | FrameKind::Pong => Inbound::Ignore,
        FrameKind::Ping => Inbound::Ping(frame.id()),
        FrameKind::Close => match Close::decode(frame.payload()) {
            Ok(close) => Inbound::Closed(close.into_error()),
            Err(err) => Inbound::Bad(err.context("bad close frame")),
        },
        kind => Inbound::Bad(Error::new(
            ErrorKind::Protocol,
            format!("unexpected {kind:?} frame on a duplex connection"),
        )),
    }
}

/// Decodes the data frame that [`front`] found. A payload that does not decode is
/// skipped: the error is returned and the connection stays usable.
#[inline]
pub(crate) fn take_data<'a, M: serde::Deserialize<'a>>(decoder: &'a mut FrameDecoder) -> Result<M> {
    match decoder.next_frame()? {
        Some(frame) => frame.decode::<M>(),
        None => Err(vanished()),
    }
}

#[cold]
fn vanished() -> Error {
    Error::new(
        ErrorKind::Other,
        "data frame vanished from the receive buffer",
    )
}

/// The error for a stream that ended (a read of 0 bytes) after the handshake: a frame cut
/// short, or an end without a close frame.
#[cold]
pub(crate) fn end_of_stream(decoder: &FrameDecoder) -> Error {
    match decoder.finish() {
        Err(err) => err.context("peer vanished"),
        Ok(()) => Error::new(
            ErrorKind::PeerDied,
            "peer closed the stream without a close frame",
        ),
    }
}
