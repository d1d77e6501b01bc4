//! No import cycles between modules, in any crate of the workspace. A module here is a source
//! file; it depends on another when it names it by path (`use crate::a::b`, `crate::a::b::f()`,
//! `super::b`), anywhere in the file. A child naming its own ancestor (`super::Thing` in a
//! submodule) is the usual Rust layout and not counted; everything else must point one way.
//! A cycle fails with its path, so a new one is caught the day it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates' source roots, relative to the workspace root.
const CRATES: &[&str] = &["config/src", "proxy/src", "control/src", "services/src"];

/// Module path (`["forward", "headers"]`) of a file under a crate's `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            // Binaries are their own crates; they may use anything of the library.
            if p.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Source with comments, string literals and `#[cfg(test)]` modules taken out: tests may
/// reach anywhere, and prose mentions paths.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping_tests = false;
    let mut depth = 0i32;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            skipping_tests = true;
            depth = 0;
            continue;
        }
        if skipping_tests {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if depth <= 0 && line.contains('}') {
                skipping_tests = false;
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The module paths a file names: `crate::a::b…` and `super::…` (resolved from `here`).
fn references(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut refs = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        // Past a multi-byte character's first byte: not the start of a path.
        let Some(rest) = code.get(i..) else {
            i += 1;
            continue;
        };
        let start_ok = i == 0 || !ident(bytes[i - 1]) && bytes[i - 1] != b':';
        let (base, skip): (Vec<String>, usize) = if start_ok && rest.starts_with("crate::") {
            (Vec::new(), "crate::".len())
        } else if start_ok && rest.starts_with("super::") {
            // `super` of module `a::b` (`a/b.rs` or `a/b/mod.rs`) is `a`.
            let mut base = here.to_vec();
            let mut n = 0;
            let mut r = rest;
            while r.starts_with("super::") {
                n += 1;
                r = &r["super::".len()..];
            }
            for _ in 0..n {
                base.pop();
            }
            (base, "super::".len() * n)
        } else {
            i += 1;
            continue;
        };
        let mut path = base;
        let mut j = i + skip;
        loop {
            let s = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            if j == s {
                break;
            }
            path.push(code[s..j].to_string());
            if code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        // A brace group: `crate::a::{b, c::d}` names each.
        if code[j..].starts_with('{') {
            if let Some(end) = code[j..].find('}') {
                for item in code[j + 1..j + end].split(',') {
                    let mut p = path.clone();
                    p.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty() && s != "self"),
                    );
                    refs.push(p);
                }
            }
        }
        refs.push(path);
        i = j.max(i + 1);
    }
    refs
}

/// The graph of one crate: module → modules it names.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let here = module_of(src, f);
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let mut deps = BTreeSet::new();
        for mut r in references(&code_only(&text), &here) {
            // The longest prefix that is a module file.
            while !r.is_empty() && !modules.contains(&r) {
                r.pop();
            }
            let ancestor_or_self = here.starts_with(&r);
            if !ancestor_or_self {
                deps.insert(r);
            }
        }
        g.insert(here, deps);
    }
    g
}

/// One cycle, if there is any: the modules on it, first repeated at the end.
fn find_cycle(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &Vec<String>,
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        marks.insert(n.clone(), Mark::Open);
        stack.push(n.clone());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, g, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, g, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn show(cycle: &[Vec<String>]) -> String {
    cycle
        .iter()
        .map(|m| {
            if m.is_empty() {
                "crate".to_string()
            } else {
                m.join("::")
            }
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Every cycle, one per group of modules that reach each other: each group is cut out of the
/// graph once one of its cycles is found.
fn all_cycles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    let mut g = g.clone();
    let mut out = Vec::new();
    while let Some(c) = find_cycle(&g) {
        for m in &c {
            g.remove(m);
        }
        for deps in g.values_mut() {
            deps.retain(|d| !c.contains(d));
        }
        out.push(c);
    }
    out
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cycles = Vec::new();
    for krate in CRATES {
        let g = graph(&root.join(krate));
        assert!(
            g.len() > 1 || *krate == "services/src",
            "{krate}: no modules found"
        );
        for c in all_cycles(&g) {
            cycles.push(format!("{krate}: {}", show(&c)));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_ignores_ancestors() {
    let m = |s: &str| -> Vec<String> { s.split("::").map(str::to_string).collect() };
    let refs = references(
        "use crate::a::{b::C, d};\nfn f() { super::x::y(); crate::e::f(); }",
        &m("p::q"),
    );
    assert!(
        refs.contains(&m("a::b::C")) && refs.contains(&m("a::d")),
        "{refs:?}"
    );
    assert!(
        refs.contains(&m("p::x::y")) && refs.contains(&m("e::f")),
        "{refs:?}"
    );
    let code = code_only("// use crate::nope;\nuse crate::yes;\n#[cfg(test)]\nmod tests {\n    use crate::hidden;\n}\n");
    assert!(code.contains("crate::yes") && !code.contains("nope") && !code.contains("hidden"));

    let mut g = BTreeMap::new();
    g.insert(m("a"), BTreeSet::from([m("b")]));
    g.insert(m("b"), BTreeSet::from([m("c")]));
    g.insert(m("c"), BTreeSet::from([m("a")]));
    assert_eq!(
        find_cycle(&g).map(|c| show(&c)),
        Some("a -> b -> c -> a".to_string())
    );
    g.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
}
