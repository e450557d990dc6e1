//! Cross-process benchmarks of ipc-queue, with their raw baselines.

use anyhow::Result;

use super::{Effort, Figure};

/// Measures ipc-queue's figures and their baselines. Empty until the ipc-queue issue fills it.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let _ = effort;
    Ok(Vec::new())
}
