//! Durable appends: Aura's group-committed append path with N concurrent producers, beside raw
//! SQLite inserts with the same pragmas (WAL, `synchronous=FULL`) and a batch size equal to N.
//! The ratio row is the goal's cell: Aura over raw SQLite with each transaction sent as one call.

use std::time::Instant;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Samples, Scenario};
use crate::config::Database;
use crate::domain::job::Stage;
use crate::engine::lifecycle::{self, JobHandle};
use crate::store::{Durability, Store};

pub async fn run(producers: usize, events: usize, samples: &mut Samples) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("aura-bench-appends-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, producers.max(1), events.max(producers), samples).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    dir: &std::path::Path,
    producers: usize,
    events: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let case = format!("{producers} producers");
    let (store, _feed) = Store::open(&*dir.join("aura.db").to_string_lossy(), Durability::Full).await?;
    let jobs = running_jobs(&store, producers).await?;
    let per = events / producers;
    let started = Instant::now();
    drive(jobs, per).await?;
    let aura = (per * producers) as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    samples.add(Scenario::Appends, &case, "Aura durable appends", "events/s", aura);

    // The fair baseline first: the whole transaction in one call to SQLite's thread, as Aura's
    // writer sends a group. Then, for reference, one call per statement (the baseline before #19).
    let raw =
        crate::store::bench::raw_insert_rate(&file_at(&dir.join("raw.db")), per * producers, producers, true)
            .await?;
    samples.add(Scenario::Appends, &case, &format!("raw SQLite, {producers} rows/txn"), "rows/s", raw);
    samples.add(Scenario::Appends, &case, "Aura / raw SQLite", "ratio", aura / raw);
    let stepwise = crate::store::bench::raw_insert_rate(
        &file_at(&dir.join("raw-stepwise.db")),
        per * producers,
        producers,
        false,
    )
    .await?;
    samples.add(Scenario::Appends, &case, "raw SQLite, one call per statement", "rows/s", stepwise);
    Ok(())
}

/// `n` jobs created and claimed on `store`, each with the handle its worker would append through
/// (fenced to its attempt when the store is shared, as a worker node's is).
pub(super) async fn running_jobs(store: &Store, n: usize) -> anyhow::Result<Vec<JobHandle>> {
    let spec = crate::domain::spec::JobSpec::from_value(&serde_json::json!({"brief": {"topic": "bench"}}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut jobs = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::now_v7();
        lifecycle::create(store, id, spec.clone(), crate::domain::job::LOCAL_OWNER.into()).await?;
        lifecycle::claim(store, id).await?;
        jobs.push(match store.node() {
            // A fresh job's first claim starts attempt 1.
            Some(_) => JobHandle::fenced(store.clone(), id, 1, CancellationToken::new()),
            None => JobHandle::new(store.clone(), id),
        });
    }
    Ok(jobs)
}

/// Every job's producer appends `per` progress events, one after another, all producers at once.
pub(super) async fn drive(jobs: Vec<JobHandle>, per: usize) -> anyhow::Result<()> {
    let producers = jobs.len().max(1);
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(jobs)
        .map(|job| async move {
            for i in 0..per {
                job.progress(Stage::Audio, (i % 100) as f64, String::new()).await?;
            }
            Ok(())
        })
        .buffer_unordered(producers)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The database file at `path`.
fn file_at(path: &std::path::Path) -> Database {
    Database::from(path.to_string_lossy().as_ref())
}
