//! Cross-process benchmarks of ipc-socket, with their raw baselines.

use anyhow::Result;

use super::{Effort, Figure};

/// Measures ipc-socket's figures and their baselines. Empty until the ipc-socket issue fills it.
pub fn run(effort: Effort) -> Result<Vec<Figure>> {
    let _ = effort;
    Ok(Vec::new())
}
