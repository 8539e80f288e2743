//! Several nodes on one PostgreSQL (issue 16): durable appends with 1, 2, 4… nodes beside a raw
//! batched `INSERT` into the same server, and fan-out from an event appended on one node to
//! subscribers on one or more other, API-only nodes.
//!
//! Every run gets a scratch database of its own on the server `--postgres` names (created and
//! dropped here), so runs do not see each other's logs. In the appends cell a "node" is a
//! [`Store::open_node`] in this process — its own pool, writer, group commit, tail and
//! `NOTIFY`s, exactly what an `aura serve` node has, without HTTP in the way; the fan-out cell
//! starts real `aura serve` processes.

use std::time::Instant;

use super::client::{self, Fleet, Load};
use super::server::Target;
use super::{Checks, Samples, Scenario, appends};
use crate::config::Database;
use crate::store::bench::{Scratch, raw_insert_rate};
use crate::store::{Durability, Node, Store};

/// Lease time of the bench's nodes: longer than any run, since nothing renews them here.
const LEASE_SECS: u64 = 600;

/// One run of `nodes` nodes with `per_node` producers each, `events` appends in all, then the
/// raw baseline with as many rows per transaction as there are producers.
pub async fn appends(
    server: &str,
    nodes: usize,
    per_node: usize,
    events: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let scratch = Scratch::create(server).await?;
    let result = measure_appends(&scratch.url, nodes.max(1), per_node.max(1), events, samples).await;
    let dropped = scratch.drop_database().await;
    result?;
    Ok(dropped?)
}

async fn measure_appends(
    url: &str,
    nodes: usize,
    per_node: usize,
    events: usize,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let producers = nodes * per_node;
    let case = format!("{nodes} {} × {per_node} producers", if nodes == 1 { "node" } else { "nodes" });
    let mut stores = Vec::with_capacity(nodes);
    let mut jobs = Vec::with_capacity(producers);
    for k in 0..nodes {
        let node = Node::new(&format!("bench-node-{k}"), LEASE_SECS);
        // The feed (this node's commits and its tail's) is kept open and left unread: the run
        // is bounded, and a closed feed would be a node without streams.
        let (store, feed) = Store::open_node(url, Durability::Full, node).await?;
        jobs.extend(appends::running_jobs(&store, per_node).await?);
        stores.push((store, feed));
    }
    let per = events.max(producers) / producers;
    let started = Instant::now();
    let driven = appends::drive(jobs, per).await;
    let aura = (per * producers) as f64 / started.elapsed().as_secs_f64();
    for (store, _) in &stores {
        store.close().await;
    }
    driven?;
    samples.add(Scenario::NodesAppends, &case, "Aura durable appends", "events/s", aura);
    let raw = raw_insert_rate(&Database::from(url), per * producers, producers, true).await?;
    samples.add(
        Scenario::NodesAppends,
        &case,
        &format!("raw PostgreSQL, {producers} rows/txn"),
        "rows/s",
        raw,
    );
    samples.add(Scenario::NodesAppends, &case, "Aura / raw PostgreSQL", "ratio", aura / raw);
    Ok(())
}

/// One fan-out run: jobs created on a publishing node, the subscribers spread over `api_nodes`
/// other nodes, all of them `aura serve` processes on one scratch database.
pub async fn fanout(
    server: &str,
    api_nodes: usize,
    load: Load,
    case: &str,
    samples: &mut Samples,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let scratch = Scratch::create(server).await?;
    let mut nodes = Vec::with_capacity(api_nodes + 1);
    let mut result = Ok(());
    for k in 0..=api_nodes.max(1) {
        let name = if k == 0 { "bench-publisher".to_owned() } else { format!("bench-api-{k}") };
        match Target::node(&scratch.url, &name).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok()
        && let [publisher, api @ ..] = nodes.as_slice()
    {
        let fleet = Fleet { scenario: Scenario::NodesFanout, publisher, api: api.iter().collect() };
        result = client::fanout(&fleet, load, case, samples, checks).await;
    }
    for node in nodes {
        node.stop().await;
    }
    let dropped = scratch.drop_database().await;
    result?;
    Ok(dropped?)
}
