//! Tables and JSON for the terminal.

use anyhow::Result;
use shoal_discovery::{GossipStats, MemberView};

/// Renders rows as left-aligned columns separated by three spaces, like the docker CLI.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn print_members(members: &[MemberView], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(members)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                format!("{}{}", m.id.short(), if m.is_self { " *" } else { "" }),
                m.name.clone().unwrap_or_else(|| "?".into()),
                m.addr.to_string(),
                m.state.as_str().to_string(),
                format!("{}.{}", m.incarnation >> 16, m.incarnation & 0xffff),
                labels.join(","),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "NAME", "ADDRESS", "STATE", "GEN", "LABELS"], &rows));
    Ok(())
}

pub fn print_stats(stats: &GossipStats, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(stats)?);
        return Ok(());
    }
    let value = serde_json::to_value(stats)?;
    let rows: Vec<Vec<String>> = value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect())
        .unwrap_or_default();
    print!("{}", table(&["COUNTER", "VALUE"], &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn columns_align() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(t, "A      BB\nlong   x\ns      yy\n");
    }
}
