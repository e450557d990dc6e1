//! Waiting: deadlines, the spin-then-sleep strategy, and how often a waiter looks at its
//! peer's liveness.

use std::time::{Duration, Instant};

/// How a blocked end waits for its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitMode {
    /// Spin briefly, then sleep on a futex in the segment until woken (or until a short
    /// slice passes, to look at the peer's liveness). An idle end burns no CPU.
    #[default]
    Blocking,
    /// Spin without sleeping: the lowest latency, at the price of a busy core while waiting.
    Polling,
}

/// How long a sleeping waiter sleeps at most before it checks whether its peer still lives:
/// the bound on how late a peer's death is noticed.
pub(crate) const LIVENESS_INTERVAL: Duration = Duration::from_millis(20);

/// When a wait ends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Do not wait at all.
    Now,
    /// Wait until this instant.
    At(Instant),
    /// Wait as long as the peer lives.
    Never,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        match Instant::now().checked_add(timeout) {
            Some(at) => Deadline::At(at),
            None => Deadline::Never,
        }
    }

    /// The time left, `None` for no limit.
    pub(crate) fn remaining(self) -> Option<Duration> {
        match self {
            Deadline::Now => Some(Duration::ZERO),
            Deadline::At(at) => Some(at.saturating_duration_since(Instant::now())),
            Deadline::Never => None,
        }
    }

    /// The next sleep: at most the liveness interval and at most the time left.
    pub(crate) fn slice(self) -> Duration {
        self.remaining()
            .map_or(LIVENESS_INTERVAL, |left| left.min(LIVENESS_INTERVAL))
    }

    pub(crate) fn passed(self) -> bool {
        self.remaining().is_some_and(|left| left.is_zero())
    }
}
