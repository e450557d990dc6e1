//! Cross-process benchmarks, shared with `cargo xtask bench`: each mechanism's module measures
//! its figures and the raw baselines they are compared with, in the same run.

use serde::{Deserialize, Serialize};

pub mod amqp;
pub mod core;
pub mod queue;
pub mod shm;
pub mod socket;
pub mod tls;
pub mod ws;

/// One measured figure beside the raw baseline it is compared with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// `ipc-core`, `ipc-shm`, `ipc-socket`, `ipc-queue`.
    pub mechanism: String,
    /// What was measured, for example `round trip (polling)` or `stream`.
    pub case: String,
    /// The payload size of one message, in bytes.
    pub payload_bytes: u64,
    /// `latency` (lower is better) or `throughput` (higher is better).
    pub metric: String,
    /// The measured value.
    pub value: f64,
    /// `ns`, `msg/s`, `MB/s`.
    pub unit: String,
    /// The raw baseline this figure is compared with, measured in the same run.
    pub baseline_name: String,
    /// The baseline's value, in the same unit.
    pub baseline_value: f64,
}

impl Figure {
    /// The figure relative to its baseline: value / baseline.
    pub fn ratio(&self) -> f64 {
        if self.baseline_value == 0.0 {
            return f64::NAN;
        }
        self.value / self.baseline_value
    }
}

/// How long a bench may run: `quick` for CI smoke runs, `full` for the numbers in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    /// Small counts: checks that every bench runs, numbers are rough.
    Quick,
    /// Counts large enough for stable numbers.
    Full,
}

/// The names of the bench groups, in the order [`run_all`] runs them.
pub const GROUPS: [&str; 5] = ["ipc-core", "ipc-shm", "ipc-socket", "ipc-queue", "amqp"];

/// Runs every mechanism's benches (or only the group named by `only`, one of [`GROUPS`]),
/// calling `report` with each figure as soon as it is measured.
/// Must run in an optimised build: `cargo xtask bench` runs it inside a release `ipc-peer`.
pub fn run_all(
    effort: Effort,
    only: Option<&str>,
    mut report: impl FnMut(&Figure),
) -> anyhow::Result<()> {
    type Bench = fn(Effort) -> anyhow::Result<Vec<Figure>>;
    let benches: [(&str, Bench); 5] = [
        ("ipc-core", core::run),
        ("ipc-shm", shm::run),
        ("ipc-socket", socket::run),
        ("ipc-queue", queue::run),
        ("amqp", amqp::run),
    ];
    if let Some(only) = only
        && !GROUPS.contains(&only)
    {
        anyhow::bail!(
            "no bench group `{only}`; expected one of {}",
            GROUPS.join(", ")
        );
    }
    for (name, bench) in benches {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let figures = bench(effort).map_err(|err| err.context(format!("{name} bench")))?;
        for figure in &figures {
            report(figure);
        }
    }
    Ok(())
}
