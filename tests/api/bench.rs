//! `aura bench` runs every scenario at tiny sizes, so it cannot rot unnoticed.

use serde_json::Value;

use crate::cli::AURA;
use crate::helpers::TestResult;

#[tokio::test]
async fn every_bench_scenario_runs_at_tiny_sizes_and_its_checks_hold() -> TestResult {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        tokio::process::Command::new(AURA)
            .args(["bench", "--json", "--runs", "1", "--subscribers", "5", "--rates", "20", "--secs", "0.5"])
            .args(["--idle-streams", "20", "--backlogs", "50", "--producers", "1,4", "--appends", "40"])
            .args(["--render-duration", "00:00:02", "--render-res", "480p"])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let report: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    assert!(out.status.success(), "checks: {}", report["checks"]);
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(0));
    let rows = report["rows"].as_array().ok_or("no rows")?;
    for scenario in ["fanout", "idle", "resume", "appends", "render"] {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["scenario"] == scenario).collect();
        assert!(!mine.is_empty(), "no {scenario} rows");
        assert!(mine.iter().all(|r| r["median"].as_f64().is_some_and(f64::is_finite)), "{mine:?}");
    }
    Ok(())
}
