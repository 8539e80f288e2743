//! The server a benchmark talks to: a fresh `aura serve` on 127.0.0.1 (API-only, limits lifted,
//! optionally with a backlog written beforehand), or a running one named by `--server`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::process::Child;
use uuid::Uuid;

use crate::store::{Durability, Store};

pub struct Target {
    pub base: String,
    /// The server's pid when it runs here (for CPU and memory readings).
    pub pid: Option<u32>,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Target {
    /// A running server, or a fresh local one whose log already holds `backlog` events.
    pub async fn fresh(remote: Option<&str>, backlog: usize) -> anyhow::Result<Target> {
        match remote {
            Some(base) => {
                Ok(Target { base: base.trim_end_matches('/').to_owned(), pid: None, child: None, dir: None })
            }
            None => Target::local(backlog, 0).await,
        }
    }

    /// A fresh server on 127.0.0.1 with `workers` render workers (0: API-only).
    pub async fn local(backlog: usize, workers: usize) -> anyhow::Result<Target> {
        let dir = scratch_dir()?;
        if backlog > 0 {
            prefill(&dir, backlog).await?;
        }
        Target::start(dir, workers, &[]).await
    }

    /// A fresh API-only node named `name` on the shared PostgreSQL database `database_url`.
    pub async fn node(database_url: &str, name: &str) -> anyhow::Result<Target> {
        let env = [("AURA_DATABASE_URL", database_url.to_owned()), ("AURA_NODE_NAME", name.to_owned())];
        Target::start(scratch_dir()?, 0, &env).await
    }

    /// Starts `aura serve` on a free loopback port with its data in `dir`, limits lifted, and
    /// waits until it answers.
    async fn start(dir: PathBuf, workers: usize, extra_env: &[(&str, String)]) -> anyhow::Result<Target> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let exe = std::env::current_exe().context("finding the aura binary")?;
        let args: Vec<OsString> = vec!["serve".into(), "--data-dir".into(), dir.clone().into()];
        let mut env = vec![
            ("AURA_ADDR", format!("127.0.0.1:{port}")),
            ("AURA_WORKERS", workers.to_string()),
            ("AURA_MAX_STREAMS", "1000000".to_owned()),
            ("AURA_MAX_STREAMS_PER_OWNER", "1000000".to_owned()),
            ("AURA_JOB_RATE", "1000000".to_owned()),
            // Only the idle cell's gzip case asks for it; every other request is plain.
            ("AURA_STREAM_COMPRESSION", "gzip".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        env.extend(extra_env.iter().cloned());
        let child = crate::engine::process::spawn_background(&exe, &args, &env)?;
        let pid = child.id();
        let base = format!("http://127.0.0.1:{port}");
        let target = Target { base, pid, child: Some(child), dir: Some(dir) };
        let http = reqwest::Client::new();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if http.get(format!("{}/api/health", target.base)).send().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if ready.is_err() {
            target.stop().await;
            bail!("the benchmark server did not start within 30 s");
        }
        Ok(target)
    }

    /// Stops a local server (SIGTERM, then kill after 10 s) and removes its folder.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh scratch folder for one server.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("aura-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).context("creating a scratch folder")?;
    Ok(dir)
}

/// Writes `n` job creations (one event each) straight into a fresh store, 64 at a time.
async fn prefill(dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let (store, _feed) = Store::open(&*dir.join("aura.db").to_string_lossy(), Durability::Full).await?;
    let spec = crate::domain::spec::JobSpec::from_value(&serde_json::json!({"brief": {"topic": "bench"}}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let results: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| {
            crate::engine::lifecycle::create(
                &store,
                Uuid::now_v7(),
                spec.clone(),
                crate::domain::job::LOCAL_OWNER.into(),
            )
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r?;
    }
    store.close().await;
    Ok(())
}
