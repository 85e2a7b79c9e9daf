pub mod agent;
pub mod backup;
pub mod capture;
pub mod cluster;
pub mod copy;
pub mod finish;
pub mod import;
pub mod inspect;
pub mod node;
pub mod operator;
pub mod pki;
pub mod recover;
pub mod repair;
pub mod restore;
pub mod save;
pub mod shell;
pub mod snapshot;

/// Rows as a left-aligned text table, two spaces between columns (the first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> =
            r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
