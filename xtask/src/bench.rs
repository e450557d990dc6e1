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

/// The lines around the generated part of README.md.
const README_BEGIN: &str =
    "<!-- bench-table: written by `cargo xtask bench --update-readme`; do not edit by hand -->";
const README_END: &str = "<!-- /bench-table -->";
/// Where `--update-readme` keeps the report behind the README's table and chart.
const DOCS_REPORT: &str = "docs/bench-report.json";

/// Runs the benches and reports them.
pub(crate) fn run(quick: bool, only: Option<&str>, json: &Path, update_readme: bool) -> Result<()> {
    if update_readme && (quick || only.is_some()) {
        bail!("--update-readme needs a full run of every group (no --quick, no --only)");
    }
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
    let report = Report {
        figures,
        effort: effort.to_owned(),
        machine: machine_line(),
        taken: taken_line(),
    };
    write(&report, json)?;
    if update_readme {
        write_readme(&report)?;
    }
    Ok(())
}

/// One run's figures and where they were taken.
struct Report {
    figures: Vec<Figure>,
    effort: String,
    machine: String,
    /// The date and the commit measured.
    taken: String,
}

impl Report {
    fn read(path: &Path) -> Result<Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).context("parse the report")?;
        let figures: Vec<Figure> =
            serde_json::from_value(value["figures"].clone()).context("the report's figures")?;
        let field = |name: &str, default: &str| value[name].as_str().unwrap_or(default).to_owned();
        Ok(Report {
            figures,
            effort: field("effort", "full"),
            machine: field("machine", "machine unknown"),
            taken: field("taken", "date and commit unknown"),
        })
    }

    /// The markdown table of the figures, each beside its baseline and their ratio.
    fn table(&self) -> String {
        table(&self.figures)
    }

    /// What `--update-readme` writes between the README's markers.
    fn readme_section(&self) -> String {
        format!(
            "Measured {} ({} run), {}.\n\n{}",
            self.taken,
            self.effort,
            self.machine.trim_start_matches("machine: "),
            self.table()
        )
    }
}

/// Re-renders the table and the chart of a JSON report written earlier.
pub(crate) fn render(report_path: &Path, update_readme: bool) -> Result<()> {
    let report = Report::read(report_path)?;
    if update_readme {
        if report.effort != "full" {
            bail!(
                "--update-readme: {} is a {} run, not a full one",
                report_path.display(),
                report.effort
            );
        }
        write_readme(&report)?;
    }
    write(&report, report_path)
}

/// Replaces the generated part of README.md with this report's table, and copies the
/// report and its chart to docs/ (the README shows that chart).
fn write_readme(report: &Report) -> Result<()> {
    let root = peers::workspace_root();
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .with_context(|| format!("read {}", readme_path.display()))?;
    let updated = replace_section(&readme, &report.readme_section())?;
    std::fs::write(&readme_path, updated)
        .with_context(|| format!("write {}", readme_path.display()))?;
    write(report, &root.join(DOCS_REPORT))?;
    eprintln!("wrote the table into {}", readme_path.display());
    Ok(())
}

/// `readme` with the text between its bench-table markers replaced by `section`.
fn replace_section(readme: &str, section: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (readme.find(README_BEGIN), readme.find(README_END)) else {
        bail!("README.md has no bench-table markers ({README_BEGIN} ... {README_END})");
    };
    if end < begin {
        bail!("README.md's bench-table markers are in the wrong order");
    }
    let start = begin + README_BEGIN.len();
    Ok(format!("{}\n{section}{}", &readme[..start], &readme[end..]))
}

/// The markdown table of `figures`, each beside its baseline and their ratio.
fn table(figures: &[Figure]) -> String {
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
    table.to_markdown()
}

/// Prints the markdown table, and writes the JSON report and the SVG chart beside it.
fn write(report: &Report, json: &Path) -> Result<()> {
    let Report {
        figures,
        effort,
        machine,
        taken,
    } = report;
    println!("{machine}; {taken}");
    println!();
    print!("{}", report.table());
    println!();
    println!(
        "ratio = value / baseline: for latency lower is better, for throughput higher is better."
    );

    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let value = serde_json::json!({
        "machine": machine,
        "effort": effort,
        "taken": taken,
        "figures": figures,
    });
    std::fs::write(json, serde_json::to_string_pretty(&value)?)
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

/// The day (UTC) and the commit measured, e.g. `on 2026-12-02 at 1374af9`.
fn taken_line() -> String {
    let output = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .current_dir(peers::workspace_root())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let day = output("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "an unknown day".into());
    let commit = output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|changes| !changes.is_empty());
    format!(
        "on {day} at {commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table is the one `--update-readme` made from docs/bench-report.json:
    /// nobody edited numbers into it by hand, and the report beside it is the one it shows.
    #[test]
    fn the_readme_table_is_generated_from_the_docs_report() {
        let root = peers::workspace_root();
        let report = Report::read(&root.join(DOCS_REPORT)).expect("docs/bench-report.json");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
        let expected = replace_section(&readme, &report.readme_section()).expect("markers");
        assert!(
            readme == expected,
            "README.md's bench table differs from docs/bench-report.json: run `cargo xtask \
             bench --render docs/bench-report.json --update-readme` (or a new full run with \
             --update-readme)"
        );
    }

    #[test]
    fn replace_section_keeps_what_is_around_the_markers() {
        let readme = format!("a\n{README_BEGIN}\nold\n{README_END}\nb\n");
        let out = replace_section(&readme, "new\n").expect("markers");
        assert_eq!(out, format!("a\n{README_BEGIN}\nnew\n{README_END}\nb\n"));
        assert!(replace_section("no markers", "x").is_err());
    }
}
