//! Async (tokio) wrappers of the AMQP handles: their blocking calls run on tokio's blocking
//! pool, where blocking on the handles' own runtime is allowed.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::consumer::{AmqpConsumer, AmqpDelivery, Settle};
use super::producer::{AmqpProducer, AmqpReceipt};

/// How long one blocking receive waits before the async side looks again.
const POLL: Duration = Duration::from_millis(200);

fn locked<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| Error::new(ErrorKind::Poisoned, "a blocking amqp call panicked"))
}

fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R> + Send + 'static,
) -> impl Future<Output = Result<R>> + Send + 'static {
    let task = tokio::task::spawn_blocking(work);
    async move {
        task.await.map_err(|err| {
            Error::new(
                ErrorKind::Other,
                format!("blocking amqp task failed: {err}"),
            )
        })?
    }
}

/// An [`AmqpProducer`] for async code (needs a tokio runtime).
///
/// The message is encoded on the calling task, then published and confirmed on tokio's
/// blocking pool. A `send` future dropped before it completes may or may not have sent the
/// message (the publish goes on in the background); the handle stays usable.
pub struct AsyncAmqpProducer<T: ?Sized> {
    inner: Arc<Mutex<AmqpProducer<T>>>,
    max_len: usize,
}

impl<T: Serialize + ?Sized + 'static> AsyncAmqpProducer<T> {
    /// Wraps a producer.
    pub fn new(producer: AmqpProducer<T>) -> AsyncAmqpProducer<T> {
        let max_len = producer.max_message_len();
        AsyncAmqpProducer {
            inner: Arc::new(Mutex::new(producer)),
            max_len,
        }
    }

    /// Sends `message`; the receipt means what [`AmqpProducer::send`]'s does.
    pub async fn send(&mut self, message: &T) -> Result<AmqpReceipt> {
        let mut body = Vec::new();
        ipc_core::encode_to_vec(message, &mut body, self.max_len)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || locked(&inner)?.send_encoded(body)).await
    }
}

impl<T: Serialize + Sync + ?Sized + 'static> ipc_core::AsyncSender for AsyncAmqpProducer<T> {
    type Message = T;

    async fn send(&mut self, message: &T) -> Result<()> {
        AsyncAmqpProducer::send(self, message).await.map(drop)
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

struct ConsumerState<T> {
    consumer: AmqpConsumer<T>,
    /// A delivery received by a blocking call whose future was dropped: the next `recv`
    /// returns it, so cancelling a `recv` loses nothing.
    pending: Option<AmqpDelivery<T>>,
}

/// An [`AmqpConsumer`] for async code (needs a tokio runtime).
///
/// `recv` waits in short blocking receives on tokio's blocking pool. A `recv` future
/// dropped before it completes loses no message: the next `recv` returns it.
pub struct AsyncAmqpConsumer<T> {
    inner: Arc<Mutex<ConsumerState<T>>>,
}

impl<T: DeserializeOwned + Send + 'static> AsyncAmqpConsumer<T> {
    /// Wraps a consumer.
    pub fn new(consumer: AmqpConsumer<T>) -> AsyncAmqpConsumer<T> {
        AsyncAmqpConsumer {
            inner: Arc::new(Mutex::new(ConsumerState {
                consumer,
                pending: None,
            })),
        }
    }

    /// Receives the next message, waiting for one; settle it with
    /// [`ack`](AsyncAmqpConsumer::ack), [`nack`](AsyncAmqpConsumer::nack) or
    /// [`reject`](AsyncAmqpConsumer::reject).
    pub async fn recv(&mut self) -> Result<AmqpDelivery<T>> {
        loop {
            let inner = Arc::clone(&self.inner);
            let got = blocking(move || {
                let mut state = locked(&inner)?;
                if state.pending.is_none() {
                    match state.consumer.recv_timeout(POLL) {
                        Ok(delivery) => state.pending = Some(delivery),
                        Err(err) if err.kind() == ErrorKind::Timeout => {}
                        Err(err) => return Err(err),
                    }
                }
                Ok(state.pending.is_some())
            })
            .await?;
            if got && let Some(delivery) = locked(&self.inner)?.pending.take() {
                return Ok(delivery);
            }
        }
    }

    /// Acknowledges a delivery, like [`AmqpConsumer::ack`].
    pub fn ack(
        &mut self,
        delivery: &AmqpDelivery<T>,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        self.settle(delivery, Settle::Ack)
    }

    /// Gives a delivery back to the queue, like [`AmqpConsumer::nack`] without a delay.
    pub fn nack(
        &mut self,
        delivery: &AmqpDelivery<T>,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        self.settle(delivery, Settle::Requeue)
    }

    /// Dead-letters a delivery, like [`AmqpConsumer::reject`].
    pub fn reject(
        &mut self,
        delivery: &AmqpDelivery<T>,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        self.settle(delivery, Settle::Reject)
    }

    fn settle(
        &mut self,
        delivery: &AmqpDelivery<T>,
        how: Settle,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        let (inner, token) = (Arc::clone(&self.inner), delivery.token());
        blocking(move || locked(&inner)?.consumer.settle_token(token, how))
    }
}

impl<T: DeserializeOwned + Send + 'static> ipc_core::AsyncReceiver for AsyncAmqpConsumer<T> {
    type Message = T;

    /// Receives and acknowledges one message (at-most-once processing, as the trait's
    /// blocking sibling does).
    async fn recv(&mut self) -> Result<T> {
        let delivery = AsyncAmqpConsumer::recv(self).await?;
        self.ack(&delivery).await?;
        Ok(delivery.into_message())
    }
}
