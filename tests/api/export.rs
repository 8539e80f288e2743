//! `aura export` and `aura import` as users run them: the real binary against the database of a
//! real server, and a new server started on what the import wrote. The histories it serves must
//! be byte for byte the original's, its snapshots equal, and its next event id above every
//! imported one; an import that cannot be whole writes nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use uuid::Uuid;

use crate::cli::AURA;
use crate::helpers::{TestApp, TestResult, WAIT, small_job, spawn_app, spawn_app_in, spawn_app_with};

/// Runs `aura` with `args` and no inherited database settings; (exit code, stdout, stderr).
async fn aura(args: &[OsString]) -> TestResult<(i32, String, String)> {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(AURA)
            .args(args)
            .env_remove("AURA_DATABASE_URL")
            .env_remove("AURA_DATA_DIR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

fn args(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    items.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// The database options that name `app`'s database, as `aura check` takes them.
fn database_of(app: &TestApp) -> Vec<OsString> {
    let mut found = args(&[&"--data-dir", &app.dir.path().join("data")]);
    if let Some(url) = app.state.settings().database_url.clone() {
        found.extend(args(&[&"--database-url", &url]));
    }
    found
}

/// `aura export` of `app`'s database with `extra` options into `file`; its stderr.
async fn export(app: &TestApp, extra: &[&str], file: &Path) -> TestResult<String> {
    let mut all = args(&[&"export", &file]);
    all.extend(extra.iter().map(OsString::from));
    all.extend(database_of(app));
    let (code, _, err) = aura(&all).await?;
    if code != 0 {
        return Err(format!("aura export exited {code}: {err}").into());
    }
    Ok(err)
}

/// `aura import FILE` into the data folder `data_dir` (and the database `url`, if any).
async fn import(file: &Path, data_dir: &Path, url: Option<&str>) -> TestResult<(i32, String)> {
    let mut all = args(&[&"import", &file, &"--data-dir", &data_dir]);
    if let Some(url) = url {
        all.extend(args(&[&"--database-url", &url]));
    }
    let (code, _, err) = aura(&all).await?;
    Ok((code, err))
}

/// The lines of an export, parsed.
fn lines(file: &Path) -> TestResult<Vec<Value>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

/// Every page of a job's `/history` with `limit` events each, as the server sent its bytes.
async fn history_pages(app: &TestApp, job: Uuid, limit: u32) -> TestResult<Vec<bytes::Bytes>> {
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let url = app.url(&format!("/api/jobs/{job}/history?after={after}&limit={limit}"));
        let res = app.client.get(url).send().await?;
        if res.status() != 200 {
            return Err(format!("history answered {}", res.status()).into());
        }
        let body = res.bytes().await?;
        let page: Vec<Value> = serde_json::from_slice(&body)?;
        pages.push(body);
        match page.last().and_then(|e| e["id"].as_i64()) {
            Some(last) if page.len() == limit as usize => after = last,
            _ => return Ok(pages),
        }
    }
}

/// A job that ends at once: created, then cancelled while queued.
async fn cancelled_job(app: &TestApp, topic: &str) -> TestResult<Uuid> {
    let id = app.create_job(topic).await?;
    assert_eq!(app.cancel(id).await?, 202);
    Ok(id)
}

/// Checks the server `imported` against `original` for `jobs`: every history page byte for
/// byte, every snapshot, the job list; then that a new job's first id is above `highest`.
async fn same_as_original(original: &TestApp, imported: &TestApp, jobs: &[Uuid], highest: i64) -> TestResult {
    for &job in jobs {
        for limit in [2, 10_000] {
            let want = history_pages(original, job, limit).await?;
            let got = history_pages(imported, job, limit).await?;
            assert_eq!(got, want, "job {job}: /history pages of {limit}");
        }
        assert_eq!(imported.job(job).await?, original.job(job).await?, "job {job}: the snapshot");
    }
    let (_, list) = imported.get_json("/api/jobs").await?;
    let (_, original_list) = original.get_json("/api/jobs").await?;
    assert_eq!(list, original_list, "the job list");
    let new = imported.create_job("after the import").await?;
    let first = imported.history(new).await?.first().and_then(|e| e["id"].as_i64()).ok_or("no event")?;
    assert!(first > highest, "the new job's first id {first} is above every imported id ({highest})");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_serves_the_same_histories_byte_for_byte_and_gives_new_events_higher_ids() -> TestResult {
    let original = spawn_app_with(|c| c.workers = Some(1)).await?;
    let mut rendered = small_job("Exported \"whole\" — é, \u{2028} and all");
    rendered["brief"]["audience"] = Value::from("Archivists");
    let rendered = original.create(&rendered).await?;
    let cancelled = cancelled_job(&original, "cancelled while queued").await?;
    for job in [rendered, cancelled] {
        original.finished(job, Duration::from_secs(180)).await?;
    }
    assert_eq!(original.job(rendered).await?["status"], "Completed");
    assert_eq!(original.job(cancelled).await?["status"], "Cancelled");
    let jobs = [rendered, cancelled];

    // Exported while the server runs.
    let file = original.dir.path().join("all.ndjson");
    let said = export(&original, &[], &file).await?;
    assert!(said.contains("exported 2 jobs"), "{said}");
    let exported = lines(&file)?;
    let mut highest = 0;
    for line in &exported {
        let id = line["id"].as_i64().ok_or("no id")?;
        assert!(id > highest, "ids ascend: {id} after {highest}");
        highest = id;
    }
    for job in jobs {
        let history = original.history(job).await?;
        let of_job: Vec<Value> = exported
            .iter()
            .filter(|l| l["jobId"] == job.to_string())
            .map(|l| {
                let mut l = l.clone();
                l.as_object_mut().map(|o| o.remove("jobId"));
                l
            })
            .collect();
        assert_eq!(of_job, history, "job {job}: its lines are its history");
    }
    assert_eq!(
        exported.len(),
        original.history(rendered).await?.len() + original.history(cancelled).await?.len()
    );
    // `data` is the stored text itself, not a re-encoding of it.
    let text = std::fs::read_to_string(&file)?;
    let stored: String = if let Some(mut conn) = original.pg().await? {
        sqlx::query_scalar("SELECT data FROM events ORDER BY id LIMIT 1").fetch_one(&mut conn).await?
    } else {
        sqlx::query_scalar("SELECT data FROM events ORDER BY id LIMIT 1")
            .fetch_one(&mut original.sql().await?)
            .await?
    };
    assert!(text.lines().next().is_some_and(|l| l.contains(&format!("\"data\":{stored},"))), "{text}");

    // Into a new data folder (SQLite).
    let folder = tempfile::tempdir()?;
    let (code, said) = import(&file, &folder.path().join("data"), None).await?;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("imported 2 jobs"), "{said}");
    let imported = spawn_app_in(folder, |c| c.database_url = None).await?;
    same_as_original(&original, &imported, &jobs, highest).await?;
    imported.stop().await?;

    // Into a new PostgreSQL database.
    if std::env::var_os("AURA_TEST_POSTGRES_URL").is_some() {
        let url = crate::postgres::database().await?;
        let folder = tempfile::tempdir()?;
        let (code, said) = import(&file, &folder.path().join("data"), Some(&url)).await?;
        assert_eq!(code, 0, "{said}");
        let imported = spawn_app_in(folder, |c| c.database_url = Some(url)).await?;
        same_as_original(&original, &imported, &jobs, highest).await?;
        imported.stop().await?;
    } else {
        eprintln!("the PostgreSQL import is skipped: AURA_TEST_POSTGRES_URL is not set");
    }
    Ok(())
}

#[tokio::test]
async fn export_job_writes_that_job_only_and_before_keeps_the_jobs_created_earlier() -> TestResult {
    let app = spawn_app().await?;
    let early = cancelled_job(&app, "early").await?;
    let late = app.create_job("late, still queued").await?;
    let late_created = app.job(late).await?["createdAt"].as_str().ok_or("no createdAt")?.to_owned();
    let dir = app.dir.path();
    let job_of = |lines: &[Value]| -> Vec<String> {
        let mut jobs: Vec<String> =
            lines.iter().filter_map(|l| l["jobId"].as_str().map(String::from)).collect();
        jobs.dedup();
        jobs
    };

    let file = dir.join("one.ndjson");
    export(&app, &["--job", &early.to_string()], &file).await?;
    let one = lines(&file)?;
    assert_eq!(job_of(&one), [early.to_string()]);
    assert_eq!(one.len(), app.history(early).await?.len());

    // `-` is standard output: the same lines.
    let mut all = args(&[&"export", &"-", &"--job", &early.to_string()]);
    all.extend(database_of(&app));
    let (code, out, err) = aura(&all).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, std::fs::read_to_string(&file)?);

    let file = dir.join("before.ndjson");
    export(&app, &["--before", &late_created], &file).await?;
    assert_eq!(job_of(&lines(&file)?), [early.to_string()], "created strictly before the late job");
    let tomorrow = (time::OffsetDateTime::now_utc() + time::Duration::days(1)).date().to_string();
    export(&app, &["--before", &tomorrow], &file).await?;
    assert_eq!(job_of(&lines(&file)?), [early.to_string(), late.to_string()]);
    export(&app, &["--before", "2000-01-01"], &file).await?;
    assert_eq!(std::fs::read_to_string(&file)?, "", "nothing was created before 2000");

    // Refused: an unknown job, a date that is not one. No file is left behind.
    let refused = dir.join("refused.ndjson");
    for extra in [vec!["--job", &Uuid::new_v4().to_string()], vec!["--before", "last week"]] {
        let mut all = args(&[&"export", &refused]);
        all.extend(extra.iter().map(OsString::from));
        all.extend(database_of(&app));
        let (code, _, err) = aura(&all).await?;
        assert_ne!(code, 0, "{extra:?}");
        assert!(err.contains("no job") || err.contains("last week"), "{extra:?}: {err}");
        assert!(!refused.exists());
    }
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

/// An export of two cancelled jobs, and their ids.
async fn two_job_export(app: &TestApp) -> TestResult<(PathBuf, [Uuid; 2])> {
    let jobs = [cancelled_job(app, "one").await?, cancelled_job(app, "two").await?];
    let file = app.dir.path().join("two.ndjson");
    export(app, &[], &file).await?;
    Ok((file, jobs))
}

#[tokio::test]
async fn an_import_into_a_database_that_is_not_new_is_refused_and_changes_nothing() -> TestResult {
    let source = spawn_app().await?;
    let (file, _) = two_job_export(&source).await?;

    // A folder whose server made one job.
    let mut target = spawn_app_with(|c| c.database_url = None).await?;
    let own = target.create_job("already here").await?;
    let data = target.dir.path().join("data");
    // Not while its server runs: the data folder is locked.
    let (code, said) = import(&file, &data, None).await?;
    assert_ne!(code, 0);
    assert!(said.contains("another aura process"), "{said}");
    let before = target.table_counts().await?;
    let folder = target.keep_dir()?;
    target.stop().await?;
    let (code, said) = import(&file, &data, None).await?;
    assert_ne!(code, 0);
    assert!(said.contains("not empty"), "{said}");
    let target = spawn_app_in(folder, |c| c.database_url = None).await?;
    assert_eq!(target.table_counts().await?, before, "nothing was written");
    let (_, list) = target.get_json("/api/jobs").await?;
    assert_eq!(list["jobs"].as_array().map(|j| j.len()), Some(1));
    assert_eq!(list["jobs"][0]["jobId"], own.to_string());
    target.stop().await?;

    // A second import into the same new database is refused too.
    let folder = tempfile::tempdir()?;
    let data = folder.path().join("data");
    assert_eq!(import(&file, &data, None).await?.0, 0);
    let (code, said) = import(&file, &data, None).await?;
    assert_ne!(code, 0);
    assert!(said.contains("not empty"), "{said}");

    if std::env::var_os("AURA_TEST_POSTGRES_URL").is_some() {
        let url = crate::postgres::database().await?;
        assert_eq!(import(&file, &data, Some(&url)).await?.0, 0);
        let (code, said) = import(&file, &data, Some(&url)).await?;
        assert_ne!(code, 0);
        assert!(said.contains("not empty"), "{said}");
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_line_fails_the_import_naming_the_line_and_writes_nothing() -> TestResult {
    let source = spawn_app().await?;
    let (file, _) = two_job_export(&source).await?;
    let good = std::fs::read_to_string(&file)?;
    let good_lines: Vec<&str> = good.lines().collect();
    assert!(good_lines.len() >= 4, "two jobs, two events each: {good}");
    let with = |n: usize, replacement: Option<&str>| -> String {
        let mut lines: Vec<&str> = good_lines.clone();
        match replacement {
            Some(r) => lines[n - 1] = r,
            None => {
                lines.remove(n - 1);
            }
        }
        lines.iter().map(|l| format!("{l}\n")).collect()
    };
    let swapped = {
        let mut lines = good_lines.clone();
        lines.swap(1, 2);
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    let cases = [
        ("not JSON", with(3, Some(r#"{"id": 3, "oops"#)), "line 3"),
        ("an unknown field", with(2, Some(&good_lines[1].replacen('{', r#"{"extra":1,"#, 1))), "line 2"),
        ("ids out of order", swapped, "line 3"),
        ("a history without its first event", with(1, None), "line 1"),
    ];
    let folder = tempfile::tempdir()?;
    let data = folder.path().join("data");
    for (what, text, line) in cases {
        let broken = folder.path().join("broken.ndjson");
        std::fs::write(&broken, text)?;
        let (code, said) = import(&broken, &data, None).await?;
        assert_ne!(code, 0, "{what}");
        assert!(said.contains(line), "{what}: {said}");
    }
    // Nothing was written: the good file still finds the database new.
    let (code, said) = import(&file, &data, None).await?;
    assert_eq!(code, 0, "{said}");
    Ok(())
}

/// Waits until `job`'s history on `app` has a `warning` with `code`, and the job is `status`.
async fn continued(app: &TestApp, job: Uuid, code: &str, status: &str) -> TestResult {
    crate::helpers::eventually(WAIT, || async {
        let history = app.history(job).await?;
        let warned = history.iter().any(|e| e["type"] == "warning" && e["data"]["code"] == code);
        let now = app.job(job).await?["status"].clone();
        crate::helpers::holds(warned && now == status, || format!("{now} after {history:?}"))
    })
    .await
}

#[tokio::test]
async fn a_job_running_when_exported_continues_as_a_new_attempt_after_the_import() -> TestResult {
    use aura::engine::lifecycle;
    let source = spawn_app().await?;
    let running = source.create_job("running").await?;
    lifecycle::claim(source.state.store(), running).await?;
    let cancelling = source.create_job("cancelling").await?;
    lifecycle::claim(source.state.store(), cancelling).await?;
    assert_eq!(source.cancel(cancelling).await?, 202);
    assert_eq!(source.job(cancelling).await?["status"], "Cancelling");
    let file = source.dir.path().join("running.ndjson");
    export(&source, &[], &file).await?;

    // The one process of an SQLite folder knows at start that nothing runs them.
    let folder = tempfile::tempdir()?;
    assert_eq!(import(&file, &folder.path().join("data"), None).await?.0, 0);
    let imported = spawn_app_in(folder, |c| c.database_url = None).await?;
    continued(&imported, running, "engine-restarted", "Running").await?;
    assert_eq!(imported.job(running).await?["attempt"], 2);
    assert_eq!(imported.job(cancelling).await?["status"], "Cancelled");
    imported.stop().await?;

    // On PostgreSQL their leases have expired: any node continues them.
    if std::env::var_os("AURA_TEST_POSTGRES_URL").is_some() {
        let url = crate::postgres::database().await?;
        let folder = tempfile::tempdir()?;
        assert_eq!(import(&file, &folder.path().join("data"), Some(&url)).await?.0, 0);
        let imported = spawn_app_in(folder, |c| c.database_url = Some(url)).await?;
        continued(&imported, running, "node-lost", "Running").await?;
        assert_eq!(imported.job(running).await?["attempt"], 2);
        crate::helpers::eventually(WAIT, || async {
            let now = imported.job(cancelling).await?["status"].clone();
            crate::helpers::holds(now == "Cancelled", || format!("{now}"))
        })
        .await?;
        imported.stop().await?;
    }
    Ok(())
}

/// An export's sink that deletes a job through the API when the export writes its first line,
/// while the export is still reading.
struct DeletesOnFirstLine {
    written: Vec<u8>,
    delete: Option<Box<dyn FnOnce() -> TestResult<u16> + Send>>,
    answered: Option<u16>,
}

impl std::io::Write for DeletesOnFirstLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(delete) = self.delete.take() {
            self.answered = Some(delete().map_err(|e| std::io::Error::other(e.to_string()))?);
        }
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_during_an_export_is_written_whole_as_it_was_when_the_export_began() -> TestResult {
    use aura::domain::job::Stage;
    use aura::engine::lifecycle::{self, JobHandle};
    use aura::store::export::{Selection, export};
    let app = spawn_app().await?;
    // The first job's two events lie on both sides of the export's first page (1000 events).
    let deleted = app.create_job("deleted while exported").await?;
    let busy = app.create_job("busy").await?;
    lifecycle::claim(app.state.store(), busy).await?;
    let job = JobHandle::new(app.state.store().clone(), busy);
    job.start_stage(Stage::Script).await?;
    for i in 0..1000 {
        job.progress(Stage::Script, f64::from(i) / 10.0, format!("step {i}")).await?;
    }
    assert_eq!(app.cancel(deleted).await?, 202);
    let history = app.history(deleted).await?;
    assert!(history.last().and_then(|e| e["id"].as_i64()).is_some_and(|id| id > 1000), "{history:?}");

    let (client, url, runtime) =
        (app.client.clone(), app.url(&format!("/api/jobs/{deleted}")), tokio::runtime::Handle::current());
    let mut sink = DeletesOnFirstLine {
        written: Vec::new(),
        delete: Some(Box::new(move || {
            tokio::task::block_in_place(|| {
                runtime.block_on(async { Ok(client.delete(url).send().await?.status().as_u16()) })
            })
        })),
        answered: None,
    };
    let exported = export(app.state.store(), &Selection::All, &mut sink).await?;
    assert_eq!(sink.answered, Some(204), "the job was deleted during the export");
    assert_eq!(app.get_json(&format!("/api/jobs/{deleted}")).await?.0, 404);
    assert_eq!(exported.jobs, 2);
    let text = String::from_utf8(sink.written)?;
    let lines: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let of_deleted: Vec<Value> = lines
        .into_iter()
        .filter(|l| l["jobId"] == deleted.to_string())
        .map(|mut l| {
            l.as_object_mut().map(|o| o.remove("jobId"));
            l
        })
        .collect();
    assert_eq!(of_deleted, history, "its whole history, as it was");
    Ok(())
}
