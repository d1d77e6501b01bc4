//! Cutting a multi-document YAML stream into its documents in one pass, so that each is parsed
//! on its own text. Asking the parser for document `n` of the whole stream re-reads documents
//! `0..n` every time, which made a stream of `n` documents cost `n²`.
//!
//! The cuts come from yaml-rust2's events (the scanner `locate` already uses); serde_yaml_ng
//! then parses each piece and refuses one that holds a second document, so a disagreement
//! between the two parsers is an error, never a document lost.

use crate::error::FieldError;
use crate::locate::locate;
use crate::path::{FieldPath, Segment};
use yaml_rust2::parser::{Event, Parser};

/// Where one document lies in the stream: its bytes, and how many lines come before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub lines_before: usize,
}

/// The documents of a stream. When the scanner could not read on, the last span runs to the
/// end of the text and `unreadable` says where and why: whoever parses the pieces must report
/// it unless the parser finds the error itself.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    pub spans: Vec<Span>,
    pub unreadable: Option<Unreadable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The document the scanner was in.
    pub document: usize,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl Documents {
    pub fn split(text: &str) -> Self {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        // Byte offset where 1-based `line` begins.
        let at_line = |line: usize| {
            line_starts
                .get(line.saturating_sub(1))
                .copied()
                .unwrap_or(text.len())
        };
        let mut out = Documents::default();
        let mut starts: Vec<usize> = Vec::new();
        // The line of the last document's explicit end (`...`), after which the next piece
        // begins, so directives between documents stay with the document they belong to.
        let mut end_line: Option<usize> = None;
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::DocumentStart, mark)) => {
                    let start = match (starts.is_empty(), end_line) {
                        (true, _) => 0,
                        (false, Some(end)) if end < mark.line() => at_line(end + 1),
                        (false, _) => at_line(mark.line()),
                    };
                    starts.push(start);
                    end_line = None;
                }
                Ok((Event::DocumentEnd, mark)) => end_line = Some(mark.line()),
                Ok((Event::StreamEnd, _)) => break,
                Ok(_) => {}
                Err(e) => {
                    out.unreadable = Some(Unreadable {
                        document: starts.len().saturating_sub(1),
                        line: e.marker().line(),
                        column: e.marker().col() + 1,
                        reason: e.info().to_string(),
                    });
                    break;
                }
            }
        }
        out.spans = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).copied().unwrap_or(text.len());
                // `start` is always a line start, so the lines before it are the breaks before.
                let lines_before = line_starts.partition_point(|&s| s <= start) - 1;
                Span {
                    start,
                    end: end.max(start),
                    lines_before,
                }
            })
            .collect();
        out
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Document `doc`'s piece of `text` (the text this was split from).
    pub fn piece<'a>(&self, text: &'a str, doc: usize) -> Option<Piece<'a>> {
        self.spans.get(doc).map(|s| Piece {
            text: text.get(s.start..s.end).unwrap_or_default(),
            lines_before: s.lines_before,
            document: Some(doc),
        })
    }
}

/// One document's text, and what places its errors in the whole stream.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub lines_before: usize,
    /// The document's index, when the text was a stream of them.
    pub document: Option<usize>,
}

impl<'a> Piece<'a> {
    /// A text that is one document.
    pub fn whole(text: &'a str) -> Self {
        Self {
            text,
            lines_before: 0,
            document: None,
        }
    }

    /// Line and column in the whole stream of the node at `path` (or its nearest ancestor).
    pub fn locate(&self, path: &[Segment]) -> (usize, usize) {
        locate(self.text, 0, path).map_or((self.lines_before + 1, 1), |(line, column)| {
            (line + self.lines_before, column)
        })
    }

    /// An error about the node at `path`, placed in the whole stream.
    pub fn error(&self, path: &FieldPath, reason: String) -> FieldError {
        let (line, column) = self.locate(&path.0);
        FieldError {
            document: self.document,
            path: path.to_string(),
            line,
            column,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<(&str, usize)> {
        let d = Documents::split(text);
        assert_eq!(d.unreadable, None, "{text:?}");
        (0..d.len())
            .filter_map(|i| d.piece(text, i))
            .map(|p| (p.text, p.lines_before))
            .collect()
    }

    #[test]
    fn each_document_is_its_own_piece_with_the_lines_before_it() {
        let text = "# head\na: 1\n---\nb: 2\n--- {c: 3}\n---\n\n";
        assert_eq!(
            pieces(text),
            [
                ("# head\na: 1\n", 0),
                ("---\nb: 2\n", 2),
                ("--- {c: 3}\n", 4),
                ("---\n\n", 5)
            ]
        );
    }

    #[test]
    fn an_explicit_end_keeps_the_next_document_s_directives_with_it() {
        let text = "a: 1\n...\n%YAML 1.2\n---\nb: 2\n...\nc: 3\n";
        assert_eq!(
            pieces(text),
            [
                ("a: 1\n...\n", 0),
                ("%YAML 1.2\n---\nb: 2\n...\n", 2),
                ("c: 3\n", 6)
            ]
        );
    }

    #[test]
    fn no_documents_in_an_empty_stream() {
        assert!(pieces("").is_empty());
        assert!(pieces("# only a comment\n").is_empty());
    }

    #[test]
    fn where_the_scanner_stops_the_last_piece_runs_to_the_end() {
        let text = "a: 1\n---\nb: [open\n---\nc: 3\n";
        let d = Documents::split(text);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d.piece(text, 1).map(|p| p.text),
            Some("---\nb: [open\n---\nc: 3\n")
        );
        let u = d.unreadable.expect("the scanner stops");
        assert_eq!(u.document, 1);
        assert!(u.line >= 3, "{u:?}");
    }

    #[test]
    fn errors_are_placed_in_the_whole_stream() {
        let text = "a: 1\n---\nb:\n  c: [1, 2]\n";
        let d = Documents::split(text);
        let p = d.piece(text, 1).expect("two documents");
        let e = p.error(&FieldPath::root().key("b").key("c").index(1), "no".into());
        assert_eq!((e.document, e.line, e.column), (Some(1), 4, 10));
    }
}
