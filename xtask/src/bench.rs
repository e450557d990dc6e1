//! `cargo xtask bench`: every mechanism beside its raw baseline, measured in one run.
//!
//! The measuring happens inside a release build of `ipc-peer` (its `bench` role), never in
//! this debug-built xtask; xtask collects the figures, prints a markdown table with each
//! figure's ratio to its baseline, and writes the JSON report and an SVG chart beside it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ipc_tests::Peer;
use ipc_tests::bench::{Figure, GROUPS};

use crate::chart::value_label;
use crate::peers::{self, Profile};
use crate::table::Table;

/// Runs the benches and reports them.
pub(crate) fn run(quick: bool, only: Option<&str>, json: &Path) -> Result<()> {
    if let Some(only) = only
        && !GROUPS.contains(&only)
    {
        bail!(
            "no bench group `{only}`; expected one of {}",
            GROUPS.join(", ")
        );
    }
    eprintln!("building the peer process (ipc-peer, release profile, iceoryx2 anchor)...");
    // The iceoryx2 anchor rows of the ipc-shm bench need iceoryx2, which only this build
    // compiles: tests, clippy and the scenarios' peer leave it out.
    peers::build_peer_with_features(Profile::Release, &["iceoryx2-anchor"])?;
    let effort = if quick { "quick" } else { "full" };
    let mut peer = Peer::spawn_role(
        "bench",
        "bench",
        ["--effort", effort, "--only", only.unwrap_or("")],
    )?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").context("template")?);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("measuring");
    let mut figures: Vec<Figure> = Vec::new();
    loop {
        let line = peer.expect_line(Duration::from_secs(1800))?;
        if let Some(json) = line.strip_prefix("figure ") {
            let figure: Figure = serde_json::from_str(json).context("parse a figure")?;
            bar.set_message(format!(
                "{} {} ({} B): {}",
                figure.mechanism,
                figure.case,
                figure.payload_bytes,
                value_label(figure.value, &figure.unit)
            ));
            figures.push(figure);
        } else if line.starts_with("ok") {
            break;
        } else if line.starts_with("error") {
            bar.finish_and_clear();
            bail!("bench peer failed: {line}");
        }
    }
    bar.finish_and_clear();
    peer.wait_success(Duration::from_secs(60))?;
    report(&figures, effort, &machine_line(), json)
}

/// Re-renders the table and the chart of a JSON report written earlier.
pub(crate) fn render(report_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(report_path)
        .with_context(|| format!("read {}", report_path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("parse the report")?;
    let figures: Vec<Figure> =
        serde_json::from_value(value["figures"].clone()).context("the report's figures")?;
    let effort = value["effort"].as_str().unwrap_or("full").to_owned();
    let machine = value["machine"]
        .as_str()
        .unwrap_or("machine unknown")
        .to_owned();
    report(&figures, &effort, &machine, report_path)
}

/// Prints the markdown table, and writes the JSON report and the SVG chart beside it.
fn report(figures: &[Figure], effort: &str, machine: &str, json: &Path) -> Result<()> {
    let mut table = Table::new(&[
        "mechanism",
        "case",
        ">payload",
        ">value",
        "baseline",
        ">baseline value",
        ">ratio",
    ]);
    for f in figures {
        table.push(vec![
            f.mechanism.clone(),
            f.case.clone(),
            format_bytes(f.payload_bytes),
            value_label(f.value, &f.unit),
            f.baseline_name.clone(),
            value_label(f.baseline_value, &f.unit),
            format!("{:.2}x", f.ratio()),
        ]);
    }
    println!("{machine}");
    println!();
    print!("{}", table.to_markdown());
    println!();
    println!(
        "ratio = value / baseline: for latency lower is better, for throughput higher is better."
    );

    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let report = serde_json::json!({
        "machine": machine,
        "effort": effort,
        "figures": figures,
    });
    std::fs::write(json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", json.display()))?;
    eprintln!("wrote {}", json.display());
    let chart = json.with_extension("svg");
    let title = format!("ipc bench ({effort}): {machine}");
    std::fs::write(&chart, crate::chart::render(figures, &title))
        .with_context(|| format!("write {}", chart.display()))?;
    eprintln!("wrote {}", chart.display());
    Ok(())
}

fn format_bytes(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// The CPU model and core count, for the report.
fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("machine: {cpu}, {cores} cores, {}", std::env::consts::OS)
}
