//! Async (tokio) wrappers: the blocking producer and consumer run on tokio's blocking pool
//! (`spawn_blocking`). Waiting for messages is a tokio sleep between non-blocking polls
//! (embedded) or short blocking receives on the blocking pool (RabbitMQ).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipc_core::{Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{Consumer, Producer};
use crate::delivery::{Delivery, Receipt};

/// How long one blocking receive from a broker waits before the async side looks again.
const POLL: Duration = Duration::from_millis(200);

fn locked<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| Error::new(ErrorKind::Poisoned, "a blocking queue call panicked"))
}

fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R> + Send + 'static,
) -> impl Future<Output = Result<R>> + Send + 'static {
    let task = tokio::task::spawn_blocking(work);
    async move {
        task.await.map_err(|err| {
            Error::new(
                ErrorKind::Other,
                format!("blocking queue task failed: {err}"),
            )
        })?
    }
}

/// A [`Producer`] for async code (feature `tokio`; needs a tokio runtime).
///
/// The message is encoded on the calling task, then stored (appended and synced, or
/// published and confirmed) on tokio's blocking pool. A `send` future dropped before it completes may or may not have sent the
/// message (the append goes on in the background); the handle stays usable.
pub struct AsyncProducer<T: ?Sized> {
    inner: Arc<Mutex<Producer<T>>>,
    max_len: usize,
    buf: Vec<u8>,
}

impl<T: Serialize + ?Sized + 'static> AsyncProducer<T> {
    /// Wraps a producer.
    pub fn new(producer: Producer<T>) -> AsyncProducer<T> {
        let max_len = producer.max_message_len();
        AsyncProducer {
            inner: Arc::new(Mutex::new(producer)),
            max_len,
            buf: Vec::new(),
        }
    }

    /// Sends `message`; the receipt means what [`Producer::send`]'s does.
    pub async fn send(&mut self, message: &T) -> Result<Receipt> {
        self.buf.clear();
        ipc_core::encode_to_vec(message, &mut self.buf, self.max_len)?;
        let payload = std::mem::take(&mut self.buf);
        let inner = Arc::clone(&self.inner);
        let (payload, receipt) = blocking(move || {
            let receipt = locked(&inner)?.send_encoded(&payload);
            Ok((payload, receipt))
        })
        .await?;
        self.buf = payload;
        receipt
    }

    /// Syncs everything sent, like [`Producer::flush`].
    pub async fn flush(&mut self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        blocking(move || locked(&inner)?.flush()).await
    }
}

impl<T: Serialize + Sync + ?Sized + 'static> ipc_core::AsyncSender for AsyncProducer<T> {
    type Message = T;

    async fn send(&mut self, message: &T) -> Result<()> {
        AsyncProducer::send(self, message).await.map(drop)
    }

    async fn flush(&mut self) -> Result<()> {
        AsyncProducer::flush(self).await
    }
}

struct ConsumerState<T> {
    consumer: Consumer<T>,
    /// A delivery received by a blocking poll whose future was dropped: the next `recv`
    /// returns it, so cancelling a `recv` loses nothing.
    pending: Option<Delivery<T>>,
}

/// A [`Consumer`] for async code (feature `tokio`; needs a tokio runtime).
///
/// `recv` polls without blocking on tokio's blocking pool and sleeps on the runtime between
/// polls (embedded), or waits in short blocking receives there (RabbitMQ). A `recv` future
/// dropped before it completes loses no message: the next `recv` returns it.
pub struct AsyncConsumer<T> {
    inner: Arc<Mutex<ConsumerState<T>>>,
}

impl<T: DeserializeOwned + Send + 'static> AsyncConsumer<T> {
    /// Wraps a consumer.
    pub fn new(consumer: Consumer<T>) -> AsyncConsumer<T> {
        AsyncConsumer {
            inner: Arc::new(Mutex::new(ConsumerState {
                consumer,
                pending: None,
            })),
        }
    }

    /// Receives the next message, waiting for one; settle it with
    /// [`ack`](AsyncConsumer::ack), [`nack`](AsyncConsumer::nack) or
    /// [`reject`](AsyncConsumer::reject).
    pub async fn recv(&mut self) -> Result<Delivery<T>> {
        let mut backoff = Duration::from_micros(100);
        loop {
            let inner = Arc::clone(&self.inner);
            let got = blocking(move || {
                let mut state = locked(&inner)?;
                if state.pending.is_none() {
                    state.pending = if state.consumer.is_embedded() {
                        state.consumer.try_recv()?
                    } else {
                        match state.consumer.recv_timeout(POLL) {
                            Ok(delivery) => Some(delivery),
                            Err(err) if err.kind() == ErrorKind::Timeout => None,
                            Err(err) => return Err(err),
                        }
                    };
                }
                Ok(state.pending.is_some())
            })
            .await?;
            if got && let Some(delivery) = locked(&self.inner)?.pending.take() {
                return Ok(delivery);
            }
            if locked(&self.inner)?.consumer.is_embedded() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(5));
            }
        }
    }

    /// Acknowledges a delivery, like [`Consumer::ack`].
    pub fn ack(
        &mut self,
        delivery: &Delivery<T>,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        let (inner, ticket) = (Arc::clone(&self.inner), delivery.ticket.clone());
        blocking(move || locked(&inner)?.consumer.ack_ticket(&ticket))
    }

    /// Gives a delivery back, like [`Consumer::nack`].
    pub fn nack(
        &mut self,
        delivery: &Delivery<T>,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        let (inner, ticket) = (Arc::clone(&self.inner), delivery.ticket.clone());
        blocking(move || locked(&inner)?.consumer.nack_ticket(&ticket, delay))
    }

    /// Dead-letters a delivery, like [`Consumer::reject`].
    pub fn reject(
        &mut self,
        delivery: &Delivery<T>,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send + use<T> {
        let (inner, ticket) = (Arc::clone(&self.inner), delivery.ticket.clone());
        let reason = reason.to_owned();
        blocking(move || locked(&inner)?.consumer.reject_ticket(&ticket, &reason))
    }
}

impl<T: DeserializeOwned + Send + 'static> ipc_core::AsyncReceiver for AsyncConsumer<T> {
    type Message = T;

    /// Receives and acknowledges (at-most-once processing, like the blocking
    /// [`ipc_core::Receiver`] implementation).
    async fn recv(&mut self) -> Result<T> {
        let delivery = AsyncConsumer::recv(self).await?;
        let ack = self.ack(&delivery);
        ack.await?;
        Ok(delivery.into_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProducerOptions, Queue, QueueConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_producer_and_consumer_round_trip() -> Result<()> {
        let dir = std::env::temp_dir().join(format!(
            "ipcq-async-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let queue = Queue::create(&dir, &QueueConfig::new())?;
        let mut producer = AsyncProducer::new(queue.producer::<String>(ProducerOptions::new())?);
        let mut consumer = AsyncConsumer::new(queue.consumer::<String>()?);
        let receiving = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                let delivery = consumer.recv().await?;
                got.push(delivery.message().clone());
                consumer.ack(&delivery).await?;
            }
            Ok::<_, Error>(got)
        });
        for text in ["a", "b", "c"] {
            producer.send(&text.to_owned()).await?;
        }
        let got = receiving
            .await
            .map_err(|err| Error::new(ErrorKind::Other, err.to_string()))??;
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(queue.stats()?.depth, 0);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
