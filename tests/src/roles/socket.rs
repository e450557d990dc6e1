//! Peer roles for ipc-socket. Each role is named `socket-...`.

use anyhow::Result;

use super::Args;

/// Runs `role` if it is one of this module's; `None` if the name is not ours.
pub(super) fn run(role: &str, args: &Args) -> Option<Result<()>> {
    // No roles yet: the ipc-socket issue adds them here, as `"socket-name" => Some(name(args)),`.
    let _ = (role, args);
    None
}
