//! `cargo xtask soak`: the long versions of the reliability tests, whose short versions run
//! in CI: the queue kill loop, the corruption trials by damage kind, and the disk-full rounds.
//!
//! Each test prints its figures (rounds, receipted, lost, corrupt, duplicates; outcomes by
//! damage kind; messages per fill) on stderr; this task runs them with `IPC_SOAK=1` and
//! `--nocapture`, so the figures appear as they are measured.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::peers::cargo;

/// One soak: a module of `ipc-tests`' test binary `it` and a filter on its test names.
struct Soak {
    what: &'static str,
    test: &'static str,
    filter: &'static str,
}

const SOAKS: &[Soak] = &[
    Soak {
        what: "queue kill loop (SIGKILL of producers and consumers at random moments)",
        test: "queue_processes",
        filter: "kill_loop",
    },
    Soak {
        what: "queue corruption trials by damage kind",
        test: "queue_corruption",
        filter: "corruption_trials",
    },
    Soak {
        what: "queue disk-full fill, drain and refill rounds",
        test: "queue_disk_full",
        filter: "",
    },
];

/// Runs every soak (or the one whose module is `only`); returns false if one failed.
pub(crate) fn run(only: Option<&str>) -> Result<bool> {
    let started = Instant::now();
    let mut all_passed = true;
    let mut ran = 0;
    for soak in SOAKS.iter().filter(|s| only.is_none_or(|o| o == s.test)) {
        ran += 1;
        eprintln!("==> soak: {} ({})", soak.what, soak.test);
        let soak_started = Instant::now();
        let mut command = cargo();
        command
            .args(["test", "--release", "-p", "ipc-tests", "--test", "it"])
            .arg(format!("{}::{}", soak.test, soak.filter))
            .env("IPC_SOAK", "1");
        command.args(["--", "--nocapture", "--test-threads", "1"]);
        let status = command
            .status()
            .with_context(|| format!("run the soak {}", soak.test))?;
        eprintln!(
            "==> soak {}: {} in {:.1?}",
            soak.test,
            if status.success() { "passed" } else { "FAILED" },
            soak_started.elapsed()
        );
        all_passed &= status.success();
    }
    if ran == 0 {
        let names: Vec<&str> = SOAKS.iter().map(|s| s.test).collect();
        anyhow::bail!(
            "no soak named {:?}; the soaks are {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    eprintln!(
        "==> {ran} soaks {} in {:.1?}",
        if all_passed {
            "passed"
        } else {
            "did not all pass"
        },
        started.elapsed()
    );
    Ok(all_passed)
}
