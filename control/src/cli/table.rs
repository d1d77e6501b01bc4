//! Plain aligned text tables for `get` and `top`.

/// Prints `rows` under `header`, columns padded to their widest cell.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", format(header, rows));
}

/// The table [`print`] prints, as text.
pub fn format(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}
