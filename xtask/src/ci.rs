//! `cargo xtask ci`: the steps of `.ci/run`, in order, stopping at the first failure.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::peers::cargo;

/// One CI step: a title and a cargo command line.
struct Step {
    title: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const STEPS: &[Step] = &[
    Step {
        title: "format",
        args: &["fmt", "--all", "--check"],
        env: &[],
    },
    Step {
        title: "lint",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        env: &[],
    },
    Step {
        title: "test (the README's command)",
        args: &["test", "--workspace"],
        env: &[],
    },
    Step {
        title: "docs",
        args: &["doc", "--workspace", "--no-deps"],
        env: &[("RUSTDOCFLAGS", "-D warnings")],
    },
    Step {
        title: "package the publishable crates",
        args: &[
            "package",
            "--workspace",
            "--exclude",
            "ipc-tests",
            "--exclude",
            "xtask",
            "--allow-dirty",
        ],
        env: &[],
    },
    Step {
        title: "scenarios (quick)",
        args: &["xtask", "scenarios", "--quick"],
        env: &[],
    },
];

/// Runs every step; fails on the first that fails.
pub(crate) fn run() -> Result<()> {
    let started = Instant::now();
    let mut timings = Vec::new();
    for step in STEPS {
        eprintln!("==> {}: cargo {}", step.title, step.args.join(" "));
        let step_started = Instant::now();
        let mut command = cargo();
        command.args(step.args);
        for (key, value) in step.env {
            command.env(key, value);
        }
        let status = command
            .status()
            .with_context(|| format!("run cargo {}", step.args.join(" ")))?;
        let elapsed = step_started.elapsed();
        timings.push((step.title, elapsed));
        if !status.success() {
            bail!(
                "step `{}` failed ({status}) after {elapsed:.1?}",
                step.title
            );
        }
    }
    eprintln!("==> all CI steps passed in {:.1?}", started.elapsed());
    for (title, elapsed) in timings {
        eprintln!("    {title:<32} {elapsed:>8.1?}");
    }
    Ok(())
}
