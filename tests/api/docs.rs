//! `docs/API.md` is the contract in the repository's own words; these tests keep it honest.
//!
//! The rules, for whoever adds a route, setting, event type or problem type:
//! - every route, written `METHOD /path` (path parameters in braces, any name), is named in
//!   `docs/API.md`, and every `METHOD /path` written there exists. Routes come from the served
//!   OpenAPI document and from the `.route("…", get(…).post(…))` calls in `src/`;
//! - every route under `/api/` or `/metrics` is in the OpenAPI document (`/api/openapi.json`
//!   itself excepted);
//! - every `AURA_*` name in `src/**/*.rs` appears in `docs/API.md`, and every `AURA_*` name there
//!   appears in `src/`;
//! - the first column of the "Event types" table is exactly the event types of the OpenAPI
//!   document, and the first column of the "Errors" table exactly the problem kinds passed to
//!   `problem(…)` in `src/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::helpers::{TestResult, spawn_app};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn api_md() -> TestResult<String> {
    Ok(std::fs::read_to_string(root().join("docs/API.md"))?)
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> TestResult<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(sources(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            out.push((path, text));
        }
    }
    Ok(out)
}

/// `/api/jobs/{job_id}` and `/api/jobs/{jobId}` are the same route: `/api/jobs/{}`.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('{');
            }
            '}' => {
                in_param = false;
                out.push('}');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// The `AURA_…` names in `text`.
fn settings_in(text: &str) -> BTreeSet<String> {
    text.match_indices("AURA_")
        .filter(|(i, _)| !text[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .filter(|name: &String| name.len() > "AURA_".len())
        .collect()
}

/// Every `METHOD /path` written in `text` (query strings dropped).
fn routes_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for method in METHODS {
        let needle = format!("{method} /");
        for (i, _) in text.match_indices(&needle) {
            if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric()) {
                continue;
            }
            let path: String = text[i + method.len() + 1..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '`' | '?' | ')' | ',' | '|' | '"' | '\''))
                .collect();
            out.insert(format!("{method} {}", normalize(&path)));
        }
    }
    out
}

/// The routes the router serves, from the `.route("path", method(handler)…)` calls in `src/`.
fn router_routes(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, text) in sources {
        for (i, _) in text.match_indices(".route(\"") {
            let rest = &text[i + ".route(\"".len()..];
            let Some(end) = rest.find('"') else { continue };
            let path = normalize(&rest[..end]);
            // The handlers run to the next `.route(`, `.layer(`, `.merge(` or the statement's end.
            let tail = &rest[end..];
            let stop = [".route(", ".layer(", ".merge(", ";"]
                .iter()
                .filter_map(|s| tail.find(s))
                .min()
                .unwrap_or(tail.len());
            let handlers = &tail[..stop];
            for method in METHODS {
                let call = format!("{}(", method.to_lowercase());
                let named = handlers.match_indices(&call).any(|(j, _)| {
                    !handlers[..j].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                });
                if named {
                    out.insert(format!("{method} {path}"));
                }
            }
        }
    }
    out
}

/// Every operation of the OpenAPI document, as `METHOD /path`.
fn openapi_routes(doc: &Value) -> TestResult<BTreeSet<String>> {
    let paths = doc["paths"].as_object().ok_or("the document has no paths")?;
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().ok_or("a path item that is not an object")?.keys() {
            let upper = method.to_uppercase();
            if METHODS.contains(&upper.as_str()) {
                out.insert(format!("{upper} {}", normalize(path)));
            }
        }
    }
    Ok(out)
}

/// The first column (backticked) of the table under the heading that starts with `heading`.
fn table_keys(md: &str, heading: &str) -> TestResult<BTreeSet<String>> {
    let section = md
        .split("\n#")
        .find(|s| s.trim_start_matches('#').trim_start().starts_with(heading))
        .ok_or_else(|| format!("docs/API.md has no heading {heading:?}"))?;
    Ok(section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect())
}

/// The problem kinds the code answers with: the kind literal of each `problem(status, "kind", …)`.
fn problem_kinds(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, text) in sources {
        for (i, _) in text.match_indices("problem(") {
            if text[..i].ends_with("fn ") {
                continue;
            }
            let args = &text[i + "problem(".len()..];
            let args = &args[..args.find(')').unwrap_or(args.len())];
            // The kind is the second argument, after the status.
            let Some((_, rest)) = args.split_once(',') else { continue };
            let rest = rest.trim_start();
            let Some(literal) = rest.strip_prefix('"') else { continue };
            let kind: String = literal.chars().take_while(|c| *c != '"').collect();
            if !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                out.insert(kind);
            }
        }
    }
    out
}

fn missing<'a>(want: &'a BTreeSet<String>, have: &BTreeSet<String>) -> Vec<&'a String> {
    want.iter().filter(|w| !have.contains(*w)).collect()
}

#[tokio::test]
async fn every_route_in_the_code_is_in_api_md_and_every_route_there_exists() -> TestResult {
    let app = spawn_app().await?;
    let (status, doc) = app.get_json("/api/openapi.json").await?;
    assert_eq!(status, 200);
    let code = router_routes(&sources(&root().join("src"))?);
    let documented = openapi_routes(&doc)?;
    assert!(code.len() >= 15, "the router scan found too few routes: {code:?}");

    let mut all = code.clone();
    all.extend(documented.iter().cloned());
    let md = routes_in(&api_md()?);
    assert!(missing(&all, &md).is_empty(), "routes missing from docs/API.md: {:?}", missing(&all, &md));
    assert!(
        missing(&md, &all).is_empty(),
        "docs/API.md names routes that do not exist: {:?}",
        missing(&md, &all)
    );

    let api: BTreeSet<String> = code
        .iter()
        .filter(|r| r.contains(" /api/") || r.ends_with(" /metrics"))
        .filter(|r| !r.ends_with("/api/openapi.json"))
        .cloned()
        .collect();
    assert!(
        missing(&api, &documented).is_empty(),
        "routes missing from the OpenAPI document: {:?}",
        missing(&api, &documented)
    );
    let video = &doc["paths"]["/api/jobs/{job_id}/output"]["get"]["responses"]["200"]["content"];
    for mime in ["video/mp4", "video/webm", "video/x-matroska"] {
        assert_eq!(video[mime]["schema"]["contentMediaType"], mime, "the output route's {mime} body");
    }
    Ok(())
}

#[test]
fn every_aura_setting_in_the_code_is_in_api_md_and_every_one_there_exists() -> TestResult {
    let code: BTreeSet<String> =
        sources(&root().join("src"))?.iter().flat_map(|(_, text)| settings_in(text)).collect();
    let md = settings_in(&api_md()?);
    assert!(code.contains("AURA_ADDR") && code.contains("AURA_WORKERS"), "the scan found {code:?}");
    assert!(missing(&code, &md).is_empty(), "settings missing from docs/API.md: {:?}", missing(&code, &md));
    assert!(
        missing(&md, &code).is_empty(),
        "docs/API.md names settings the code lacks: {:?}",
        missing(&md, &code)
    );
    Ok(())
}

#[tokio::test]
async fn the_event_types_in_api_md_are_exactly_those_of_the_openapi_document() -> TestResult {
    let app = spawn_app().await?;
    let (_, doc) = app.get_json("/api/openapi.json").await?;
    let schemas = doc["components"]["schemas"].as_object().ok_or("no schemas")?;
    let refs = doc["components"]["schemas"]["EventData"]["oneOf"].as_array().ok_or("no EventData")?;
    let mut types = BTreeSet::new();
    for r in refs {
        let name = r["$ref"].as_str().and_then(|s| s.rsplit('/').next()).ok_or("a bad $ref")?;
        let description =
            schemas[name]["description"].as_str().ok_or("an event schema without description")?;
        // "`data` of a `step-progress` event": the type is the second backticked word.
        let kind = description.split('`').nth(3).ok_or("an unexpected description")?;
        assert_eq!(aura::http::openapi::event_schema_name(kind), Some(name));
        types.insert(kind.to_owned());
    }
    assert_eq!(types.len(), 8, "{types:?}");
    let md = table_keys(&api_md()?, "Event types")?;
    assert_eq!(md, types, "the Event types table of docs/API.md against the code");
    Ok(())
}

#[test]
fn the_problem_types_in_api_md_are_exactly_those_the_code_answers_with() -> TestResult {
    let kinds = problem_kinds(&sources(&root().join("src"))?);
    assert!(kinds.contains("validation") && kinds.contains("not-found"), "the scan found {kinds:?}");
    let md = table_keys(&api_md()?, "Errors")?;
    assert_eq!(md, kinds, "the Errors table of docs/API.md against the code");
    Ok(())
}

#[test]
fn the_checks_find_what_they_look_for() {
    assert_eq!(normalize("/api/jobs/{job_id}/events"), "/api/jobs/{}/events");
    let text =
        "`GET /api/jobs/{jobId}?after=` and POST /api/session, not XGET /x; AURA_ADDR, AURA_*, XAURA_NO";
    let routes: Vec<String> = routes_in(text).into_iter().collect();
    assert_eq!(routes, ["GET /api/jobs/{}", "POST /api/session"]);
    let settings: Vec<String> = settings_in(text).into_iter().collect();
    assert_eq!(settings, ["AURA_ADDR"]);
    let src = vec![(
        PathBuf::new(),
        "Router::new().route(\"/a/{id}\", get(x).delete(y)).route(\"/b\", post(z)); problem(s, \"gone\", t)"
            .to_owned(),
    )];
    let routes: Vec<String> = router_routes(&src).into_iter().collect();
    assert_eq!(routes, ["DELETE /a/{}", "GET /a/{}", "POST /b"]);
    assert_eq!(problem_kinds(&src).into_iter().collect::<Vec<_>>(), ["gone"]);
}

/// The paths the Dockerfile's build stage copies into the image (`COPY src… dst`, not
/// `--from`), as written.
fn dockerfile_copies(dockerfile: &str) -> Vec<String> {
    let build_stage =
        dockerfile.split("\nFROM ").find(|stage| stage.contains("cargo build")).unwrap_or_default();
    build_stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            parts[..parts.len().saturating_sub(1)]
                .iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every file or folder the build reads besides `src/`, relative to the repository: what
/// `include_str!`/`include_bytes!` name (resolved from the file that names them) and what
/// `sqlx::migrate!` and the offline query data need.
fn build_inputs(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let root = root();
    let mut inputs = BTreeSet::from([".sqlx".to_owned(), "migrations".to_owned()]);
    for (path, text) in sources {
        for mac in ["include_str!(", "include_bytes!("] {
            for (i, _) in text.match_indices(mac) {
                // The first string literal after the macro: the path, or the fixed part of a `concat!`.
                let Some(open) = text[i..].find('"') else { continue };
                let rest = &text[i + open + 1..];
                let Some(close) = rest.find('"') else { continue };
                let literal = &rest[..close];
                let resolved = path.parent().unwrap_or(&root).join(literal);
                let mut parts: Vec<String> = Vec::new();
                for c in resolved.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            parts.pop();
                        }
                        std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                        _ => parts.clear(),
                    }
                }
                let root_parts =
                    root.components().filter(|c| matches!(c, std::path::Component::Normal(_))).count();
                inputs.insert(parts[root_parts.min(parts.len())..].join("/"));
            }
        }
    }
    inputs
}

#[test]
fn the_dockerfile_copies_everything_the_build_embeds() -> TestResult {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    let copied = dockerfile_copies(&dockerfile);
    assert!(copied.iter().any(|c| c == "src"), "the build stage copies src: {copied:?}");
    let inputs = build_inputs(&sources(&root().join("src"))?);
    assert!(inputs.iter().any(|i| i.starts_with("assets")), "the UI's assets are found: {inputs:?}");
    let missing: Vec<&String> = inputs
        .iter()
        .filter(|input| !copied.iter().any(|c| *input == c || input.starts_with(&format!("{c}/"))))
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile's build stage does not copy {missing:?} (it copies {copied:?})"
    );
    Ok(())
}

/// The metric names the code records: the first argument of each `counter!`, `gauge!` or
/// `histogram!` (benchmarks aside).
fn recorded_metrics(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (path, text) in sources {
        if path.components().any(|c| c.as_os_str() == "bench") {
            continue;
        }
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (i, _) in text.match_indices(macro_name) {
                let rest = text[i + macro_name.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn every_metric_is_described_labelled_with_its_node_and_listed_in_api_md() -> TestResult {
    let recorded = recorded_metrics(&sources(&root().join("src"))?);
    assert!(
        recorded.contains("aura_jobs") && recorded.contains("aura_stage_seconds"),
        "the scan found {recorded:?}"
    );
    let described: BTreeSet<String> =
        aura::telemetry::catalog::METRICS.iter().map(|m| m.name.to_owned()).collect();
    assert_eq!(described, recorded, "the catalog (src/telemetry/catalog.rs) against the code");
    let listed = table_keys(&api_md()?, "Metrics")?;
    assert_eq!(listed, recorded, "the Metrics table of docs/API.md against the code");

    let app = spawn_app().await?;
    app.create_job("measured").await?;
    let text = app.client.get(app.url("/metrics")).send().await?.text().await?;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).ok_or("a TYPE line without a name")?;
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line:\n{text}");
    }
    let samples: Vec<&str> = text.lines().filter(|l| l.starts_with("aura_")).collect();
    assert!(!samples.is_empty(), "{text}");
    for sample in samples {
        // The node's name is the first application's of the process (one recorder each).
        assert!(sample.contains("node=\""), "a series without its node: {sample}");
    }
    assert!(
        text.contains("aura_stage_seconds_bucket") || !text.contains("aura_stage_seconds"),
        "stages are a histogram"
    );
    Ok(())
}
