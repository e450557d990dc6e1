//! Building the `ipc-peer` binary that scenarios and benches spawn.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// The cargo that runs us, so that the pinned toolchain builds the peers too.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    command
}

/// Which cargo profile to build the peer binary with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// The test profile's build, shared with `cargo test` (fast to build, slow to run).
    Debug,
    /// Optimised, for benchmarks and full-size scenarios.
    Release,
}

/// Builds `ipc-peer` in `profile` and makes `ipc_tests::peer_exe()` return it.
pub(crate) fn build_peer(profile: Profile) -> Result<PathBuf> {
    build_peer_with_features(profile, &[])
}

/// [`build_peer`] with cargo features of `ipc-tests` turned on (the bench's
/// `iceoryx2-anchor`).
pub(crate) fn build_peer_with_features(profile: Profile, features: &[&str]) -> Result<PathBuf> {
    let mut command = cargo();
    command.args([
        "build",
        "--quiet",
        "--package",
        "ipc-tests",
        "--bin",
        "ipc-peer",
    ]);
    if profile == Profile::Release {
        command.arg("--release");
    }
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command.status().context("run cargo build for ipc-peer")?;
    if !status.success() {
        bail!("building ipc-peer failed: {status}");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => "release",
    };
    let exe = target_dir
        .join(dir)
        .join(format!("ipc-peer{}", std::env::consts::EXE_SUFFIX));
    if !exe.is_file() {
        bail!("ipc-peer was built but is not at {}", exe.display());
    }
    ipc_tests::set_peer_exe(exe.clone());
    Ok(exe)
}
