//! The layers of `src/`, checked: imports point one way, and no two top-level modules import
//! each other, directly or around a circle; nor do any two files (a file may use what its
//! ancestors declare, as `super::` nests, and nothing else in a circle).
//!
//! Reads every `.rs` file under `src/`, takes the top-level module it belongs to (its folder, or
//! its file name at the root) and every `crate::<module>` it names, and compares them with the
//! table below. A module may use modules of a lower layer, and of its own layer as long as no
//! circle forms; never one of a higher layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::helpers::TestResult;

/// Each top-level module and its layer; lower numbers sit lower. `domain` uses nothing.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("backoff", 0),
    ("sync", 0),
    ("store", 1),
    ("objects", 1),
    ("config", 1),
    ("error", 2),
    ("lock", 2),
    ("telemetry", 2),
    ("access", 3),
    ("engine", 4),
    ("streaming", 4),
    ("webhooks", 4),
    ("http", 5),
    ("startup", 6),
    ("bench", 7),
    ("cli", 8),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The top-level modules `text` names as `crate::<name>` (in `use` lines and in paths), plus
/// those inside a grouped `use crate::{a, b::c}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        // `$crate::` in macros names our crate too; `xcrate::` would not.
        if text[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every top-level module and the top-level modules it references.
fn import_graph(src: &Path) -> TestResult<BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src)?;
        let first = relative.components().next().ok_or("empty path")?.as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        let refs = graph.entry(module.clone()).or_default();
        for target in crate_references(&text) {
            if target != module {
                refs.insert(target);
            }
        }
    }
    Ok(graph)
}

/// What is wrong with `graph`: a module outside the table, an import that goes up a layer, a
/// circle between top-level modules.
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (module, refs) in graph {
        let Some(own) = layer(module) else {
            problems.push(format!("src/{module} is not in the LAYERS table of tests/api/layers.rs"));
            continue;
        };
        for target in refs {
            match layer(target) {
                None => problems.push(format!("{module} uses crate::{target}, which is not in LAYERS")),
                Some(l) if l > own => problems
                    .push(format!("{module} (layer {own}) imports {target} (layer {l}), a higher layer")),
                Some(_) => {}
            }
        }
    }
    // Circles: a depth-first search that reports any edge back to a module on the current path.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        problems: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node);
            problems.push(format!("import circle: {}", circle.join(" → ")));
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, problems);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, graph, &mut Vec::new(), &mut done, &mut problems);
    }
    problems
}

#[test]
fn imports_point_down_the_layers_and_no_modules_import_each_other_in_a_circle() -> TestResult {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src)?;
    assert!(graph.contains_key("domain") && graph.contains_key("http"), "the walk found the tree");
    let problems = violations(&graph);
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
    Ok(())
}

#[test]
fn the_check_sees_a_back_import_and_a_circle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            g.entry((*from).to_owned()).or_default().insert((*to).to_owned());
            g.entry((*to).to_owned()).or_default();
        }
        g
    };
    assert!(violations(&graph(&[("http", "store"), ("store", "domain")])).is_empty());
    let up = violations(&graph(&[("domain", "http")]));
    assert!(up.iter().any(|p| p.contains("higher layer")), "{up:?}");
    let circle = violations(&graph(&[("engine", "streaming"), ("streaming", "engine")]));
    assert!(circle.iter().any(|p| p.contains("import circle")), "{circle:?}");
    assert_eq!(
        crate_references("use crate::{domain::job, store};\nlet x = crate::http::router();\n$crate::sync"),
        ["domain", "http", "store", "sync"].into_iter().map(String::from).collect()
    );
}

/// The module a file under `src/` is (`store/sqlite/writer.rs` is `store::sqlite::writer`,
/// `store/mod.rs` is `store`); `None` for the crate roots.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> =
        relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    if parts.is_empty() || parts == ["lib"] || parts == ["main"] { None } else { Some(parts.join("::")) }
}

/// The paths a `use` tree or a path names, from just after its `prefix::`: `{a, b::{c, d}}`
/// gives `prefix::a`, `prefix::b::c`, `prefix::b::d`; `x::y::Z` gives `prefix::x::y::Z`.
fn expand(prefix: &[String], rest: &str) -> Vec<Vec<String>> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let (mut items, mut current, mut depth) = (Vec::new(), String::new(), 0usize);
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        items.push(current);
        return items
            .iter()
            .map(|item| item.trim())
            .filter(|item| item.starts_with(|c: char| c.is_alphabetic() || c == '_'))
            .flat_map(|item| expand(prefix, item))
            .collect();
    }
    let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    if word.is_empty() {
        return vec![prefix.to_vec()];
    }
    let mut path = prefix.to_vec();
    path.push(word.clone());
    match rest[word.len()..].strip_prefix("::") {
        Some(more) => expand(&path, more),
        None => vec![path],
    }
}

/// The module files `module`'s code (`text`) names: through `crate::`, `super::`, `self::`, or
/// a child module's name; each path taken to the longest module that exists.
fn file_references(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let me: Vec<String> = module.split("::").map(String::from).collect();
    let code = code_only(text);
    let mut found = BTreeSet::new();
    let mut resolve = |paths: Vec<Vec<String>>| {
        for path in paths {
            if let Some(k) = (1..=path.len()).rev().find(|k| modules.contains(&path[..*k].join("::"))) {
                found.insert(path[..k].join("::"));
            }
        }
    };
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let word_start = i;
        while i < code.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i == word_start {
            i += 1;
            continue;
        }
        let before = code[..word_start].chars().next_back();
        // `a::crate` is no path of ours; `$crate::` (in a macro) is.
        if before.is_some_and(|c| c == ':' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let word = &code[word_start..i];
        let mut base: Vec<String> = match word {
            "crate" => Vec::new(),
            "self" => me.clone(),
            "super" => me[..me.len() - 1].to_vec(),
            child if modules.contains(&format!("{module}::{child}")) => {
                let mut base = me.clone();
                base.push(child.to_owned());
                base
            }
            _ => continue,
        };
        let mut rest = &code[i..];
        while let Some(more) = rest.strip_prefix("::super") {
            base.pop();
            rest = more;
        }
        if let Some(more) = rest.strip_prefix("::") {
            resolve(expand(&base, more));
        }
    }
    found
}

/// Every file-level module and the module files it names, leaving out its own ancestors: a file
/// using what its parents declare (`super::StoreError`) is how modules nest, not an import
/// between files.
fn file_graph(src: &Path) -> TestResult<BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let named: Vec<(String, PathBuf)> =
        files.into_iter().filter_map(|f| Some((module_of(f.strip_prefix(src).ok()?)?, f))).collect();
    let modules: BTreeSet<String> = named.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &named {
        let text = std::fs::read_to_string(file)?;
        let refs = file_references(module, &text, &modules)
            .into_iter()
            .filter(|r| r != module && !module.starts_with(&format!("{r}::")))
            .collect();
        graph.insert(module.clone(), refs);
    }
    Ok(graph)
}

/// The circles of `graph`, each named once (its strongly connected parts of two or more).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two nodes are on one circle when each reaches the other.
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(node) = todo.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|k| (k, reach(k))).collect();
    let mut placed = BTreeSet::new();
    let mut found = Vec::new();
    for (node, reached) in &reaches {
        if placed.contains(*node) || !reached.contains(*node) {
            continue;
        }
        let part: Vec<String> = reached
            .iter()
            .filter(|other| reaches.get(other).is_some_and(|r| r.contains(*node)))
            .cloned()
            .collect();
        placed.extend(part.iter().cloned());
        found.push(part);
    }
    found
}

#[test]
fn no_two_files_import_each_other_directly_or_around_a_circle() -> TestResult {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = file_graph(&src)?;
    assert!(
        graph.get("store::sqlite::writer").is_some_and(|r| r.contains("store::writer")),
        "the walk sees a sibling's `super::writer`: {:?}",
        graph.get("store::sqlite::writer")
    );
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "files importing each other around a circle:\n{}",
        found.iter().map(|c| c.join(" ↔ ")).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

#[test]
fn the_file_check_resolves_every_kind_of_path_and_sees_a_circle() {
    let modules: BTreeSet<String> = [
        "store",
        "store::writer",
        "store::webhooks",
        "store::sqlite",
        "store::sqlite::reads",
        "domain::event",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let text = "use super::{writer::Work, sqlite::reads};\nuse crate::domain::event::{self, StoredEvent};\n\
                let x = self::super::super::domain::event::f(); // crate::store::sqlite in a comment\n\
                let s = \"crate::store::sqlite\"; $crate::store::f();";
    let refs = file_references("store::webhooks", text, &modules);
    let expected = ["domain::event", "store", "store::sqlite::reads", "store::writer"];
    assert_eq!(refs, expected.into_iter().map(String::from).collect());
    let children = file_references("store", "pub use writer::Applied;\nsqlite::open();", &modules);
    assert_eq!(children, ["store::sqlite", "store::writer"].into_iter().map(String::from).collect());

    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            g.entry((*from).to_owned()).or_default().insert((*to).to_owned());
            g.entry((*to).to_owned()).or_default();
        }
        g
    };
    assert!(circles(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    assert_eq!(circles(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])), [["a", "b", "c"]]);
}

/// `text` with comments, string and char literals blanked out (line breaks kept).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while j < chars.len() && chars[j..].iter().take(close.len()).ne(close.iter()) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal (`'a'`, `'\n'`); a lifetime (`'a`) has no closing quote.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else if c.is_alphanumeric() || c == '_' {
            // A whole word at once, so that `r` or a quote inside one is not taken for a literal.
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                out.push(chars[i]);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Only the store (`src/store/`) and the settings that tell the two databases apart
/// (`src/config.rs`) may know which one runs. Everywhere else, no identifier or path names one:
/// not `sqlite`/`postgres` in any case, not `pg_` at the start of a word, not a `Pg` type.
///
/// Decided: the check reads code, not prose. Comments and string literals are left out, so a
/// doc may say what happens "with PostgreSQL", a log line may name it, and a CLI flag keeps its
/// published spelling (`--postgres`) through `#[arg(long = "postgres")]`; what the crate's code
/// calls, imports or matches on may not. `pg` inside a word (`killpg`, `getpgid`, `upgrade`) is
/// no mention.
#[test]
fn no_code_outside_the_store_and_config_names_a_database() -> TestResult {
    /// Whether the identifier `word` names a database.
    fn names_a_database(word: &str) -> bool {
        let lower = word.to_ascii_lowercase();
        lower.contains("postgres")
            || lower.contains("sqlite")
            || lower.starts_with("pg_")
            || lower.contains("_pg_")
            || word.match_indices("Pg").any(|(i, _)| {
                word[..i].chars().next_back().is_none_or(|c| !c.is_ascii_uppercase())
                    && word[i + 2..].chars().next().is_none_or(|c| !c.is_ascii_lowercase() || i == 0)
            })
    }
    /// Every mention in `text`, as `line: word`.
    fn mentions(text: &str) -> Vec<String> {
        let code = code_only(text);
        let mut found = Vec::new();
        for (n, line) in code.lines().enumerate() {
            for word in line.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if names_a_database(word) {
                    found.push(format!("{}: {word}", n + 1));
                }
            }
        }
        found
    }

    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut problems = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src)?;
        if relative.starts_with("store") || relative == Path::new("config.rs") {
            continue;
        }
        let shown = relative.display().to_string();
        let lower = shown.to_ascii_lowercase();
        if lower.contains("postgres") || lower.contains("sqlite") {
            problems.push(format!("src/{shown}: its path names a database"));
        }
        let text = std::fs::read_to_string(&file)?;
        problems.extend(mentions(&text).into_iter().map(|m| format!("src/{shown}:{m}")));
    }
    assert!(
        problems.is_empty(),
        "code outside src/store and src/config.rs names a database:\n{}",
        problems.join("\n")
    );

    // The check itself: code is seen, prose and literals are not.
    let sample = "use crate::store::postgres::PgLog; // with PostgreSQL\nlet x = pg_notify();\n\
                  let s = \"sqlite:\"; let r = r#\"Postgres\"#; killpg(upgrade, 'p');\nstruct SqliteLog;\n";
    assert_eq!(mentions(sample), ["1: postgres", "1: PgLog", "2: pg_notify", "4: SqliteLog"]);
    Ok(())
}

/// Every `std::sync` lock in `src/` is taken through `sync` (its one policy for poison), and
/// `clippy.toml` still forbids the direct calls. Clippy's `disallowed-methods` is the precise
/// guard (it knows types); running it from a test would mean a second build of the crate, so
/// this reads the text instead: in a file that names std's `Mutex` (or `RwLock`), any `.lock()`
/// (or `.read()`/`.write()`) that is not awaited (tokio's are) is a direct call.
#[test]
fn every_std_lock_goes_through_sync() -> TestResult {
    const FORBIDDEN: [&str; 3] =
        ["std::sync::Mutex::lock", "std::sync::RwLock::read", "std::sync::RwLock::write"];
    /// Whether `text` names std's `kind`: `use std::sync::{.., kind, ..}` or `std::sync::kind`.
    fn names_std(text: &str, kind: &str) -> bool {
        let is_kind = |s: &str| s.trim().trim_start_matches("self::") == kind;
        text.contains(&format!("std::sync::{kind}"))
            || text.match_indices("use std::sync::{").any(|(i, m)| {
                let group = &text[i + m.len()..];
                group[..group.find('}').unwrap_or(group.len())].split(',').any(is_kind)
            })
    }
    /// The lines of `text` (comments left out) that call one of `methods` without `.await`.
    fn direct_calls(text: &str, methods: &[&str]) -> Vec<String> {
        let code: String = text
            .lines()
            .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let mut found = Vec::new();
        for method in methods {
            for (i, m) in code.match_indices(method) {
                if !code[i + m.len()..].trim_start().starts_with(".await") {
                    let line = code[..i].matches('\n').count() + 1;
                    found.push(format!("{line}: {}", code.lines().nth(line - 1).unwrap_or("").trim()));
                }
            }
        }
        found
    }
    fn offences(text: &str) -> Vec<String> {
        let mut methods = Vec::new();
        if names_std(text, "Mutex") {
            methods.push(".lock()");
        }
        if names_std(text, "RwLock") {
            methods.extend([".read()", ".write()"]);
        }
        direct_calls(text, &methods)
    }

    // The check sees a direct call, and leaves tokio's awaited locks and `sync`'s calls alone.
    let sample = "use std::sync::{Arc, Mutex};\nlet a = m.lock().unwrap();\nlet b = t.lock()\n    .await;\n// m.lock()\nlet c = sync::lock(&m, \"m\")?;";
    assert_eq!(offences(sample), ["2: let a = m.lock().unwrap();"]);
    assert_eq!(offences("use std::sync::RwLock;\nlet r = rw.read();"), ["2: let r = rw.read();"]);
    assert!(offences("use tokio::sync::Mutex;\nlet g = m.lock().await;").is_empty());

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files)?;
    assert!(files.len() > 20, "the walk found the tree");
    let mut problems = Vec::new();
    for file in files {
        if file.ends_with("src/sync.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        for offence in offences(&text) {
            problems.push(format!("{}:{offence}", file.strip_prefix(root)?.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "std locks taken outside src/sync.rs (use sync::lock):\n{}",
        problems.join("\n")
    );

    let clippy = std::fs::read_to_string(root.join("clippy.toml"))?;
    for path in FORBIDDEN {
        assert!(clippy.contains(&format!("path = \"{path}\"")), "clippy.toml no longer forbids {path}");
    }
    Ok(())
}
