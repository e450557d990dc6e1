//! Peer roles for ipc-queue. Each role is named `queue-...`.

use anyhow::Result;

use super::Args;

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    // No roles yet: the ipc-queue issue adds them here, as `"queue-name" => Some(name(args)),`.
    let _ = (role, args);
    None
}
