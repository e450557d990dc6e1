//! The bench report as an SVG chart: one panel per metric and unit, one row per figure, the
//! figure's bar beside its baseline's, on a logarithmic axis (values span nanoseconds to
//! gigabytes per second).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipc_tests::bench::Figure;

/// Width of the plot area, right of the labels.
const PLOT_WIDTH: f64 = 600.0;
/// About how wide one character of a 12 px label is.
const CHAR_WIDTH: f64 = 6.6;
const ROW_HEIGHT: f64 = 34.0;
const PANEL_HEADER: f64 = 56.0;
const PANEL_GAP: f64 = 24.0;
const MARGIN: f64 = 20.0;

/// Colours per mechanism, the baseline always grey.
fn colour(mechanism: &str) -> &'static str {
    match mechanism {
        "ipc-core" => "#4e79a7",
        "ipc-shm" => "#f28e2b",
        "ipc-socket" => "#59a14f",
        "ipc-queue" => "#b07aa1",
        _ => "#76b7b2",
    }
}

const BASELINE: &str = "#bab0ac";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn payload_label(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// A value with its unit, nanoseconds scaled to µs or ms where that reads better.
pub(crate) fn value_label(value: f64, unit: &str) -> String {
    match unit {
        "ns" if value >= 1e6 => format!("{:.2} ms", value / 1e6),
        "ns" if value >= 1e4 => format!("{:.1} µs", value / 1e3),
        "ns" if value >= 1e3 => format!("{:.2} µs", value / 1e3),
        "ns" => format!("{value:.1} ns"),
        unit => format!("{} {unit}", crate::table::si(value)),
    }
}

fn row_label(f: &Figure) -> String {
    format!(
        "{} · {} · {}",
        f.mechanism,
        f.case,
        payload_label(f.payload_bytes)
    )
}

/// Renders `figures` as an SVG document.
pub(crate) fn render(figures: &[Figure], title: &str) -> String {
    // Panels keyed by (metric, unit), rows ordered by mechanism, case, payload.
    let mut panels: BTreeMap<(String, String), Vec<&Figure>> = BTreeMap::new();
    for f in figures {
        panels
            .entry((f.metric.clone(), f.unit.clone()))
            .or_default()
            .push(f);
    }
    for rows in panels.values_mut() {
        rows.sort_by(|a, b| {
            (a.mechanism.as_str(), a.case.as_str(), a.payload_bytes).cmp(&(
                b.mechanism.as_str(),
                b.case.as_str(),
                b.payload_bytes,
            ))
        });
    }
    let label_width = figures
        .iter()
        .map(|f| row_label(f).chars().count())
        .max()
        .unwrap_or(20) as f64
        * CHAR_WIDTH
        + 16.0;
    let width = MARGIN * 2.0 + label_width + PLOT_WIDTH + 110.0;
    let height = MARGIN * 2.0
        + 30.0
        + panels
            .values()
            .map(|rows| PANEL_HEADER + rows.len() as f64 * ROW_HEIGHT + PANEL_GAP)
            .sum::<f64>();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height}" viewBox="0 0 {width:.0} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN}" y="{}" font-size="16" font-weight="bold">{}</text>"#,
        MARGIN + 12.0,
        escape(title)
    );
    let mut y = MARGIN + 30.0;
    for ((metric, unit), rows) in &panels {
        let better = if metric == "latency" {
            "lower is better"
        } else {
            "higher is better"
        };
        let _ = writeln!(
            svg,
            r#"<text x="{MARGIN}" y="{}" font-size="14" font-weight="bold">{} ({}), {better}; log scale</text>"#,
            y + 18.0,
            escape(metric),
            escape(unit)
        );
        // Legend: coloured = ipc, grey = raw baseline from the same run.
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{}" width="12" height="10" fill="#4e79a7"/><text x="{}" y="{}">ipc (colour by crate)</text><rect x="{}" y="{}" width="12" height="10" fill="{BASELINE}"/><text x="{}" y="{}">raw baseline</text>"##,
            MARGIN,
            y + 28.0,
            MARGIN + 16.0,
            y + 37.0,
            MARGIN + 170.0,
            y + 28.0,
            MARGIN + 186.0,
            y + 37.0
        );
        let values = rows
            .iter()
            .flat_map(|f| [f.value, f.baseline_value])
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo <= hi {
            (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil()),
            )
        } else {
            (1.0, 10.0)
        };
        let decades = (hi / lo).log10().max(1.0);
        let plot_x = MARGIN + label_width;
        let plot_w = PLOT_WIDTH;
        let x_of = |v: f64| {
            if v <= 0.0 || !v.is_finite() {
                return 0.0;
            }
            ((v / lo).log10() / decades * plot_w).clamp(1.0, plot_w)
        };
        let top = y + PANEL_HEADER;
        let bottom = top + rows.len() as f64 * ROW_HEIGHT;
        // Decade grid lines.
        for d in 0..=(decades as i32) {
            let v = lo * 10f64.powi(d);
            let x = plot_x + x_of(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e0e0e0"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#666">{}</text>"##,
                bottom + 14.0,
                escape(&value_label(v, unit).replace(&format!(" {unit}"), ""))
            );
        }
        for (i, f) in rows.iter().enumerate() {
            let row_y = top + i as f64 * ROW_HEIGHT;
            let label = row_label(f);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                plot_x - 8.0,
                row_y + 17.0,
                escape(&label)
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{plot_x}" y="{}" width="{:.1}" height="12" fill="{}"><title>{}</title></rect>"#,
                row_y + 4.0,
                x_of(f.value),
                colour(&f.mechanism),
                escape(&value_label(f.value, unit))
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{plot_x}" y="{}" width="{:.1}" height="8" fill="{BASELINE}"><title>{}</title></rect>"#,
                row_y + 18.0,
                x_of(f.baseline_value),
                escape(&format!(
                    "{}: {}",
                    f.baseline_name,
                    value_label(f.baseline_value, unit)
                ))
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{}" fill="#333">{} ({:.2}x)</text>"##,
                plot_x + x_of(f.value) + 4.0,
                row_y + 14.0,
                escape(&value_label(f.value, unit)),
                f.ratio()
            );
        }
        y = bottom + PANEL_GAP + 10.0;
    }
    svg.push_str("</svg>\n");
    svg
}
