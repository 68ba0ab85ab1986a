//! The daemon's layers (README, "How it works"; `src/lib.rs`): every module
//! imports only from modules of a lower layer (the binary, `main.rs` and
//! `cli/`, sits on top), so a newcomer can read them
//! bottom-up and a new alert source cannot tangle them. Reads the sources.

use std::collections::BTreeSet;
use std::path::Path;

/// Layer of each top-level module (as in the table of `src/lib.rs`).
const LAYERS: &[(&str, u8)] = &[
    ("net", 0),
    ("time", 0),
    ("sys", 0),
    ("redact", 0),
    ("local", 0),
    ("dns", 0),
    ("statedir", 1),
    ("feed", 2),
    ("kernel", 3),
    ("history", 3),
    ("enrich", 4),
    ("hunt", 4),
    ("alert", 5),
    ("pipeline", 6),
    ("sink", 6),
    ("config", 7),
    ("daemon", 8),
    ("bench", 9),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// `crate::<module>` paths in the code (not in comments, not in tests).
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn imports_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if top == "main" || top == "lib" || top == "cli" {
            continue;
        }
        let own = layer(top).unwrap_or_else(|| panic!("{top} has no layer in LAYERS"));
        let text = std::fs::read_to_string(file).unwrap();
        for dep in imports(&text) {
            if dep == top {
                continue;
            }
            let theirs = layer(&dep).unwrap_or_else(|| panic!("{dep} has no layer in LAYERS"));
            checked += 1;
            if theirs >= own {
                upward.push(format!("{} imports crate::{dep}", rel.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: is the scan broken?"
    );
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_an_upward_import() {
    let text = "use crate::daemon::Daemon;\n// crate::config in a comment\n";
    assert_eq!(imports(text), BTreeSet::from(["daemon".to_owned()]));
}
