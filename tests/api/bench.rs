//! `aura bench` runs every scenario at tiny sizes, so it cannot rot unnoticed.

use serde_json::Value;

use crate::cli::AURA;
use crate::helpers::TestResult;

/// `aura bench --json --runs 1` with `args` (split at spaces): its report, once it exited with
/// success and no failed check.
async fn bench(args: &str) -> TestResult<Value> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        tokio::process::Command::new(AURA)
            .args(["bench", "--json", "--runs", "1"])
            .args(args.split_whitespace())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let report: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    assert!(out.status.success(), "checks: {}", report["checks"]);
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(0));
    Ok(report)
}

#[tokio::test]
async fn every_bench_scenario_runs_at_tiny_sizes_and_its_checks_hold() -> TestResult {
    let report = bench(
        "--subscribers 5 --rates 20 --secs 0.5 --idle-streams 20 --backlogs 50 --producers 1,4 \
         --appends 40 --render-duration 00:00:02 --render-res 480p",
    )
    .await?;
    let rows = report["rows"].as_array().ok_or("no rows")?;
    for scenario in ["fanout", "idle", "resume", "appends", "render"] {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == scenario).collect();
        assert!(!mine.is_empty(), "no {scenario} rows");
        assert!(mine.iter().all(|r| r["median"].as_f64().is_some_and(f64::is_finite)), "{mine:?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_postgres_bench_scenarios_run_at_tiny_sizes_on_a_real_server_and_their_checks_hold() -> TestResult
{
    let url = crate::postgres::database().await?;
    let report = bench(&format!(
        "--scenarios pg-appends,pg-fanout --postgres {url} --nodes 1,2 --producers-per-node 2 \
         --appends 40 --subscribers 4 --api-nodes 1,2 --rates 20 --secs 0.5"
    ))
    .await?;
    assert!(report["database"].as_str().is_some_and(|d| d.contains("fsync=")), "{}", report["database"]);
    let rows = report["rows"].as_array().ok_or("no rows")?;
    let cell = |scenario: &str, case: &str, metric: &str| {
        rows.iter()
            .find(|r| r["scenario"] == scenario && r["case"] == case && r["metric"] == metric)
            .and_then(|r| r["median"].as_f64())
            .filter(|m| m.is_finite() && *m > 0.0)
    };
    for case in ["1 node × 2 producers", "2 nodes × 2 producers"] {
        assert!(cell("pg-appends", case, "Aura / raw PostgreSQL").is_some(), "{case}: {rows:?}");
    }
    for case in ["4 subscribers on 1 API node, 20 events/s", "4 subscribers on 2 API nodes, 20 events/s"] {
        assert!(cell("pg-fanout", case, "delivery p50").is_some(), "{case}: {rows:?}");
        assert!(cell("pg-fanout", case, "deliveries/s").is_some(), "{case}: {rows:?}");
    }
    // Every run dropped its scratch database.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE 'aura_bench_%'")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(left, 0, "scratch databases left behind");
    Ok(())
}
