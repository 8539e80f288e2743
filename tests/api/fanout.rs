//! Many subscribers, concurrent producers, slow readers: every subscriber gets its exact id list.

use std::collections::HashMap;
use std::time::Duration;

use aura::domain::job::Stage;
use aura::engine::lifecycle::{self, JobHandle};
use uuid::Uuid;

use crate::helpers::{TestResult, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_subscribers_each_get_their_exact_ids_while_jobs_append_concurrently() -> TestResult {
    // A tiny memory of recent events and tiny hyper channels, so that slow subscribers really
    // fall behind and catch up from the table.
    let app = spawn_app_with(|c| c.stream_buffer = 16).await?;
    let via_hyper = r#"aura_streams_served_total{via="hyper"}"#;
    let hyper_before = app.metric(via_hyper).await?;
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(app.create_job(&format!("fan-out {i}")).await?);
    }
    let app = std::sync::Arc::new(app);

    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut subscribers = Vec::new();
    // 200 per-job subscribers (40 per job) and 50 all-jobs subscribers; a third connect
    // mid-append, every fifth reads slowly.
    for n in 0..250usize {
        let app = app.clone();
        let job = jobs[n % 5];
        let mut go = go.subscribe();
        subscribers.push(tokio::spawn(async move {
            if n % 3 == 0 {
                let _ = go.recv().await;
                tokio::time::sleep(Duration::from_millis((n % 7) as u64 * 20)).await;
            }
            let path = if n < 200 { format!("/api/jobs/{job}/events") } else { "/api/events".to_owned() };
            // Every fourth through hyper (a reused connection), the rest on their own socket.
            let mut stream = if n % 4 == 1 {
                app.stream_on_reused_connection(&path).await?
            } else {
                app.stream(&path, &[]).await?
            };
            let mut got: Vec<(i64, Uuid)> = Vec::new();
            let mut terminals = 0;
            loop {
                let Some((id, kind, data)) =
                    tokio::time::timeout(Duration::from_secs(60), stream.next_event()).await??
                else {
                    break;
                };
                got.push((id, data["jobId"].as_str().ok_or("no jobId")?.parse()?));
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if kind == "job-cancelled" {
                    terminals += 1;
                    if n >= 200 && terminals == 5 {
                        break;
                    }
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((n, job, got))
        }));
    }
    // Give the early subscribers their first byte before producing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = go.send(());

    let mut producers = Vec::new();
    for &job in &jobs {
        let store = app.state.store().clone();
        producers.push(tokio::spawn(async move {
            lifecycle::claim(&store, job).await?;
            let handle = JobHandle::new(store, job);
            for i in 0..150 {
                handle.progress(Stage::ALL[i / 30], (i % 30) as f64 * 3.0, format!("p{i}")).await?;
            }
            handle.cancelled(Some(Stage::Render)).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for p in producers {
        p.await??;
    }

    let mut expected: HashMap<Uuid, Vec<i64>> = HashMap::new();
    let mut everything = Vec::new();
    for &job in &jobs {
        let ids = app.sql_event_ids(job).await?;
        everything.extend(ids.iter().map(|&id| (id, job)));
        expected.insert(job, ids);
    }
    everything.sort();
    for s in subscribers {
        let (n, job, got) = s.await??;
        if n < 200 {
            let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
            assert_eq!(&ids, &expected[&job], "per-job subscriber {n}");
        } else {
            assert_eq!(got, everything, "all-jobs subscriber {n}");
        }
    }
    // Both ways of serving a stream were exercised: 63 subscribers through hyper.
    assert!(
        app.metric(via_hyper).await? - hyper_before >= 63.0,
        "streams on reused connections went through hyper"
    );
    Ok(())
}
