//! The handshake (`Hello`), the orderly close (`Close`), and message-type fingerprints.
//!
//! Both payloads have a fixed little-endian layout rather than a postcard one, so that a peer
//! in another language can speak the handshake without a postcard implementation.

use std::borrow::Cow;
use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::frame::{FrameKind, Limits, encode_raw_frame};

/// The longest type name or close reason carried on the wire, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The identity of the message type a channel carries: a name and its 64-bit FNV-1a
/// fingerprint. Peers compare fingerprints at connect time, so that a peer built with another
/// message type fails with [`ErrorKind::TypeMismatch`] instead of misdecoding.
///
/// ```
/// use ipc_core::MessageType;
///
/// let a = MessageType::named("chat.Message/1");
/// assert_eq!(a.fingerprint(), 0xd90e_ede0_6cf7_fb36);
/// assert!(a.check_peer(&MessageType::named("chat.Message/1")).is_ok());
/// assert!(a.check_peer(&MessageType::named("chat.Message/2")).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageType {
    name: Cow<'static, str>,
    fingerprint: u64,
}

impl MessageType {
    /// The type of `T`, named by [`std::any::type_name`].
    ///
    /// The name is stable for one compiler version and one crate layout; peers built
    /// separately (another compiler, another language) should agree on an explicit
    /// [`MessageType::named`] instead.
    pub fn of<T: ?Sized>() -> MessageType {
        MessageType::named(std::any::type_name::<T>())
    }

    /// A type identified by an explicit name, such as `"chat.Message/1"`.
    pub fn named(name: impl Into<Cow<'static, str>>) -> MessageType {
        let name = name.into();
        let fingerprint = fnv1a64(name.as_bytes());
        MessageType { name, fingerprint }
    }

    /// A type as announced by a peer: its (possibly shortened) name and its fingerprint.
    pub fn from_wire(name: String, fingerprint: u64) -> MessageType {
        MessageType {
            name: Cow::Owned(name),
            fingerprint,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 64-bit FNV-1a hash of the name's UTF-8 bytes.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Ok if `peer` is the same type; [`ErrorKind::TypeMismatch`] naming both otherwise.
    pub fn check_peer(&self, peer: &MessageType) -> Result<()> {
        if self.fingerprint == peer.fingerprint {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::TypeMismatch,
            format!(
                "peer exchanges `{}` (fingerprint {:#018x}), this end expects `{}` (fingerprint {:#018x})",
                peer.name, peer.fingerprint, self.name, self.fingerprint
            ),
        ))
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MessageType({:?}, {:#018x})",
            self.name, self.fingerprint
        )
    }
}

/// 64-bit FNV-1a: simple enough to write in any language from PROTOCOL.md.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The handshake: the first frame each side sends.
///
/// ```
/// use ipc_core::{Hello, Limits, MessageType, Frame, FrameKind};
///
/// let ours = Hello::new(MessageType::named("chat.Message/1"), &Limits::default());
/// let mut wire = Vec::new();
/// ours.encode_frame(&mut wire)?;
/// let (frame, _) = Frame::parse(&wire, &Limits::default())?;
/// assert_eq!(frame.kind(), FrameKind::Hello);
/// let theirs = Hello::decode(frame.payload())?;
/// let agreed = ours.agree(&theirs)?;
/// assert_eq!(agreed.send_limit().max_frame_len(), 16 * 1024 * 1024);
/// # Ok::<(), ipc_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    max_frame_len: u32,
    features: u32,
    message_type: MessageType,
}

/// The [`Hello`] feature bit (`0x2`) of a peer that accepts [`FrameKind::Batch`] frames:
/// several data messages in one frame, so that a stream of small messages costs two bytes of
/// framing per message instead of a 16-byte header. Send batches only to a peer that sets
/// it; [`FrameDecoder`](crate::FrameDecoder) always accepts them.
///
/// [`FrameKind::Batch`]: crate::FrameKind::Batch
pub const FEATURE_BATCH: u32 = 1 << 1;

/// The [`Hello`] feature bit (`0x4`) of a client that sends an
/// [`Auth`](crate::FrameKind::Auth) frame, carrying its token, right after this hello.
pub const FEATURE_TOKEN: u32 = 1 << 2;

/// The most bytes a token in an [`Auth`](crate::FrameKind::Auth) frame may have.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The fixed part of a `Hello` payload: max_frame_len, features, fingerprint, name_len.
const HELLO_FIXED_LEN: usize = 4 + 4 + 8 + 2;

impl Hello {
    /// The hello this side sends: its message type and the largest payload it accepts.
    pub fn new(message_type: MessageType, limits: &Limits) -> Hello {
        Hello {
            max_frame_len: limits.max_frame_len(),
            features: 0,
            message_type,
        }
    }

    /// The same hello announcing `features` (bits defined by the mechanism's documents,
    /// such as ipc-socket's messaging patterns).
    pub fn with_features(mut self, features: u32) -> Hello {
        self.features = features;
        self
    }

    /// The largest payload the sender of this hello accepts.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Feature bits. PROTOCOL.md defines two: bit 0 (`0x1`) = speaks the
    /// messaging patterns, bit 1 ([`FEATURE_BATCH`], `0x2`) = accepts batch frames; a
    /// receiver ignores bits it does not know.
    pub fn features(&self) -> u32 {
        self.features
    }

    /// The message type the sender of this hello exchanges.
    pub fn message_type(&self) -> &MessageType {
        &self.message_type
    }

    /// Appends the payload bytes (without frame header) to `out`. Names longer than
    /// [`MAX_NAME_LEN`] bytes are shortened on a character boundary; the fingerprint is
    /// always that of the full name.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        let name = truncate_utf8(self.message_type.name(), MAX_NAME_LEN);
        out.extend_from_slice(&self.max_frame_len.to_le_bytes());
        out.extend_from_slice(&self.features.to_le_bytes());
        out.extend_from_slice(&self.message_type.fingerprint().to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }

    /// Appends the whole hello frame (header and payload) to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) -> Result<usize> {
        let mut payload = Vec::with_capacity(HELLO_FIXED_LEN + MAX_NAME_LEN);
        self.encode_payload(&mut payload);
        encode_raw_frame(out, FrameKind::Hello, 0, &payload, &Limits::default())
    }

    /// Decodes a hello payload, validating every field.
    pub fn decode(payload: &[u8]) -> Result<Hello> {
        let Some(fixed) = payload.first_chunk::<HELLO_FIXED_LEN>() else {
            return Err(Error::truncated(
                "hello payload",
                payload.len(),
                HELLO_FIXED_LEN,
            ));
        };
        let max_frame_len = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let features = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&fixed[8..16]);
        let fingerprint = u64::from_le_bytes(fingerprint);
        let name_len = usize::from(u16::from_le_bytes([fixed[16], fixed[17]]));
        let name = decode_text("hello type name", &payload[HELLO_FIXED_LEN..], name_len)?;
        Ok(Hello {
            max_frame_len,
            features,
            message_type: MessageType::from_wire(name, fingerprint),
        })
    }

    /// Checks the peer's hello against ours and returns what both sides agreed on.
    /// [`ErrorKind::TypeMismatch`] if the message types differ.
    pub fn agree(&self, peer: &Hello) -> Result<Agreed> {
        self.message_type.check_peer(&peer.message_type)?;
        Ok(Agreed {
            send_limit: Limits::new().with_max_frame_len(peer.max_frame_len),
            recv_limit: Limits::new().with_max_frame_len(self.max_frame_len),
        })
    }
}

/// What a successful handshake fixed for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    send_limit: Limits,
    recv_limit: Limits,
}

impl Agreed {
    /// The limit for frames this side sends: the peer's announced maximum.
    pub fn send_limit(&self) -> Limits {
        self.send_limit
    }

    /// The limit for frames this side receives: its own announced maximum.
    pub fn recv_limit(&self) -> Limits {
        self.recv_limit
    }
}

/// Why a connection was closed, on the wire as a `u16`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// `0`: the sender is done; nothing went wrong.
    pub const NORMAL: CloseCode = CloseCode(0);
    /// `1`: the sender is shutting down (a server stopping).
    pub const GOING_AWAY: CloseCode = CloseCode(1);
    /// `2`: the peer broke the protocol (bad frame, bad magic, unexpected kind).
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(2);
    /// `3`: the peer exchanges another message type.
    pub const TYPE_MISMATCH: CloseCode = CloseCode(3);
    /// `4`: the peer sent a frame over the limit.
    pub const TOO_LARGE: CloseCode = CloseCode(4);
    /// `5`: the peer did not keep up and was disconnected.
    pub const TOO_SLOW: CloseCode = CloseCode(5);
    /// `6`: the peer is not allowed (credentials, connection limit).
    pub const REFUSED: CloseCode = CloseCode(6);
    /// `7`: the peer sent a frame that did not decode as the agreed message type.
    pub const DECODE_ERROR: CloseCode = CloseCode(7);
    /// `8`: the peer sent nothing at all (no frame, no pong) for longer than the sender's
    /// heartbeat timeout: it is closed as dead, although its stream is still open.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(8);
    /// `9`: the response to one of the peer's requests exceeds the `max_frame_len` the peer
    /// announced, so it cannot be sent; the reason names the request id and both sizes.
    pub const RESPONSE_TOO_LARGE: CloseCode = CloseCode(9);
    /// `10`: a frame the peer started did not arrive whole within the sender's frame
    /// deadline (a peer trickling bytes, or sending only fragments).
    pub const FRAME_TIMEOUT: CloseCode = CloseCode(10);
    /// `11`: the peer presented no token, or a token the sender does not accept; sent
    /// instead of a hello, and the reason never repeats the token.
    pub const UNAUTHORIZED: CloseCode = CloseCode(11);
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            CloseCode::NORMAL => "normal",
            CloseCode::GOING_AWAY => "going away",
            CloseCode::PROTOCOL_ERROR => "protocol error",
            CloseCode::TYPE_MISMATCH => "type mismatch",
            CloseCode::TOO_LARGE => "too large",
            CloseCode::TOO_SLOW => "too slow",
            CloseCode::REFUSED => "refused",
            CloseCode::DECODE_ERROR => "decode error",
            CloseCode::HEARTBEAT_TIMEOUT => "heartbeat timeout",
            CloseCode::RESPONSE_TOO_LARGE => "response too large",
            CloseCode::FRAME_TIMEOUT => "frame timeout",
            CloseCode::UNAUTHORIZED => "unauthorized",
            _ => "unknown",
        };
        write!(f, "{} ({name})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An orderly close: a code and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// Why the sender closes.
    pub code: CloseCode,
    /// Details for a person, at most [`MAX_NAME_LEN`] bytes on the wire.
    pub reason: String,
}

impl Close {
    /// A close with `code` and `reason`.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Close {
        Close {
            code,
            reason: reason.into(),
        }
    }

    /// Appends the whole close frame to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) -> Result<usize> {
        let reason = truncate_utf8(&self.reason, MAX_NAME_LEN);
        let mut payload = Vec::with_capacity(4 + reason.len());
        payload.extend_from_slice(&self.code.0.to_le_bytes());
        payload.extend_from_slice(&(reason.len() as u16).to_le_bytes());
        payload.extend_from_slice(reason.as_bytes());
        encode_raw_frame(out, FrameKind::Close, 0, &payload, &Limits::default())
    }

    /// Decodes a close payload.
    pub fn decode(payload: &[u8]) -> Result<Close> {
        let Some(fixed) = payload.first_chunk::<4>() else {
            return Err(Error::truncated("close payload", payload.len(), 4));
        };
        let code = CloseCode(u16::from_le_bytes([fixed[0], fixed[1]]));
        let reason_len = usize::from(u16::from_le_bytes([fixed[2], fixed[3]]));
        let reason = decode_text("close reason", &payload[4..], reason_len)?;
        Ok(Close { code, reason })
    }

    /// The error a receiver of this close reports: [`ErrorKind::PeerClosed`] with the code
    /// and reason.
    pub fn into_error(self) -> Error {
        if self.reason.is_empty() {
            return Error::new(
                ErrorKind::PeerClosed,
                format!("peer closed the connection with code {}", self.code),
            );
        }
        Error::new(
            ErrorKind::PeerClosed,
            format!(
                "peer closed the connection with code {}: {}",
                self.code, self.reason
            ),
        )
    }
}

fn decode_text(what: &str, rest: &[u8], len: usize) -> Result<String> {
    if len > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{what} of {len} bytes exceeds limit of {MAX_NAME_LEN}"),
        ));
    }
    if rest.len() != len {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{what} declares {len} bytes but {} follow", rest.len()),
        ));
    }
    match std::str::from_utf8(rest) {
        Ok(text) => Ok(text.to_owned()),
        Err(err) => Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "{what} is not utf-8 (invalid byte at offset {})",
                err.valid_up_to()
            ),
        )),
    }
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mismatched_types_fail_with_both_names() {
        let ours = Hello::new(MessageType::named("a.Ping/1"), &Limits::default());
        let theirs = Hello::new(MessageType::named("a.Ping/2"), &Limits::default());
        let err = ours.agree(&theirs).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TypeMismatch);
        assert!(err.to_string().contains("`a.Ping/2`"), "{err}");
        assert!(
            err.to_string().contains("this end expects `a.Ping/1`"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_agreed_per_direction() {
        let ours = Hello::new(
            MessageType::of::<u32>(),
            &Limits::new().with_max_frame_len(100),
        );
        let theirs = Hello::new(
            MessageType::of::<u32>(),
            &Limits::new().with_max_frame_len(7),
        );
        let agreed = ours.agree(&theirs).unwrap();
        assert_eq!(agreed.send_limit().max_frame_len(), 7);
        assert_eq!(agreed.recv_limit().max_frame_len(), 100);
    }

    #[test]
    fn long_names_are_shortened_on_the_wire_but_keep_their_fingerprint() {
        let long = "é".repeat(700); // 1400 bytes
        let hello = Hello::new(MessageType::named(long.clone()), &Limits::default());
        let mut payload = Vec::new();
        hello.encode_payload(&mut payload);
        let decoded = Hello::decode(&payload).unwrap();
        assert_eq!(decoded.message_type().name().len(), 1024);
        assert_eq!(
            decoded.message_type().fingerprint(),
            fnv1a64(long.as_bytes())
        );
        assert!(hello.agree(&decoded).is_ok());
    }

    #[test]
    fn bad_hello_payloads_are_protocol_errors() {
        let mut payload = Vec::new();
        Hello::new(MessageType::named("x"), &Limits::default()).encode_payload(&mut payload);
        for cut in 0..payload.len() {
            assert!(Hello::decode(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_len = payload.clone();
        bad_len[16..18].copy_from_slice(&2000u16.to_le_bytes());
        let err = Hello::decode(&bad_len).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hello type name of 2000 bytes exceeds limit of 1024"
        );
        let mut bad_utf8 = payload.clone();
        *bad_utf8.last_mut().unwrap() = 0xFF;
        assert_eq!(
            Hello::decode(&bad_utf8).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn close_round_trips_into_a_peer_closed_error() {
        let mut wire = Vec::new();
        Close::new(CloseCode::TOO_SLOW, "outbound queue of 1024 frames full")
            .encode_frame(&mut wire)
            .unwrap();
        let (frame, _) = Frame::parse(&wire, &Limits::default()).unwrap();
        assert_eq!(frame.kind(), FrameKind::Close);
        let err = Close::decode(frame.payload()).unwrap().into_error();
        assert_eq!(err.kind(), ErrorKind::PeerClosed);
        assert_eq!(
            err.to_string(),
            "peer closed the connection with code 5 (too slow): outbound queue of 1024 frames full"
        );
    }
}
