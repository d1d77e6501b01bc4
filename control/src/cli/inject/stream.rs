//! Splitting a multi-document YAML stream into its documents, keeping every byte: the
//! documents `inject` leaves alone are written back exactly as they were read, so a Service's
//! comments, quoting and key order survive, and only the injected documents are re-serialized.
//!
//! A document separator is a line that starts with `---` followed by nothing, whitespace or a
//! comment. Inside a block scalar every content line is indented, so a `---` at column 0 always
//! ends the document, as YAML says.

/// One piece of the stream: the separator line that opened it (with its line ending; empty
/// for the text before the first separator) and the document's text up to the next separator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    pub separator: &'a str,
    pub body: &'a str,
    /// 1-based line of the body's first line in the stream.
    pub line: usize,
}

impl Piece<'_> {
    /// Whether the body holds anything but blank lines and comments (such a body is not a
    /// document and is never numbered).
    pub fn has_content(&self) -> bool {
        self.body.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "..."
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "line {line}: content after the `---` document separator is not supported; put it on the \
     next line"
)]
pub struct SplitError {
    pub line: usize,
}

/// Splits `text` into pieces; concatenating `separator` and `body` of every piece gives `text`
/// back exactly.
pub fn split(text: &str) -> Result<Vec<Piece<'_>>, SplitError> {
    let mut pieces = Vec::new();
    let mut separator = "";
    let mut body_start = 0;
    let mut body_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        if is_separator(line, line_no)? {
            pieces.push(Piece {
                separator,
                body: &text[body_start..offset],
                line: body_line,
            });
            separator = &text[offset..offset + line.len()];
            body_start = offset + line.len();
            body_line = line_no + 1;
        }
        offset += line.len();
    }
    pieces.push(Piece {
        separator,
        body: &text[body_start..],
        line: body_line,
    });
    Ok(pieces)
}

fn is_separator(line: &str, line_no: usize) -> Result<bool, SplitError> {
    let Some(rest) = line.strip_prefix("---") else {
        return Ok(false);
    };
    let rest = rest.trim_end_matches(['\n', '\r']);
    if rest.is_empty() {
        return Ok(true);
    }
    if !rest.starts_with([' ', '\t']) {
        // `----` or `---foo`: a plain scalar, not a separator.
        return Ok(false);
    }
    let rest = rest.trim();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(true)
    } else {
        Err(SplitError { line: line_no })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(pieces: &[Piece<'_>]) -> String {
        pieces
            .iter()
            .map(|p| format!("{}{}", p.separator, p.body))
            .collect()
    }

    #[test]
    fn splitting_keeps_every_byte() {
        for text in [
            "",
            "a: 1\n",
            "---\na: 1\n---\nb: 2\n",
            "# lead\n--- # first\na: 1\r\n---\r\nb: |\n  ---\n  x\n---\n",
            "a: 1\n---",
            "a: 1\n----\nb: 2\n",
        ] {
            let pieces = split(text).unwrap_or_default();
            assert_eq!(join(&pieces), text, "{text:?}");
        }
    }

    #[test]
    fn separators_and_content() {
        let p = split("# c\n---\na: 1\n--- # x\n\n# only a comment\n---\nb: |\n  ---\n")
            .unwrap_or_default();
        assert_eq!(p.len(), 4);
        assert!(!p[0].has_content());
        assert_eq!((p[1].body, p[1].line), ("a: 1\n", 3));
        assert_eq!(p[2].separator, "--- # x\n");
        assert!(!p[2].has_content());
        assert_eq!(p[3].body, "b: |\n  ---\n");
        assert!(split("a: 1\n---\n").is_ok_and(|p| p.len() == 2 && p[1].body.is_empty()));
    }

    #[test]
    fn content_on_the_separator_line_is_refused_with_its_line() {
        assert_eq!(split("a: 1\n--- {b: 2}\n"), Err(SplitError { line: 2 }));
    }
}
