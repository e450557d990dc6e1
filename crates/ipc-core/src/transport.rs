//! The traits every mechanism implements, so that code can be generic over the mechanism.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;

/// The sending end of a typed channel, blocking.
///
/// Messages are taken by reference: a failed or refused send leaves the value with the
/// caller, so there is nothing to hand back.
///
/// What `Ok` promises depends on the mechanism and is documented on each implementation:
/// in shared memory the message is in the ring; on a socket it is queued for writing (call
/// [`flush`](Sender::flush) to push coalesced writes out); in a durable queue it is on disk.
///
/// ```
/// use ipc_core::{Result, Sender};
///
/// /// Works over shared memory, a socket or a queue alike.
/// fn send_all<S: Sender<Message = u64>>(sender: &mut S, values: &[u64]) -> Result<()> {
///     for value in values {
///         sender.send(value)?;
///     }
///     sender.flush()
/// }
/// ```
pub trait Sender {
    /// The type of the messages.
    type Message: Serialize + ?Sized;

    /// Sends `message`, waiting while the channel is full.
    ///
    /// Errors: [`PeerClosed`](crate::ErrorKind::PeerClosed) /
    /// [`PeerDied`](crate::ErrorKind::PeerDied) when nobody will ever receive it,
    /// [`TooLarge`](crate::ErrorKind::TooLarge) when it exceeds the limit, or the
    /// mechanism's own failure.
    fn send(&mut self, message: &Self::Message) -> Result<()>;

    /// Sends `message` without waiting: [`Full`](crate::ErrorKind::Full) if it would wait.
    fn try_send(&mut self, message: &Self::Message) -> Result<()>;

    /// Sends `message`, waiting at most `timeout` while the channel is full:
    /// [`Timeout`](crate::ErrorKind::Timeout) if the time ran out.
    fn send_timeout(&mut self, message: &Self::Message, timeout: Duration) -> Result<()>;

    /// Pushes out anything the sender buffered. Mechanisms that never buffer return `Ok`.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The receiving end of a typed channel, blocking.
///
/// ```
/// use ipc_core::{ErrorKind, Receiver, Result};
///
/// /// Drains a channel until its sender goes away.
/// fn sum<R: Receiver<Message = u64>>(receiver: &mut R) -> Result<u64> {
///     let mut total = 0;
///     loop {
///         match receiver.recv() {
///             Ok(value) => total += value,
///             Err(err) if err.is_peer_gone() => return Ok(total),
///             Err(err) => return Err(err),
///         }
///     }
/// }
/// ```
pub trait Receiver {
    /// The type of the messages.
    type Message: DeserializeOwned;

    /// Receives the next message, waiting for one.
    ///
    /// Errors: [`PeerClosed`](crate::ErrorKind::PeerClosed) /
    /// [`PeerDied`](crate::ErrorKind::PeerDied) once no message can ever come,
    /// [`Decode`](crate::ErrorKind::Decode) for a message that is not a valid `Message`
    /// (the channel stays usable where the mechanism can skip it), or the mechanism's own
    /// failure.
    fn recv(&mut self) -> Result<Self::Message>;

    /// Receives a message if one is ready, without waiting.
    fn try_recv(&mut self) -> Result<Option<Self::Message>>;

    /// Receives the next message, waiting at most `timeout`:
    /// [`Timeout`](crate::ErrorKind::Timeout) if none came.
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Self::Message>;
}

/// The sending end of a typed channel, for async code (any runtime the mechanism supports;
/// the futures are `Send` so that they can be spawned on tokio).
///
/// Dropping a `send` future before it completes may or may not have sent the message; the
/// mechanism documents which. Bound waits with the runtime's timeout (`tokio::time::timeout`).
pub trait AsyncSender: Send {
    /// The type of the messages.
    type Message: Serialize + Sync + ?Sized;

    /// Sends `message`, waiting while the channel is full; the same promises as
    /// [`Sender::send`].
    fn send(&mut self, message: &Self::Message) -> impl Future<Output = Result<()>> + Send;

    /// Pushes out anything the sender buffered.
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// The receiving end of a typed channel, for async code.
///
/// A `recv` future dropped before it completes loses no message: the next `recv` returns it.
pub trait AsyncReceiver: Send {
    /// The type of the messages.
    type Message: DeserializeOwned + Send;

    /// Receives the next message; the same promises as [`Receiver::recv`].
    fn recv(&mut self) -> impl Future<Output = Result<Self::Message>> + Send;
}
