//! Plain-text and markdown tables.

/// A table of strings with a header row.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right_aligned: Vec<bool>,
}

impl Table {
    /// A table with these column titles; columns whose title starts with `>` are
    /// right-aligned (the `>` is not shown).
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: header
                .iter()
                .map(|h| h.trim_start_matches('>').to_owned())
                .collect(),
            right_aligned: header.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    fn line(&self, cells: &[String], widths: &[usize], sep: &str, edge: bool) -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(&self.right_aligned)
            .map(|((cell, &w), &right)| {
                if right {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        if edge {
            format!("{sep}{}{sep}", parts.join(sep))
                .trim_end()
                .to_owned()
        } else {
            parts.join(sep).trim_end().to_owned()
        }
    }

    /// The table as aligned plain text.
    pub(crate) fn to_text(&self) -> String {
        let widths = self.widths();
        let mut out = self.line(&self.header, &widths, "  ", false);
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        out.push_str(&rule.join("  "));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&self.line(row, &widths, "  ", false));
            out.push('\n');
        }
        out
    }

    /// The table as GitHub markdown.
    pub(crate) fn to_markdown(&self) -> String {
        let widths = self.widths();
        let mut out = self.line(&self.header, &widths, " | ", true);
        out.push('\n');
        let rule: Vec<String> = widths
            .iter()
            .zip(&self.right_aligned)
            .map(|(&w, &right)| {
                if right {
                    format!("{}:", "-".repeat(w.max(2) - 1))
                } else {
                    "-".repeat(w.max(1))
                }
            })
            .collect();
        out.push_str(&format!("| {} |", rule.join(" | ")));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&self.line(row, &widths, " | ", true));
            out.push('\n');
        }
        out.lines()
            .map(|l| l.trim().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

/// `1234567.8` as `1.23 M`, `950.0` as `950`.
pub(crate) fn si(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e9 {
        (value / 1e9, " G")
    } else if value >= 1e6 {
        (value / 1e6, " M")
    } else if value >= 1e3 {
        (value / 1e3, " k")
    } else {
        (value, "")
    };
    if scaled >= 100.0 || suffix.is_empty() && scaled.fract() == 0.0 {
        format!("{scaled:.0}{suffix}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1}{suffix}")
    } else {
        format!("{scaled:.2}{suffix}")
    }
}
