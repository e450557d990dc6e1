//! The project's tasks, run as `cargo xtask <task>`:
//!
//! - `scenarios [NAME] [--quick] [--list]`: cross-crate scenarios with real separate processes;
//! - `bench [--quick] [--only GROUP] [--json PATH] [--render REPORT] [--update-readme]`: every
//!   mechanism beside its raw baseline, as a table and JSON (and the README's table);
//! - `soak [TEST]`: the long versions of the reliability tests (kill loop, corruption trials, disk full);
//! - `ci [--only TEXT]`: the same steps as `.ci/run` (format, licences, lint, test, docs,
//!   feature sets, ipc-socket without tokio, MSRV, cross targets, publish --dry-run, quick
//!   scenarios);
//! - `queue stats PATH [--json]`: a look inside an embedded ipc-queue.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod chart;
mod ci;
mod peers;
mod queue;
mod scenarios;
mod soak;
mod table;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tasks of the ipc workspace", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the cross-process scenarios (all, or the one named) and print a summary table.
    Scenarios {
        /// Run only this scenario (see --list).
        name: Option<String>,
        /// Small sizes, for CI: every scenario still runs its real processes.
        #[arg(long)]
        quick: bool,
        /// List the scenarios with one line each, and exit.
        #[arg(long)]
        list: bool,
        /// The RabbitMQ broker for the `amqp-*` scenarios (default: `IPC_AMQP_URL`; without
        /// either they are shown as skipped).
        #[arg(long, value_name = "URL")]
        amqp: Option<String>,
    },
    /// Measure every mechanism beside its raw baseline; print a markdown table, write JSON.
    Bench {
        /// Short runs, to check that every bench works; the numbers are rough.
        #[arg(long)]
        quick: bool,
        /// Measure only this group: ipc-core, ipc-shm, ipc-socket, ipc-queue or amqp.
        #[arg(long, value_name = "GROUP")]
        only: Option<String>,
        /// Where to write the JSON report (the SVG chart goes beside it).
        #[arg(long, default_value = "target/ipc-bench/report.json")]
        json: PathBuf,
        /// Measure nothing: re-render the table and chart of this JSON report.
        #[arg(long, value_name = "REPORT")]
        render: Option<PathBuf>,
        /// Also write the table into README.md (between its bench-table markers) and the
        /// report and chart into docs/; only for a full run of every group, or --render.
        #[arg(long)]
        update_readme: bool,
    },
    /// Run the long reliability tests (kill loop, corruption trials, disk-full rounds) and print their figures.
    Soak {
        /// Run only this one: queue_processes, queue_corruption or queue_disk_full.
        test: Option<String>,
    },
    /// Run the CI steps of `.ci/run`: fmt, licences, clippy, tests, docs, feature sets,
    /// ipc-socket without tokio, MSRV, cross targets, publish --dry-run, quick scenarios.
    Ci {
        /// Run only the steps whose title contains this text (e.g. `feature`, `MSRV`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Look inside an embedded ipc-queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Depth, unacknowledged and dead-letter counts, oldest message age, disk use.
    Stats {
        /// The queue: a directory, or `amqp://user:password@host:port/vhost#queue`.
        address: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<bool> = match cli.task {
        Task::Scenarios {
            name,
            quick,
            list,
            amqp,
        } => {
            if list {
                scenarios::list();
                Ok(true)
            } else {
                scenarios::run(name.as_deref(), quick, amqp)
            }
        }
        Task::Bench {
            render: Some(report),
            update_readme,
            ..
        } => bench::render(&report, update_readme).map(|()| true),
        Task::Bench {
            quick,
            only,
            json,
            update_readme,
            ..
        } => bench::run(quick, only.as_deref(), &json, update_readme).map(|()| true),
        Task::Soak { test } => soak::run(test.as_deref()),
        Task::Ci { only } => ci::run(only.as_deref()).map(|()| true),
        Task::Queue {
            command: QueueCommand::Stats { address, json },
        } => queue::stats(&address, json).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
