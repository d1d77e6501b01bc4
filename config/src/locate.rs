//! Finds the line and column of a field path in YAML text, so that errors found after parsing
//! (semantic validation) point at the same place a syntax error would.

use crate::path::Segment;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

type Events<'a> = Parser<std::str::Chars<'a>>;

/// Line and column (both 1-based) of the node at `path` in document `doc` of `text`. When the
/// path does not exist (a missing field), this is the deepest ancestor that does; `None` only
/// when the text cannot be scanned at all.
pub fn locate(text: &str, doc: usize, path: &[Segment]) -> Option<(usize, usize)> {
    let mut parser = Parser::new_from_str(text);
    let mut seen = 0;
    loop {
        let (ev, _) = parser.next_token().ok()?;
        match ev {
            Event::DocumentStart if seen == doc => break,
            Event::DocumentStart => seen += 1,
            Event::StreamEnd => return None,
            _ => {}
        }
    }
    let (ev, mark) = parser.next_token().ok()?;
    let m = descend(&mut parser, ev, mark, path)?;
    // yaml-rust2 columns are 0-based despite its docs; serde_yaml_ng and editors count from 1.
    Some((m.line(), m.col() + 1))
}

fn descend(p: &mut Events<'_>, ev: Event, mark: Marker, path: &[Segment]) -> Option<Marker> {
    let Some((want, rest)) = path.split_first() else {
        return Some(mark);
    };
    match (ev, want) {
        (Event::MappingStart(..), Segment::Key(k)) => {
            // A block mapping's own marker sits after its first key; its first key is where a
            // reader looks for a missing field.
            let mut first_key = None;
            loop {
                let (key, km) = p.next_token().ok()?;
                first_key.get_or_insert(km);
                match key {
                    Event::MappingEnd => return first_key.or(Some(mark)),
                    Event::Scalar(ref s, ..) if s == k => {
                        let (v, vm) = p.next_token().ok()?;
                        return descend(p, v, vm, rest);
                    }
                    other => {
                        skip(p, other)?;
                        let (v, _) = p.next_token().ok()?;
                        skip(p, v)?;
                    }
                }
            }
        }
        (Event::SequenceStart(..), Segment::Index(i)) => {
            let mut n = 0;
            loop {
                let (item, im) = p.next_token().ok()?;
                if item == Event::SequenceEnd {
                    return Some(mark);
                }
                if n == *i {
                    return descend(p, item, im, rest);
                }
                skip(p, item)?;
                n += 1;
            }
        }
        _ => Some(mark),
    }
}

/// Consumes the rest of a node whose first event is `ev`.
fn skip(p: &mut Events<'_>, ev: Event) -> Option<()> {
    let mut depth: usize = match ev {
        Event::MappingStart(..) | Event::SequenceStart(..) => 1,
        _ => return Some(()),
    };
    while depth > 0 {
        match p.next_token().ok()?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            Event::StreamEnd => return None,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::FieldPath;

    const DOC: &str = "\
service: order
destinations:
  - name: payment
    endpoints:
      - address: 127.0.0.1:1
      - {address: 127.0.0.1:2, version: v2}
---
second: [a, b]
";

    fn at(doc: usize, p: &str) -> Option<(usize, usize)> {
        locate(DOC, doc, &FieldPath::parse(p).0)
    }

    #[test]
    fn finds_nested_block_and_flow_nodes() {
        assert_eq!(at(0, "service"), Some((1, 10)));
        assert_eq!(at(0, "destinations[0].name"), Some((3, 11)));
        assert_eq!(at(0, "destinations[0].endpoints[0].address"), Some((5, 18)));
        assert_eq!(at(0, "destinations[0].endpoints[1].version"), Some((6, 41)));
        assert_eq!(at(1, "second[1]"), Some((8, 13)));
    }

    #[test]
    fn missing_field_points_at_nearest_ancestor() {
        assert_eq!(at(0, "destinations[0].routes"), Some((3, 5)));
        assert_eq!(at(0, "destinations[7]"), Some((3, 3)));
    }
}
