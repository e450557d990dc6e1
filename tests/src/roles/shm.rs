//! Peer roles for ipc-shm. Each role is named `shm-...`.

use anyhow::Result;

use super::Args;

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    // No roles yet: the ipc-shm issue adds them here, as `"shm-name" => Some(name(args)),`.
    let _ = (role, args);
    None
}
