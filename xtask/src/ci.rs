//! `cargo xtask ci`: the steps of `.ci/run`, in order, stopping at the first failure.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::peers::{cargo, workspace_root};

/// The packages published to crates.io, each checked on its own below.
const PUBLISHED: [&str; 4] = ["ipc-core", "ipc-shm", "ipc-socket", "ipc-durable-queue"];

/// Their directories, each of which must carry both licence files.
const PUBLISHED_DIRS: [&str; 4] = [
    "crates/ipc-core",
    "crates/ipc-shm",
    "crates/ipc-socket",
    "crates/ipc-queue",
];

/// The licence files at the root, copied into every published package.
const LICENCES: [&str; 2] = ["LICENSE-MIT", "LICENSE-APACHE"];

/// The toolchain of `rust-version` in the workspace manifest (the MSRV job).
const MSRV_TOOLCHAIN: &str = "1.89.0";

/// The targets the README's platform table says build, and the crates it says build there
/// (ipc-shm is Linux only; ipc-durable-queue needs Unix).
const CROSS_TARGETS: [(&str, &[&str]); 2] = [
    (
        "x86_64-apple-darwin",
        &["ipc-core", "ipc-socket", "ipc-durable-queue"],
    ),
    ("x86_64-pc-windows-gnu", &["ipc-core", "ipc-socket"]),
];

/// The cargo-hack release installed when it is missing.
const CARGO_HACK_VERSION: &str = "0.6.46";

/// One CI step: a title and the command it runs.
struct Step {
    title: &'static str,
    run: Run,
}

enum Run {
    /// `cargo ARGS` with extra environment variables.
    Cargo(Vec<&'static str>, Vec<(&'static str, &'static str)>),
    /// A check done in this process.
    Here(fn() -> Result<()>),
}

fn cargo_step(title: &'static str, args: &[&'static str]) -> Step {
    Step {
        title,
        run: Run::Cargo(args.to_vec(), Vec::new()),
    }
}

/// `-p NAME` for every published package, after `args`.
fn each_published(args: &[&'static str]) -> Vec<&'static str> {
    let mut all = args.to_vec();
    for name in PUBLISHED {
        all.extend(["-p", name]);
    }
    all
}

fn steps() -> Vec<Step> {
    vec![
        cargo_step("format", &["fmt", "--all", "--check"]),
        Step {
            title: "licence files in every published package",
            run: Run::Here(check_licences),
        },
        cargo_step(
            "lint",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        cargo_step("test (the README's command)", &["test", "--workspace"]),
        Step {
            title: "docs",
            run: Run::Cargo(
                vec!["doc", "--workspace", "--no-deps"],
                vec![("RUSTDOCFLAGS", "-D warnings")],
            ),
        },
        Step {
            title: "each crate alone, each feature alone",
            run: Run::Here(check_each_feature),
        },
        Step {
            title: "ipc-socket's blocking API without tokio",
            run: Run::Here(check_blocking_socket),
        },
        Step {
            title: "MSRV (rust-version) of the libraries",
            run: Run::Here(check_msrv),
        },
        Step {
            title: "cross targets of the platform table",
            run: Run::Here(check_cross_targets),
        },
        cargo_step(
            "publish --dry-run of the four crates together",
            &[
                "publish",
                "--workspace",
                "--exclude",
                "ipc-tests",
                "--exclude",
                "xtask",
                "--dry-run",
                "--allow-dirty",
            ],
        ),
        cargo_step("scenarios (quick)", &["xtask", "scenarios", "--quick"]),
    ]
}

/// Runs every step (or those whose title contains `only`); fails on the first that fails.
pub(crate) fn run(only: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let mut timings = Vec::new();
    let steps: Vec<Step> = steps()
        .into_iter()
        .filter(|step| only.is_none_or(|text| step.title.contains(text)))
        .collect();
    if steps.is_empty() {
        bail!("no CI step's title contains {only:?}");
    }
    for step in steps {
        let step_started = Instant::now();
        let outcome = match &step.run {
            Run::Cargo(args, env) => {
                eprintln!("==> {}: cargo {}", step.title, args.join(" "));
                let mut command = cargo();
                command.args(args);
                for (key, value) in env {
                    command.env(key, value);
                }
                status_of(&mut command)
            }
            Run::Here(check) => {
                eprintln!("==> {}", step.title);
                check()
            }
        };
        let elapsed = step_started.elapsed();
        timings.push((step.title, elapsed));
        if let Err(error) = outcome {
            bail!(
                "step `{}` failed after {elapsed:.1?}: {error:#}",
                step.title
            );
        }
    }
    eprintln!("==> all CI steps passed in {:.1?}", started.elapsed());
    for (title, elapsed) in timings {
        eprintln!("    {title:<48} {elapsed:>8.1?}");
    }
    Ok(())
}

/// Runs `command`; an error unless it exits with success.
fn status_of(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(())
}

/// The licence files of every published package are the root's, byte for byte.
fn check_licences() -> Result<()> {
    let root = workspace_root();
    for licence in LICENCES {
        let expected =
            std::fs::read(root.join(licence)).with_context(|| format!("read {licence}"))?;
        for dir in PUBLISHED_DIRS {
            let path = root.join(dir).join(licence);
            let found = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            if found != expected {
                bail!(
                    "{} differs from the root's {licence}: copy it again",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Every published crate builds, and documents without warnings, on its own with no
/// default features, with each feature alone and with all of them (cargo-hack), so a
/// lean build cannot rot.
fn check_each_feature() -> Result<()> {
    let installed = cargo()
        .args(["hack", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        eprintln!("cargo-hack not found: installing {CARGO_HACK_VERSION}");
        status_of(cargo().args([
            "install",
            "cargo-hack",
            "--version",
            CARGO_HACK_VERSION,
            "--locked",
        ]))?;
    }
    let started = Instant::now();
    status_of(cargo().args(each_published(&[
        "hack",
        "--each-feature",
        "--no-dev-deps",
        "check",
    ])))?;
    let checked = started.elapsed();
    status_of(
        cargo()
            .args(each_published(&[
                "hack",
                "--each-feature",
                "--no-dev-deps",
                "doc",
                "--no-deps",
            ]))
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!(
        "    feature sets: check {}, docs {}",
        seconds(checked),
        seconds(started.elapsed() - checked)
    );
    Ok(())
}

/// The feature sets of ipc-socket without `tokio` (the blocking API alone, with and without
/// `tls`): no tokio crate in their normal dependency tree (ARCHITECTURE.md's invariant), and
/// the crate's own tests pass. The builds and docs of these sets are cargo-hack's above.
fn check_blocking_socket() -> Result<()> {
    for features in [
        &["--no-default-features"][..],
        &["--no-default-features", "--features", "tls"],
    ] {
        let output = cargo()
            .args([
                "tree",
                "-p",
                "ipc-socket",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(features)
            .output()
            .context("run cargo tree")?;
        if !output.status.success() {
            bail!(
                "cargo tree {} failed: {}",
                features.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&output.stdout);
        let tokio: Vec<&str> = tree
            .lines()
            .filter(|line| line.to_ascii_lowercase().contains("tokio"))
            .collect();
        if !tokio.is_empty() {
            bail!(
                "ipc-socket {} depends on {} tokio crate(s): {}",
                features.join(" "),
                tokio.len(),
                tokio.join(", ")
            );
        }
        status_of(cargo().args(["test", "-p", "ipc-socket"]).args(features))?;
    }
    Ok(())
}

/// The four libraries build, with every feature, with the toolchain of the `rust-version`
/// they claim (the tests and xtask may use newer features: they are not checked here).
fn check_msrv() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["run", MSRV_TOOLCHAIN, "rustc", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        status_of(Command::new("rustup").args([
            "toolchain",
            "install",
            MSRV_TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root())
        .args(["run", MSRV_TOOLCHAIN, "cargo"])
        .args(each_published(&["check", "--all-features"]))
        // The pinned toolchain's cargo that runs xtask must not leak into the MSRV build.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    status_of(&mut command)
}

/// `cargo check --target` of each crate the platform table says builds there, with its
/// default features and without (the standard library of each target is added to the pinned
/// toolchain when missing; nothing is linked, so no cross linker is needed).
fn check_cross_targets() -> Result<()> {
    for (target, crates) in CROSS_TARGETS {
        status_of(Command::new("rustup").args(["target", "add", target]))?;
        for features in [None, Some("--no-default-features")] {
            let mut command = cargo();
            command.args(["check", "--target", target]);
            for name in crates {
                command.args(["-p", name]);
            }
            command.args(features);
            status_of(&mut command)?;
        }
    }
    Ok(())
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}
