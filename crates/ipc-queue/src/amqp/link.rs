//! One connection with one channel, deadlines on every await, reconnection with back-off.

use std::future::Future;
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::time::Instant;

use super::Shared;
use crate::address::redact;

/// A point in time after which a call gives up.
pub(crate) type Deadline = Instant;

pub(crate) fn deadline_after(timeout: Duration) -> Deadline {
    Instant::now() + timeout
}

/// Awaits `future` until `deadline`: [`Timeout`](ErrorKind::Timeout) naming `what` if it
/// has not finished by then; lapin's errors mapped to ours.
pub(crate) async fn with_deadline<T>(
    deadline: Deadline,
    what: &str,
    future: impl Future<Output = lapin::Result<T>>,
) -> Result<T> {
    let mut future = std::pin::pin!(future);
    // Many awaits finish at once (a buffered delivery, a queued frame): they need no timer.
    let ready = std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(value) => std::task::Poll::Ready(Some(value)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    if let Some(result) = ready {
        return result.map_err(|err| map_error(what, err));
    }
    match tokio::time::timeout_at(deadline, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(map_error(what, err)),
        Err(_) => Err(timeout_error(what)),
    }
}

pub(crate) fn timeout_error(what: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "amqp {what} did not finish before its deadline (broker down, unreachable or blocking publishers)"
        ),
    )
}

/// Maps a lapin error: a missing queue is `NotFound`, a refused login `PermissionDenied`,
/// a lost connection `PeerDied`, the broker closing on us `PeerClosed`.
pub(crate) fn map_error(what: &str, err: lapin::Error) -> Error {
    if let Some(reason) = tls_failure(&err) {
        return Error::new(
            ErrorKind::PermissionDenied,
            format!("amqp {what}: tls handshake with the broker failed: {reason}"),
        )
        .with_source(err);
    }
    let kind = match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ErrorKind::NotFound,
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => ErrorKind::PermissionDenied,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => ErrorKind::InvalidInput,
            _ => ErrorKind::PeerClosed,
        },
        lapin::ErrorKind::IOError(_) | lapin::ErrorKind::MissingHeartbeatError => {
            ErrorKind::PeerDied
        }
        lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::InvalidChannel(_) => ErrorKind::PeerClosed,
        lapin::ErrorKind::AuthProviderError(_) => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("amqp {what}: {err}")).with_source(err)
}

pub(crate) fn is_not_found(err: &Error) -> bool {
    err.kind() == ErrorKind::NotFound
}

/// Whether a failed call may succeed on a new connection.
pub(crate) fn is_connection_trouble(err: &Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::PeerDied | ErrorKind::PeerClosed | ErrorKind::Io | ErrorKind::Other
    )
}

/// Whether `url` asks for TLS.
fn is_amqps(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"))
}

#[cfg(feature = "tls")]
async fn connect(shared: &Shared, properties: ConnectionProperties) -> lapin::Result<Connection> {
    let builder = lapin::DefaultConnectionBuilder::new()?
        .with_uri_str(shared.url.clone())
        .with_properties(properties);
    let builder = if is_amqps(&shared.url) {
        builder.with_tls_config(shared.options.tls.lapin_config())
    } else {
        builder
    };
    builder.connect().await
}

#[cfg(not(feature = "tls"))]
async fn connect(shared: &Shared, properties: ConnectionProperties) -> lapin::Result<Connection> {
    Connection::connect(&shared.url, properties).await
}

/// An `amqps://` URL without the `tls` feature fails at once, instead of lapin's less
/// clear error (or a plaintext attempt) on each reconnection.
pub(crate) fn check_scheme(url: &str) -> Result<()> {
    if is_amqps(url) && cfg!(not(feature = "tls")) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "amqps:// addresses need ipc-durable-queue's `tls` feature",
        ));
    }
    Ok(())
}

/// A TLS failure (a certificate one side refused, a bad record) under a lapin error: the
/// reason, and that retrying cannot help.
#[cfg(feature = "tls")]
fn tls_failure(err: &lapin::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        source = error.source();
    }
    None
}

#[cfg(not(feature = "tls"))]
fn tls_failure(_err: &lapin::Error) -> Option<String> {
    None
}

/// With TLS 1.3 a broker checks the client's certificate after the client's side of the
/// handshake is done: a broker that refuses it (or requires one) ends the connection, and
/// the client often sees only a reset, its alert lost. On an `amqps://` connect that is a
/// refusal, not a broker to wait for.
fn tls_refusal(url: &str, err: Error) -> Error {
    let reset = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<lapin::Error>())
        .is_some_and(|lapin| {
            matches!(lapin.kind(), lapin::ErrorKind::IOError(io) if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ))
        });
    if !(reset && is_amqps(url)) {
        return err;
    }
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "{err} (the broker ended the tls connection at once: it refuses this client's certificate, or requires one)"
        ),
    )
}

/// A connection and its one channel.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
}

impl Link {
    /// One attempt to connect and open a channel, bounded by `deadline`.
    pub(crate) async fn connect_once(
        shared: &Shared,
        deadline: Deadline,
        role: &str,
    ) -> Result<Link> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!(
                "ipc-queue {role} {} pid {}",
                shared.name,
                std::process::id()
            )
            .into(),
        );
        let connection = with_deadline(deadline, "connect", connect(shared, properties))
            .await
            .map_err(|err| tls_refusal(&shared.url, err))?;
        let channel = with_deadline(deadline, "open channel", connection.create_channel()).await?;
        Ok(Link {
            connection,
            channel,
        })
    }

    /// Connects, retrying with doubling pauses (50 ms up to the configured maximum, with
    /// jitter) until `deadline`. Errors that a retry cannot fix (a refused login, a missing
    /// queue) end it at once.
    pub(crate) async fn connect(shared: &Shared, deadline: Deadline, role: &str) -> Result<Link> {
        let mut pause = Duration::from_millis(50);
        loop {
            let err = match Link::connect_once(shared, deadline, role).await {
                Ok(link) => return Ok(link),
                Err(err) => err,
            };
            if err.kind() == ErrorKind::PermissionDenied || err.kind() == ErrorKind::Timeout {
                return Err(err);
            }
            let jittered = pause.mul_f64(0.5 + fastrand::f64());
            if Instant::now() + jittered >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "amqp broker at {} unreachable until the deadline: {err}",
                        redact(&shared.url)
                    ),
                )
                .with_source(err));
            }
            tokio::time::sleep(jittered).await;
            pause = (pause * 2).min(shared.options.max_backoff);
        }
    }

    pub(crate) async fn declare_passive(
        &mut self,
        name: &str,
        deadline: Deadline,
    ) -> Result<lapin::Queue> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        with_deadline(
            deadline,
            "declare queue (passive)",
            self.channel
                .queue_declare(name.into(), options, FieldTable::default()),
        )
        .await
        .map_err(|err| {
            if is_not_found(&err) {
                Error::new(ErrorKind::NotFound, format!("no amqp queue named {name}"))
            } else {
                err
            }
        })
    }

    pub(crate) async fn declare(
        &mut self,
        name: &str,
        arguments: FieldTable,
        deadline: Deadline,
    ) -> Result<lapin::Queue> {
        with_deadline(
            deadline,
            "declare queue",
            self.channel
                .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments),
        )
        .await
    }

    /// Closes the channel, then the connection, politely, waiting at most ten seconds in
    /// all for the broker's close-oks. The channel's close handshake is what guarantees that
    /// the acknowledgements sent before it were processed: a busy broker can take more than
    /// a second to answer, and giving up earlier (or closing only the connection, whose
    /// close can overtake frames still queued on the channel) lost the last acks of a
    /// consumer: their messages came again.
    pub(crate) async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            // The channel first: its close goes out after the acknowledgements queued on it,
            // and its close-ok says the broker has taken them. A connection close alone can
            // overtake them, and the broker then delivers those messages again.
            let _ = self.channel.close(200, "bye".into()).await;
            let _ = self.connection.close(200, "bye".into()).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqps_needs_the_tls_feature() {
        assert!(check_scheme("amqp://h/%2f").is_ok());
        let checked = check_scheme("AMQPS://h/%2f");
        if cfg!(feature = "tls") {
            assert!(checked.is_ok());
        } else {
            let err = checked.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert_eq!(
                err.to_string(),
                "amqps:// addresses need ipc-durable-queue's `tls` feature"
            );
        }
    }
}
