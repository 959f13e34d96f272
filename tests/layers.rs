//! The layer rule of `src/` (see `docs/ARCHITECTURE.md`), checked on the
//! source text:
//!
//! - the protocol cores (`src/proto/`) and the wire format (`src/wire/`)
//!   use no runtime, socket, clock or thread: no `tokio`, `nng`,
//!   `Instant::now`, `SystemTime::now`, `std::net`, `spawn`, and nothing
//!   from `crate::driver`, `crate::transport` or `crate::api`;
//! - the wire format does not use the protocol cores either;
//! - the store (`src/store/`, the data dir) does disk I/O only: none of
//!   the above, and no protocol core;
//! - no two files of the crate import each other, directly or through
//!   others (no import cycle between files).
//!
//! Comments and `#[cfg(test)]` modules are not checked: tests may use a
//! clock to make inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file: lines before its `#[cfg(test)]`, without comments.
fn code(path: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| {
            let l = match l.find("//") {
                Some(at) if !l[..at].contains('"') => &l[..at],
                _ => l,
            };
            (i + 1, l.to_owned())
        })
        .collect()
}

/// Whether `word` occurs in `line` as a whole identifier path segment.
fn uses(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

const NO_IO: [&str; 9] = [
    "tokio",
    "nng",
    "Instant::now",
    "SystemTime::now",
    "std::net",
    "spawn",
    "crate::driver",
    "crate::transport",
    "crate::api",
];

fn violations(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for file in rust_files(&src().join(layer)) {
        for (n, line) in code(&file) {
            for word in forbidden {
                if uses(&line, word) {
                    let rel = file.strip_prefix(src()).unwrap().display();
                    out.push(format!("src/{rel}:{n}: uses `{word}`: {}", line.trim()));
                }
            }
        }
    }
    out
}

#[test]
fn protocol_cores_do_no_io() {
    let found = violations("proto", &NO_IO);
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

#[test]
fn wire_format_does_no_io_and_knows_no_core() {
    let mut forbidden = NO_IO.to_vec();
    forbidden.push("crate::proto");
    let found = violations("wire", &forbidden);
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

#[test]
fn store_touches_only_its_files() {
    // The store does disk I/O (synchronously, called by the drivers), and
    // nothing else: no runtime, socket, clock, or upper layer.
    let mut forbidden = NO_IO.to_vec();
    forbidden.push("crate::proto");
    let found = violations("store", &forbidden);
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

/// The file a `crate::a::b…` path names: `src/a/b.rs`, else `src/a.rs`.
fn file_of(path: &str) -> Option<PathBuf> {
    let mut parts = path.split("::").skip(1);
    let a = parts.next()?;
    if let Some(b) = parts.next() {
        let f = src().join(a).join(format!("{b}.rs"));
        if f.exists() {
            return Some(f);
        }
    }
    let f = src().join(format!("{a}.rs"));
    f.exists().then_some(f)
}

/// File → the files whose items it uses, for every file but `lib.rs` and
/// the `mod.rs` tables of contents.
fn import_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for file in rust_files(&src()) {
        let name = file.file_name().unwrap();
        if name == "lib.rs" || name == "mod.rs" || file.starts_with(src().join("bin")) {
            continue;
        }
        let mut deps = BTreeSet::new();
        for (_, line) in code(&file) {
            for (at, _) in line.match_indices("crate::") {
                let path: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if let Some(dep) = file_of(&path).filter(|d| *d != file) {
                    deps.insert(dep);
                }
            }
        }
        graph.insert(file, deps);
    }
    graph
}

#[test]
fn no_import_cycle_between_files() {
    let graph = import_graph();
    assert!(graph.len() > 20, "found only {} files", graph.len());
    // Depth-first search; a file met again while on the stack closes a cycle.
    fn visit(
        f: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(f) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == f) {
            let names: Vec<String> = stack[at..]
                .iter()
                .chain([f])
                .map(|p| p.strip_prefix(src()).unwrap().display().to_string())
                .collect();
            cycles.push(names.join(" -> "));
            return;
        }
        stack.push(f.clone());
        for dep in graph.get(f).into_iter().flatten() {
            visit(dep, graph, stack, done, cycles);
        }
        stack.pop();
        done.insert(f.clone());
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for f in graph.keys() {
        visit(f, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_what_it_forbids() {
    assert!(uses("use tokio::sync::mpsc;", "tokio"));
    assert!(uses("let t = std::time::Instant::now();", "Instant::now"));
    assert!(!uses("let tokio_like = 1;", "tokio"));
    assert!(!uses("fn respawn() {}", "spawn"));
    assert_eq!(
        file_of("crate::proto::inbox::Inbox"),
        Some(src().join("proto/inbox.rs"))
    );
    assert_eq!(file_of("crate::error::Error"), Some(src().join("error.rs")));
}
