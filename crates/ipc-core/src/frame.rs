//! The frame: a 16-byte header and a payload. `PROTOCOL.md` documents it byte by byte.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, ErrorKind, Result};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = [0xA7, 0x1C];

/// The protocol version this build speaks, carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 1;

/// The length of a frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// The default largest payload a peer accepts: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// The largest `Hello` or `Close` payload every receiver accepts, whatever its
/// [`Limits::max_frame_len`]: 2048 bytes (a `Hello` is at most 18 + 1024 bytes, a `Close`
/// at most 4 + 1024).
pub const HANDSHAKE_FRAME_LEN: u32 = 2048;

/// Flag bits defined by protocol version 1: none. Any set bit is a protocol error.
const KNOWN_FLAGS: u8 = 0;

/// Limits checked before any memory is allocated for input.
///
/// ```
/// use ipc_core::Limits;
///
/// let limits = Limits::default().with_max_frame_len(64 * 1024);
/// assert!(limits.check_frame_len(64 * 1024).is_ok());
/// assert_eq!(
///     limits.check_frame_len(64 * 1024 + 1).unwrap_err().to_string(),
///     "frame of 65537 bytes exceeds limit of 65536"
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_frame_len: u32,
}

impl Limits {
    /// Limits with the defaults: frames of up to [`DEFAULT_MAX_FRAME_LEN`] payload bytes.
    pub const fn new() -> Limits {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// The same limits with the largest accepted payload set to `max_frame_len` bytes.
    pub const fn with_max_frame_len(mut self, max_frame_len: u32) -> Limits {
        self.max_frame_len = max_frame_len;
        self
    }

    /// The largest accepted payload, in bytes.
    pub const fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Checks a payload length against the limit: [`ErrorKind::TooLarge`] if it is over.
    #[inline]
    pub fn check_frame_len(&self, len: u64) -> Result<()> {
        if len > u64::from(self.max_frame_len) {
            return Err(Error::too_large(len, u64::from(self.max_frame_len)));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new()
    }
}

/// What a frame carries. The byte values are part of the wire format.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// `0x01`: the handshake, first frame in each direction (see [`Hello`](crate::Hello)).
    Hello,
    /// `0x02`: one application message, postcard-encoded.
    Data,
    /// `0x03`: an orderly close, with a code and a reason (see [`Close`](crate::Close)).
    Close,
    /// `0x04`: a liveness probe; the id is a nonce to echo.
    Ping,
    /// `0x05`: the answer to a ping, echoing its id.
    Pong,
    /// `0x06`: a request; the id is its correlation id, the payload a postcard message.
    Request,
    /// `0x07`: the response to the request with the same id; the payload a postcard message.
    Response,
    /// `0x08`: subscribe to a topic prefix (payload: the topic's UTF-8 bytes); the id is
    /// echoed by the [`SubscribeAck`](FrameKind::SubscribeAck).
    Subscribe,
    /// `0x09`: the subscription with the same id is in force; empty payload.
    SubscribeAck,
    /// `0x0A`: cancel a subscription (payload: the topic's UTF-8 bytes).
    Unsubscribe,
    /// `0x0B`: a message on a topic: u16 LE topic length, topic UTF-8 bytes, postcard message.
    Publish,
    /// `0x0C`: several application messages in one frame, each a u16 LE length and that
    /// many bytes of postcard message; sent only to a peer whose hello sets
    /// [`FEATURE_BATCH`](crate::FEATURE_BATCH). [`FrameDecoder`](crate::FrameDecoder) hands
    /// out each message as a [`Data`](FrameKind::Data) frame.
    Batch,
    /// `0x0D`: a client's token (1 to [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) bytes),
    /// sent right after its hello when that hello sets
    /// [`FEATURE_TOKEN`](crate::FEATURE_TOKEN); id 0.
    Auth,
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub const fn to_byte(self) -> u8 {
        match self {
            FrameKind::Hello => 0x01,
            FrameKind::Data => 0x02,
            FrameKind::Close => 0x03,
            FrameKind::Ping => 0x04,
            FrameKind::Pong => 0x05,
            FrameKind::Request => 0x06,
            FrameKind::Response => 0x07,
            FrameKind::Subscribe => 0x08,
            FrameKind::SubscribeAck => 0x09,
            FrameKind::Unsubscribe => 0x0A,
            FrameKind::Publish => 0x0B,
            FrameKind::Batch => 0x0C,
            FrameKind::Auth => 0x0D,
        }
    }

    /// The kind for a byte on the wire, or a [`ErrorKind::Protocol`] error.
    pub fn from_byte(byte: u8) -> Result<FrameKind> {
        match FrameKind::from_known_byte(byte) {
            Some(kind) => Ok(kind),
            None => Err(Error::new(
                ErrorKind::Protocol,
                format!("unknown frame kind 0x{byte:02x}"),
            )),
        }
    }

    /// The kind for a byte on the wire, `None` for a byte no kind has.
    #[inline]
    const fn from_known_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::Data,
            0x03 => FrameKind::Close,
            0x04 => FrameKind::Ping,
            0x05 => FrameKind::Pong,
            0x06 => FrameKind::Request,
            0x07 => FrameKind::Response,
            0x08 => FrameKind::Subscribe,
            0x09 => FrameKind::SubscribeAck,
            0x0A => FrameKind::Unsubscribe,
            0x0B => FrameKind::Publish,
            0x0C => FrameKind::Batch,
            0x0D => FrameKind::Auth,
            _ => return None,
        })
    }
}

/// The first 8 header bytes of every valid frame, kind byte (index 3) aside: magic,
/// version, no flags (none are known), zero reserved bytes; read as a little-endian u64.
const FIXED_PREFIX: u64 = u64::from_le_bytes([
    MAGIC[0],
    MAGIC[1],
    PROTOCOL_VERSION,
    0,
    KNOWN_FLAGS,
    0,
    0,
    0,
]);
/// The bits of [`FIXED_PREFIX`] that a header must match: all but the kind byte's.
const FIXED_PREFIX_MASK: u64 = !(0xFF << 24);

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    kind: FrameKind,
    id: u32,
    len: u32,
}

impl FrameHeader {
    /// A header for a frame of `kind` with correlation `id` and `len` payload bytes.
    pub const fn new(kind: FrameKind, id: u32, len: u32) -> FrameHeader {
        FrameHeader { kind, id, len }
    }

    /// The frame's kind.
    pub const fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The frame's id: a correlation id or nonce; 0 where the kind uses none.
    pub const fn id(&self) -> u32 {
        self.id
    }

    /// The payload length in bytes.
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// True when the frame has no payload.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The length of header plus payload.
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }

    /// Writes the header's 16 bytes.
    #[inline]
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = PROTOCOL_VERSION;
        out[3] = self.kind.to_byte();
        out[4] = 0; // flags
        out[5..8].fill(0); // reserved
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..16].copy_from_slice(&self.id.to_le_bytes());
    }

    /// The header's 16 bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.write(&mut out);
        out
    }

    /// Parses and validates 16 header bytes: magic, version, kind, flags, reserved bytes,
    /// and the payload length against `limits`, in that order.
    #[inline]
    pub fn parse(bytes: &[u8; HEADER_LEN], limits: &Limits) -> Result<FrameHeader> {
        // Fast path first; anything it does not accept goes through the field-by-field
        // checks, which say what is wrong.
        match FrameHeader::parse_valid(bytes, limits) {
            Some(header) => Ok(header),
            None => FrameHeader::parse_checked(bytes, limits),
        }
    }

    /// The header if `bytes` are a valid header within `limits`, checking every fixed byte
    /// with one comparison; `None` otherwise, and then [`parse_checked`] says why.
    ///
    /// [`parse_checked`]: FrameHeader::parse_checked
    #[inline]
    pub(crate) fn parse_valid(bytes: &[u8; HEADER_LEN], limits: &Limits) -> Option<FrameHeader> {
        let (prefix, rest) = bytes.split_first_chunk::<8>()?;
        let (len, id) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len);
        if u64::from_le_bytes(*prefix) & FIXED_PREFIX_MASK != FIXED_PREFIX
            || len > limits.max_frame_len
        {
            return None;
        }
        let kind = FrameKind::from_known_byte(prefix[3])?;
        let id = u32::from_le_bytes(*id.first_chunk::<4>()?);
        Some(FrameHeader { kind, id, len })
    }

    /// The field-by-field validation of [`parse`](FrameHeader::parse), with an error that
    /// names the first wrong field.
    #[cold]
    fn parse_checked(bytes: &[u8; HEADER_LEN], limits: &Limits) -> Result<FrameHeader> {
        check_prefix(bytes)?;
        let kind = FrameKind::from_byte(bytes[3])?;
        let flags = bytes[4];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("unknown frame flags 0x{flags:02x}"),
            ));
        }
        if bytes[5..8] != [0, 0, 0] {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "reserved header bytes are {:02x} {:02x} {:02x}, must be zero",
                    bytes[5], bytes[6], bytes[7]
                ),
            ));
        }
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        // Hello, Auth and Close frames are always accepted up to HANDSHAKE_FRAME_LEN, whatever
        // the limit: a peer must be able to say who it is and why it closes.
        if !(matches!(kind, FrameKind::Hello | FrameKind::Auth | FrameKind::Close)
            && len <= HANDSHAKE_FRAME_LEN)
        {
            limits.check_frame_len(u64::from(len))?;
        }
        let id = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        Ok(FrameHeader { kind, id, len })
    }
}

/// Checks the magic and version in however many leading header bytes are present, so that a
/// stream of garbage fails at its first wrong byte instead of after 16.
pub(crate) fn check_prefix(bytes: &[u8]) -> Result<()> {
    for (i, (&have, &want)) in bytes.iter().zip(MAGIC.iter()).enumerate() {
        if have != want {
            // 0x16 opens a TLS handshake record, 0x15 a TLS alert: the usual mix-up of a
            // tls: peer and a plaintext port.
            if i == 0 && (have == 0x16 || have == 0x15) {
                return Err(Error::new(
                    ErrorKind::BadMagic,
                    format!(
                        "bad magic byte 0: 0x{have:02x}, expected 0x{want:02x} (the peer speaks TLS: use a tls: address on both sides, or neither)"
                    ),
                ));
            }
            return Err(Error::new(
                ErrorKind::BadMagic,
                format!(
                    "bad magic byte {i}: 0x{have:02x}, expected 0x{want:02x} (not an ipc peer, or the stream is out of sync)"
                ),
            ));
        }
    }
    if let Some(&version) = bytes.get(2)
        && version != PROTOCOL_VERSION
    {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "peer speaks protocol version {version}, this end speaks version {PROTOCOL_VERSION}"
            ),
        ));
    }
    Ok(())
}

/// A complete, validated frame borrowed from a buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    header: FrameHeader,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    #[inline]
    pub(crate) fn from_parts(header: FrameHeader, payload: &'a [u8]) -> Frame<'a> {
        debug_assert_eq!(header.len as usize, payload.len());
        Frame { header, payload }
    }

    /// Parses one frame from the start of `bytes`, returning it and the number of bytes it
    /// took. [`ErrorKind::Truncated`] if `bytes` ends before the frame does.
    ///
    /// ```
    /// use ipc_core::{Frame, FrameKind, Limits};
    ///
    /// let mut buf = Vec::new();
    /// ipc_core::encode_frame(&mut buf, FrameKind::Data, 0, "hi", &Limits::default())?;
    /// let (frame, used) = Frame::parse(&buf, &Limits::default())?;
    /// assert_eq!(used, buf.len());
    /// assert_eq!(frame.decode::<&str>()?, "hi");
    /// # Ok::<(), ipc_core::Error>(())
    /// ```
    #[inline]
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<(Frame<'a>, usize)> {
        let Some(header_bytes) = bytes.first_chunk::<HEADER_LEN>() else {
            check_prefix(bytes)?;
            return Err(Error::truncated("frame header", bytes.len(), HEADER_LEN));
        };
        let header = FrameHeader::parse(header_bytes, limits)?;
        let frame_len = header.frame_len();
        let Some(payload) = bytes.get(HEADER_LEN..frame_len) else {
            return Err(Error::truncated("frame", bytes.len(), frame_len));
        };
        Ok((Frame { header, payload }, frame_len))
    }

    /// The validated header.
    #[inline]
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The frame's kind.
    #[inline]
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    /// The frame's id (correlation id or nonce; 0 where unused).
    #[inline]
    pub fn id(&self) -> u32 {
        self.header.id
    }

    /// The payload bytes.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Decodes the payload as a `T`, which may borrow from it.
    #[inline]
    pub fn decode<T: Deserialize<'a>>(&self) -> Result<T> {
        codec::decode(self.payload)
    }

    /// [`decode`](Frame::decode), with errors naming the agreed message type `type_name`
    /// (see [`decode_as`](crate::decode_as)).
    #[inline]
    pub fn decode_as<T: Deserialize<'a>>(&self, type_name: &str) -> Result<T> {
        codec::decode_as(self.payload, type_name)
    }
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.header.kind)
            .field("id", &self.header.id)
            .field("len", &self.header.len)
            .finish()
    }
}

/// Appends a whole frame (header and postcard payload of `value`) to `out`, and returns its
/// length. The payload is serialised in place after the header; on error `out` is unchanged.
///
/// `limits` is the receiver's: a payload longer than `limits.max_frame_len()` is
/// [`ErrorKind::TooLarge`] here, at the sender, rather than at the peer.
#[inline]
pub fn encode_frame<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u32,
    value: &T,
    limits: &Limits,
) -> Result<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    match codec::encode_to_vec(value, out, limits.max_frame_len as usize) {
        Ok(payload_len) => {
            finish_header(out, start, kind, id, payload_len);
            Ok(HEADER_LEN + payload_len)
        }
        Err(err) => {
            out.truncate(start);
            Err(err)
        }
    }
}

#[inline]
fn finish_header(out: &mut [u8], start: usize, kind: FrameKind, id: u32, payload_len: usize) {
    // The payload length fits in u32: encode_to_vec stopped at a u32 limit.
    let header = FrameHeader::new(kind, id, payload_len as u32);
    let slot: &mut [u8; HEADER_LEN] = (&mut out[start..start + HEADER_LEN])
        .try_into()
        .expect("slot is HEADER_LEN bytes");
    header.write(slot);
}

/// Writes a whole frame into `buf` (header and postcard payload of `value`) and returns its
/// length; [`ErrorKind::TooLarge`] if it does not fit in `buf` or exceeds `limits`.
pub fn encode_frame_into<T: Serialize + ?Sized>(
    buf: &mut [u8],
    kind: FrameKind,
    id: u32,
    value: &T,
    limits: &Limits,
) -> Result<usize> {
    match try_encode_frame_into(buf, kind, id, value, limits)? {
        Some(len) => Ok(len),
        None if buf.len() < HEADER_LEN => Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "frame does not fit in buffer of {} bytes (header alone is {HEADER_LEN})",
                buf.len()
            ),
        )),
        None if buf.len() - HEADER_LEN > limits.max_frame_len as usize => Err(Error::too_large(
            codec::encoded_len(value)? as u64,
            u64::from(limits.max_frame_len),
        )),
        None => Err(Error::new(
            ErrorKind::TooLarge,
            format!("frame does not fit in buffer of {} bytes", buf.len()),
        )),
    }
}

/// [`encode_frame_into`] for callers with a fallback: `Ok(None)` when the frame does not fit
/// in `buf` or exceeds `limits` (`buf` may then hold a partial frame), without building an
/// error.
#[inline]
pub(crate) fn try_encode_frame_into<T: Serialize + ?Sized>(
    buf: &mut [u8],
    kind: FrameKind,
    id: u32,
    value: &T,
    limits: &Limits,
) -> Result<Option<usize>> {
    let Some((header, rest)) = buf.split_first_chunk_mut::<HEADER_LEN>() else {
        return Ok(None);
    };
    // The payload may not grow past the limit: the slice ends there.
    let room = rest.len().min(limits.max_frame_len as usize);
    let Some(payload_len) = codec::try_encode_into(value, &mut rest[..room])? else {
        return Ok(None);
    };
    // The payload length fits in u32: it is at most the u32 limit.
    FrameHeader::new(kind, id, payload_len as u32).write(header);
    Ok(Some(HEADER_LEN + payload_len))
}

/// Appends a frame with an already-encoded `payload` to `out`.
pub fn encode_raw_frame(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u32,
    payload: &[u8],
    limits: &Limits,
) -> Result<usize> {
    let header = raw_header(kind, id, payload, limits)?;
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(header.frame_len())
}

/// The header of a frame carrying `payload` as it is, once its length passed `limits`.
pub(crate) fn raw_header(
    kind: FrameKind,
    id: u32,
    payload: &[u8],
    limits: &Limits,
) -> Result<FrameHeader> {
    limits.check_frame_len(payload.len() as u64)?;
    Ok(FrameHeader::new(kind, id, payload.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_little_endian() {
        let header = FrameHeader::new(FrameKind::Data, 0x0102_0304, 0x0A0B_0C0D);
        let bytes = header.to_bytes();
        assert_eq!(
            bytes,
            [
                0xA7, 0x1C, 1, 2, 0, 0, 0, 0, 0x0D, 0x0C, 0x0B, 0x0A, 0x04, 0x03, 0x02, 0x01
            ]
        );
        let limits = Limits::new().with_max_frame_len(u32::MAX);
        assert_eq!(FrameHeader::parse(&bytes, &limits).unwrap(), header);
    }

    #[test]
    fn the_fast_header_check_agrees_with_the_field_by_field_one() {
        let limits = Limits::new().with_max_frame_len(1000);
        let good = FrameHeader::new(FrameKind::Data, 7, 1000).to_bytes();
        for i in 0..HEADER_LEN {
            for value in [
                0x00, 0x01, 0x02, 0x03, 0x0B, 0x0C, 0x1C, 0x80, 0xA7, 0xE8, 0xFF,
            ] {
                let mut bytes = good;
                bytes[i] = value;
                assert_eq!(
                    FrameHeader::parse_valid(&bytes, &limits),
                    FrameHeader::parse_checked(&bytes, &limits).ok(),
                    "byte {i} = 0x{value:02x}"
                );
            }
        }
    }

    #[test]
    fn header_checks_each_field() {
        let good = FrameHeader::new(FrameKind::Ping, 1, 0).to_bytes();
        let limits = Limits::default();
        let cases: [(usize, u8, ErrorKind, &str); 6] = [
            (
                0,
                0x00,
                ErrorKind::BadMagic,
                "bad magic byte 0: 0x00, expected 0xa7",
            ),
            (
                1,
                0xFF,
                ErrorKind::BadMagic,
                "bad magic byte 1: 0xff, expected 0x1c",
            ),
            (
                2,
                9,
                ErrorKind::UnsupportedVersion,
                "peer speaks protocol version 9, this end speaks version 1",
            ),
            (3, 0x7E, ErrorKind::Protocol, "unknown frame kind 0x7e"),
            (4, 0x80, ErrorKind::Protocol, "unknown frame flags 0x80"),
            (
                6,
                1,
                ErrorKind::Protocol,
                "reserved header bytes are 00 01 00, must be zero",
            ),
        ];
        for (offset, byte, kind, message) in cases {
            let mut bytes = good;
            bytes[offset] = byte;
            let err = FrameHeader::parse(&bytes, &limits).unwrap_err();
            assert_eq!(err.kind(), kind, "offset {offset}");
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }

    #[test]
    fn hello_and_close_are_accepted_up_to_2048_bytes_whatever_the_limit() {
        let limits = Limits::new().with_max_frame_len(16);
        for kind in [FrameKind::Hello, FrameKind::Close] {
            let bytes = FrameHeader::new(kind, 0, HANDSHAKE_FRAME_LEN).to_bytes();
            assert_eq!(FrameHeader::parse(&bytes, &limits).unwrap().len(), 2048);
            let bytes = FrameHeader::new(kind, 0, HANDSHAKE_FRAME_LEN + 1).to_bytes();
            let err = FrameHeader::parse(&bytes, &limits).unwrap_err();
            assert_eq!(err.to_string(), "frame of 2049 bytes exceeds limit of 16");
        }
        let bytes = FrameHeader::new(FrameKind::Data, 0, 17).to_bytes();
        let err = FrameHeader::parse(&bytes, &limits).unwrap_err();
        assert_eq!(err.to_string(), "frame of 17 bytes exceeds limit of 16");
    }

    #[test]
    fn length_over_limit_is_rejected_from_the_header_alone() {
        let limits = Limits::new().with_max_frame_len(1000);
        let bytes = FrameHeader::new(FrameKind::Data, 0, 1001).to_bytes();
        let err = Frame::parse(&bytes, &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(err.to_string(), "frame of 1001 bytes exceeds limit of 1000");
    }

    #[test]
    fn encode_frame_limits_the_payload_and_leaves_out_untouched_on_error() {
        let limits = Limits::new().with_max_frame_len(8);
        let mut out = vec![1, 2, 3];
        let err = encode_frame(&mut out, FrameKind::Data, 0, "123456789", &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(out, [1, 2, 3]);
        let n = encode_frame(&mut out, FrameKind::Data, 5, "1234567", &limits).unwrap();
        assert_eq!(n, HEADER_LEN + 8);
        let (frame, used) = Frame::parse(&out[3..], &limits).unwrap();
        assert_eq!(used, n);
        assert_eq!(frame.id(), 5);
        assert_eq!(frame.decode::<&str>().unwrap(), "1234567");
    }

    #[test]
    fn encode_frame_into_matches_encode_frame() {
        let limits = Limits::default();
        let mut vec = Vec::new();
        encode_frame(&mut vec, FrameKind::Data, 3, &(1u32, "x"), &limits).unwrap();
        let mut buf = [0u8; 64];
        let n = encode_frame_into(&mut buf, FrameKind::Data, 3, &(1u32, "x"), &limits).unwrap();
        assert_eq!(&buf[..n], &vec[..]);
        let err = encode_frame_into(&mut buf[..10], FrameKind::Data, 3, &1u8, &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
    }

    #[test]
    fn short_input_is_truncated_unless_its_prefix_is_already_wrong() {
        let limits = Limits::default();
        let err = Frame::parse(&[0xA7, 0x1C, 1], &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Truncated);
        let err = Frame::parse(&[0x47], &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadMagic);
        let mut buf = Vec::new();
        encode_raw_frame(&mut buf, FrameKind::Data, 0, &[1, 2, 3], &limits).unwrap();
        let err = Frame::parse(&buf[..buf.len() - 1], &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Truncated);
        assert_eq!(err.to_string(), "frame: input ended after 18 of 19 bytes");
    }
}
