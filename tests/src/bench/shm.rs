//! Cross-process benchmarks of ipc-shm, with their raw baselines.

use anyhow::Result;

use super::{Effort, Figure};

/// Measures ipc-shm's figures and their baselines. Empty until the ipc-shm issue fills it.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let _ = effort;
    Ok(Vec::new())
}
