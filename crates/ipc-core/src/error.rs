//! The one error type of the ipc crates.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely: match on this, print the [`Error`] itself.
///
/// New kinds may be added in minor releases, so a `match` needs a wildcard arm.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A frame or message is larger than the limit in force.
    TooLarge,
    /// The bytes do not start with the frame magic: not an ipc peer, or a stream out of sync.
    BadMagic,
    /// The peer speaks a protocol or layout version this build does not understand.
    UnsupportedVersion,
    /// The peer exchanges a different message type (its fingerprint differs).
    TypeMismatch,
    /// The input ended in the middle of a frame or message.
    Truncated,
    /// A well-framed payload did not decode as the expected type.
    Decode,
    /// A value could not be encoded (for example a `serde` impl that fails).
    Encode,
    /// A frame or record breaks the protocol: unknown kind, reserved bits set, bad field.
    Protocol,
    /// Data read back failed its checksum or is otherwise inconsistent.
    Corrupted,
    /// The peer closed the connection or channel in an orderly way.
    PeerClosed,
    /// The peer process died (or vanished) without closing.
    PeerDied,
    /// The operation did not finish within its deadline.
    Timeout,
    /// A bounded buffer, ring or queue is full and the call would have to wait.
    Full,
    /// The local end was closed; no more operations are possible on it.
    Closed,
    /// A named resource (segment, socket, queue) does not exist.
    NotFound,
    /// A named resource already exists and is in use.
    AlreadyExists,
    /// The operating system refused access.
    PermissionDenied,
    /// An earlier failure (such as a failed `fsync`) made the resource unusable.
    Poisoned,
    /// A caller passed an argument that can never work (a zero capacity, an empty name).
    InvalidInput,
    /// An operating-system I/O error that none of the other kinds describes.
    Io,
    /// Something else; the message says what.
    Other,
}

impl ErrorKind {
    /// A short lowercase description of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TooLarge => "too large",
            ErrorKind::BadMagic => "bad magic",
            ErrorKind::UnsupportedVersion => "unsupported version",
            ErrorKind::TypeMismatch => "message type mismatch",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Decode => "decode error",
            ErrorKind::Encode => "encode error",
            ErrorKind::Protocol => "protocol violation",
            ErrorKind::Corrupted => "corrupted data",
            ErrorKind::PeerClosed => "peer closed",
            ErrorKind::PeerDied => "peer died",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Full => "full",
            ErrorKind::Closed => "closed",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Poisoned => "poisoned",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Io => "i/o error",
            ErrorKind::Other => "other error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every ipc crate: a [`kind`](Error::kind), a lowercase message that carries the
/// numbers, and optionally the underlying [`source`](std::error::Error::source).
///
/// ```
/// use ipc_core::{Error, ErrorKind};
///
/// let err = Error::too_large(9_000_000, 8_388_608);
/// assert_eq!(err.kind(), ErrorKind::TooLarge);
/// assert_eq!(err.to_string(), "frame of 9000000 bytes exceeds limit of 8388608");
/// ```
///
/// It is one pointer wide (the parts live in one allocation, made only when an error
/// happens), so that `Result<(), Error>` and `Result<usize, Error>` come back in registers
/// from every hot call.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with `message` (lowercase, no trailing period, with the numbers in it).
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    /// The same error with `source` as its underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Error {
        self.0.source = Some(source.into());
        self
    }

    /// An I/O error, with `context` saying what was being done (`"open queue segment 7"`).
    ///
    /// The kind is derived from the I/O error: `NotFound`, `PermissionDenied`,
    /// `AlreadyExists`, `TimedOut`/`WouldBlock` and the closed-connection errors map to
    /// their ipc counterparts, anything else to [`ErrorKind::Io`].
    pub fn io(context: impl Into<Cow<'static, str>>, source: io::Error) -> Error {
        let kind = kind_of_io(&source);
        let context = context.into();
        Error(Box::new(Inner {
            kind,
            message: Cow::Owned(format!("{context}: {source}")),
            source: Some(Box::new(source)),
        }))
    }

    /// `frame of {len} bytes exceeds limit of {limit}`.
    pub fn too_large(len: u64, limit: u64) -> Error {
        Error::new(
            ErrorKind::TooLarge,
            format!("frame of {len} bytes exceeds limit of {limit}"),
        )
    }

    /// `input ended after {have} of {need} bytes ({what})`.
    pub fn truncated(what: &str, have: usize, need: usize) -> Error {
        Error::new(
            ErrorKind::Truncated,
            format!("{what}: input ended after {have} of {need} bytes"),
        )
    }

    /// The coarse kind, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without the source chain.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// True for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
    }

    /// True for [`ErrorKind::Full`].
    pub fn is_full(&self) -> bool {
        self.0.kind == ErrorKind::Full
    }

    /// True when the other side is gone: [`ErrorKind::PeerClosed`] or [`ErrorKind::PeerDied`].
    pub fn is_peer_gone(&self) -> bool {
        matches!(self.0.kind, ErrorKind::PeerClosed | ErrorKind::PeerDied)
    }

    /// Prefixes the message with what was being done: `"{context}: {message}"`.
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.0.message = Cow::Owned(format!("{context}: {}", self.0.message));
        self
    }
}

fn kind_of_io(err: &io::Error) -> ErrorKind {
    match err.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => ErrorKind::PeerClosed,
        io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(source) = &self.0.source {
            s.field("source", source);
        }
        s.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::io("i/o error", err)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.0.kind {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::PeerClosed => io::ErrorKind::ConnectionReset,
            ErrorKind::Truncated => io::ErrorKind::UnexpectedEof,
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            ErrorKind::Io | ErrorKind::Other | ErrorKind::Poisoned => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_and_keep_their_source() {
        let err = Error::io(
            "open /tmp/q",
            io::Error::new(io::ErrorKind::NotFound, "no such file"),
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.to_string(), "open /tmp/q: no such file");
        assert!(err.source().is_some());

        let err: Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(err.is_peer_gone());
    }

    #[test]
    fn context_prefixes_the_message() {
        let err = Error::truncated("frame header", 3, 16).context("read from peer 42");
        assert_eq!(
            err.to_string(),
            "read from peer 42: frame header: input ended after 3 of 16 bytes"
        );
        assert_eq!(err.kind(), ErrorKind::Truncated);
    }

    #[test]
    fn converts_into_io_error_and_back() {
        let err = Error::new(ErrorKind::Timeout, "no reply within 250 ms");
        let io_err: io::Error = err.into();
        assert_eq!(io_err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io_err.to_string(), "no reply within 250 ms");
    }

    #[test]
    fn error_is_send_sync_and_small() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), 8);
        assert_eq!(std::mem::size_of::<Result<(), Error>>(), 8);
    }
}
