//! Tokens and browser sessions in PostgreSQL: what one node (or `aura token`) does to them holds
//! on every other node sharing the database, within about a second, and a node that cannot
//! reach the database refuses callers rather than let them in.
//!
//! A "node" is a real server on its own port and data folder, or where a test needs to watch
//! the credentials alone, a real `Auth` loaded from its own settings the way `aura serve` loads
//! it; both on a real PostgreSQL (see `postgres`). Tokens are made by the real `aura` binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use aura::access::auth::{Auth, Caller, Role};
use aura::config::ServeConfig;
use aura::error::AppError;
use aura::store::{CommitFeed, Durability, Store};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::Command;

use crate::cli::AURA;
use crate::helpers::{TestApp, TestResult, WAIT, eventually, holds, spawn_app_with};
use crate::postgres::{OwnCluster, database};

/// How long a change made on one node may take to show on another (API.md: at once for a new
/// credential; about a second for a revoked or ended one), with room for a slow machine.
const PROPAGATION: Duration = Duration::from_secs(3);

/// One node's credentials, as `aura serve --database-url URL` loads them, with a data folder of
/// its own (which must stay free of tokens files).
/// The store is kept with the folder: `access` reads credentials on its connections.
async fn node(url: &str) -> TestResult<(Auth, (TempDir, Store, CommitFeed))> {
    let dir = tempfile::tempdir()?;
    let mut settings = ServeConfig::for_data_dir(dir.path().join("data"));
    settings.database_url = Some(url.to_owned());
    let (store, feed) =
        tokio::time::timeout(WAIT, Store::open(settings.database(), Durability::Full)).await??;
    let auth = tokio::time::timeout(WAIT, Auth::load(&settings, store.credentials())).await??;
    Ok((auth, (dir, store, feed)))
}

/// Runs `aura token ARGS` against the database at `url`; its exit code, stdout and stderr.
async fn aura_token(url: &str, args: &[&str]) -> TestResult<(i32, String, String)> {
    let dir = tempfile::tempdir()?;
    let out = tokio::time::timeout(
        WAIT,
        Command::new(AURA)
            .arg("token")
            .args(args)
            .env("AURA_DATABASE_URL", url)
            .env("AURA_DATA_DIR", dir.path())
            .env_remove("AURA_TOKENS_FILE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(std::fs::read_dir(dir.path())?.next().is_none(), "aura token wrote a file with a database URL");
    Ok((out.status.code().unwrap_or(-1), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

/// `aura token create NAME [--admin]`: the token it prints.
async fn create(url: &str, name: &str, admin: bool) -> TestResult<String> {
    let mut args = vec!["create", name];
    if admin {
        args.push("--admin");
    }
    let (code, out, err) = aura_token(url, &args).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, format!("aura: token {name:?} created; it is shown only this once\n"));
    let token = out.strip_suffix('\n').unwrap_or_default().to_owned();
    assert!(token.starts_with("aura_") && !token.contains('\n'), "{out:?}");
    Ok(token)
}

fn bearer(token: &str) -> TestResult<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}"))?);
    Ok(headers)
}

fn cookie(id: &str) -> TestResult<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, HeaderValue::from_str(&format!("theme=dark; aura_session={id}"))?);
    Ok(headers)
}

fn who(result: Result<Caller, AppError>) -> Result<(String, Role), StatusCode> {
    result.map(|c| (c.name, c.role)).map_err(|e| e.status())
}

/// Waits until `node` refuses `headers` with `401`, at most [`PROPAGATION`]; how long it took.
async fn until_refused(node: &Auth, headers: &HeaderMap) -> TestResult<Duration> {
    let start = Instant::now();
    eventually(PROPAGATION, || async {
        match who(node.authenticate(headers, None).await) {
            Err(StatusCode::UNAUTHORIZED) => Ok(start.elapsed()),
            Ok(caller) => Err(format!("still let in as {caller:?}").into()),
            other => panic!("neither let in nor refused: {other:?} after {:?}", start.elapsed()),
        }
    })
    .await
}

#[tokio::test]
async fn a_token_made_with_the_cli_in_the_database_works_on_two_nodes_at_once() -> TestResult {
    let url = database().await?;
    let root = create(&url, "root", true).await?;
    let (a, _a) = node(&url).await?;
    let (b, _b) = node(&url).await?;
    for n in [&a, &b] {
        assert!(n.has_tokens().await);
        assert_eq!(who(n.authenticate(&bearer(&root)?, None).await), Ok(("root".into(), Role::Admin)));
        // Tokens exist, so no credentials is no entry (not the open-mode caller).
        assert_eq!(who(n.authenticate(&HeaderMap::new(), None).await), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(who(n.authenticate(&bearer("aura_made_up")?, None).await), Err(StatusCode::UNAUTHORIZED));
    }

    // A token made while both nodes run works on both at once: no node waits for a cache.
    let alice = create(&url, "alice", false).await?;
    for n in [&a, &b] {
        assert_eq!(who(n.authenticate(&bearer(&alice)?, None).await), Ok(("alice".into(), Role::User)));
        assert_eq!(n.start_session(&alice, None).await.ok().map(|(_, name)| name).as_deref(), Some("alice"));
    }

    // The CLI's other commands print exactly what they print with a tokens file.
    let (code, out, _) = aura_token(&url, &["list"]).await?;
    assert_eq!((code, out.as_str()), (0, "root\tadmin\nalice\tuser\n"));
    let (code, _, err) = aura_token(&url, &["create", "alice"]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = aura_token(&url, &["revoke", "nobody"]).await?;
    assert_eq!((code, err.as_str()), (1, "aura: no token is named \"nobody\"\n"));
    let (code, _, err) = aura_token(&url, &["revoke", "alice"]).await?;
    assert_eq!((code, err.as_str()), (0, "aura: token \"alice\" revoked\n"));
    for n in [&a, &b] {
        until_refused(n, &bearer(&alice)?).await?;
    }

    // The database keeps only digests, never a token.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT name, role, encode(digest, 'hex') FROM tokens").fetch_all(&mut db).await?;
    assert_eq!(rows.len(), 1);
    assert!(rows.iter().all(|(_, _, digest)| digest.len() == 64 && !root.contains(digest.as_str())));
    Ok(())
}

#[tokio::test]
async fn a_browser_signed_in_on_one_server_is_signed_in_on_another_and_signing_out_ends_both() -> TestResult {
    let url = database().await?;
    let alice = create(&url, "alice", false).await?;
    let a = spawn_app_with(|cfg| cfg.database_url = Some(url.clone())).await?;
    let b = spawn_app_with(|cfg| cfg.database_url = Some(url.clone())).await?;

    // Signed in on server A; the cookie is good on server B at once.
    let res = a.client.post(a.url("/api/session")).json(&json!({"token": alice})).send().await?;
    assert_eq!(res.status(), 204);
    let set = res.headers()[header::SET_COOKIE.as_str()].to_str()?.to_owned();
    let id = set
        .strip_prefix("aura_session=")
        .and_then(|rest| rest.split(';').next())
        .ok_or_else(|| format!("no session cookie in {set:?}"))?
        .to_owned();
    let jobs =
        |app: &TestApp| app.client.get(app.url("/api/jobs")).header("cookie", format!("aura_session={id}"));
    for app in [&a, &b] {
        assert_eq!(jobs(app).send().await?.status(), 200);
        assert_eq!(app.client.get(app.url("/api/jobs")).send().await?.status(), 401);
    }
    let created = b
        .client
        .post(b.url("/api/jobs"))
        .header("cookie", format!("aura_session={id}"))
        .json(&json!({"brief": {"topic": "two nodes"}}))
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let location = created.headers().get("location").ok_or("no Location")?.to_str()?.to_owned();
    let shown = a.client.get(a.url(&location)).header("cookie", format!("aura_session={id}")).send().await?;
    assert_eq!(shown.status(), 200);
    let job: Value = shown.json().await?;
    assert_eq!(job["owner"], "alice", "{job}");

    // Signed out on server B: refused there at once, and on server A within about a second.
    let res =
        b.client.delete(b.url("/api/session")).header("cookie", format!("aura_session={id}")).send().await?;
    assert_eq!(res.status(), 204);
    assert_eq!(jobs(&b).send().await?.status(), 401);
    let start = Instant::now();
    eventually(PROPAGATION, || async {
        match jobs(&a).send().await?.status().as_u16() {
            401 => Ok(()),
            200 => Err("server A still answers 200".into()),
            other => panic!("server A answers {other} after {:?}", start.elapsed()),
        }
    })
    .await?;
    assert!(start.elapsed() <= Duration::from_millis(1500), "server A took {:?}", start.elapsed());

    // A session started through one node's `Auth` and ended through another's, the same way.
    let (c, _c) = node(&url).await?;
    let (d, _d) = node(&url).await?;
    let (id, _) = c.start_session(&alice, None).await?;
    assert_eq!(who(d.authenticate(&cookie(&id)?, None).await), Ok(("alice".into(), Role::User)));
    d.end_session(&id).await?;
    until_refused(&c, &cookie(&id)?).await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test]
async fn revoking_a_token_ends_its_sessions_on_every_node_within_a_second() -> TestResult {
    let url = database().await?;
    let _root = create(&url, "root", true).await?;
    let alice = create(&url, "alice", false).await?;
    let (a, _a) = node(&url).await?;
    let (b, _b) = node(&url).await?;
    let (id, _) = a.start_session(&alice, None).await?;
    // Both nodes have just seen the session and the token: their caches hold them.
    for n in [&a, &b] {
        assert_eq!(who(n.authenticate(&cookie(&id)?, None).await), Ok(("alice".into(), Role::User)));
        assert_eq!(who(n.authenticate(&bearer(&alice)?, None).await), Ok(("alice".into(), Role::User)));
    }

    let (code, _, err) = aura_token(&url, &["revoke", "alice"]).await?;
    assert_eq!(code, 0, "{err}");
    for n in [&a, &b] {
        let took = until_refused(n, &cookie(&id)?).await?;
        assert!(took <= Duration::from_millis(1500), "a revoked token's session lived {took:?}");
        until_refused(n, &bearer(&alice)?).await?;
    }
    // A new token of the same name does not bring the old sessions back, and the old token
    // opens no new one.
    let renewed = create(&url, "alice", false).await?;
    assert_eq!(who(b.authenticate(&cookie(&id)?, None).await), Err(StatusCode::UNAUTHORIZED));
    assert_eq!(a.start_session(&alice, None).await.err().map(|e| e.status()), Some(StatusCode::UNAUTHORIZED));
    let (renewed_id, name) = b.start_session(&renewed, None).await?;
    assert_eq!(name, "alice");
    assert_eq!(who(a.authenticate(&cookie(&renewed_id)?, None).await), Ok(("alice".into(), Role::User)));
    // A session can no longer be started with a token that is gone.
    let (code, _, _) = aura_token(&url, &["revoke", "alice"]).await?;
    assert_eq!(code, 0);
    until_refused(&a, &bearer(&renewed)?).await?;
    assert_eq!(
        a.start_session(&renewed, None).await.err().map(|e| e.status()),
        Some(StatusCode::UNAUTHORIZED)
    );
    Ok(())
}

#[tokio::test]
async fn with_the_database_gone_every_caller_is_refused_none_let_in() -> TestResult {
    let cluster = OwnCluster::start()?;
    let alice = create(&cluster.url, "alice", false).await?;
    let (a, _a) = node(&cluster.url).await?;
    let (id, _) = a.start_session(&alice, None).await?;
    assert_eq!(who(a.authenticate(&bearer(&alice)?, None).await), Ok(("alice".into(), Role::User)));

    cluster.pause()?;
    // Once what this node knew is older than a second, nobody gets in: not the token, not the
    // session, not an unknown token, and not a caller without credentials (no open mode).
    let start = Instant::now();
    eventually(PROPAGATION, || async {
        match who(a.authenticate(&bearer(&alice)?, None).await) {
            Err(StatusCode::SERVICE_UNAVAILABLE) => Ok(()),
            Ok(caller) => Err(format!("with the database gone, still let in as {caller:?}").into()),
            other => panic!("with the database gone: {other:?} after {:?}", start.elapsed()),
        }
    })
    .await?;
    for headers in [bearer(&alice)?, cookie(&id)?, bearer("aura_made_up")?, HeaderMap::new()] {
        let answer = who(a.authenticate(&headers, None).await);
        assert!(
            matches!(answer, Err(StatusCode::SERVICE_UNAVAILABLE | StatusCode::UNAUTHORIZED)),
            "{answer:?}"
        );
    }
    assert!(a.has_tokens().await, "not knowing counts as having tokens");
    assert!(a.start_session(&alice, None).await.is_err());

    // Back again: the same node lets the token in without a restart.
    cluster.resume()?;
    eventually(WAIT, || async {
        let answer = who(a.authenticate(&bearer(&alice)?, None).await);
        holds(answer.is_ok(), || format!("the token does not work again: {answer:?}"))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_flood_of_made_up_tokens_is_not_a_query_each_and_costs_only_its_own_address() -> TestResult {
    use std::net::{IpAddr, Ipv4Addr};
    let url = database().await?;
    let alice = create(&url, "alice", false).await?;
    let (a, _a) = node(&url).await?;
    let flooder = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let other = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
    assert_eq!(who(a.authenticate(&bearer(&alice)?, flooder).await), Ok(("alice".into(), Role::User)));

    let mut refused = 0;
    let mut held_back = 0;
    let start = Instant::now();
    for n in 0..1000 {
        match who(a.authenticate(&bearer(&format!("aura_made_up_{n}"))?, flooder).await) {
            Err(StatusCode::UNAUTHORIZED) => refused += 1,
            Err(StatusCode::TOO_MANY_REQUESTS) => held_back += 1,
            other => return Err(format!("a made-up token got {other:?}").into()),
        }
    }
    // Looked up at most at the address's budget (10 a second, burst 30); the rest are held
    // back with a 429 and no query.
    let budget = 30 + (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(refused <= budget, "{refused} lookups in {:?}", start.elapsed());
    assert!(held_back >= 1000 - budget, "{held_back}");

    // Another address has a budget of its own: a token this node has not seen yet gets in
    // from there, and a made-up one is a plain 401.
    let bob = create(&url, "bob", false).await?;
    assert_eq!(who(a.authenticate(&bearer(&bob)?, other).await), Ok(("bob".into(), Role::User)));
    assert_eq!(who(a.authenticate(&bearer("aura_made_up_x")?, other).await), Err(StatusCode::UNAUTHORIZED));

    // Meanwhile a caller this node knows still gets in from the flooding address, even after
    // its cache entry went stale, and its lookups are not charged.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for n in 0..200 {
        let _ = a.authenticate(&bearer(&format!("aura_more_made_up_{n}"))?, flooder).await;
    }
    for _ in 0..50 {
        assert_eq!(who(a.authenticate(&bearer(&alice)?, flooder).await), Ok(("alice".into(), Role::User)));
    }
    Ok(())
}

#[tokio::test]
async fn a_non_loopback_server_on_postgres_starts_only_once_the_database_holds_a_token() -> TestResult {
    let url = database().await?;
    let on_every_address = |cfg: &mut ServeConfig| {
        cfg.addr = "0.0.0.0:0".parse().unwrap_or(cfg.addr);
        cfg.database_url = Some(url.clone());
    };
    let refused = spawn_app_with(on_every_address).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("aura token create") && refused.contains("--insecure-open"), "{refused:?}");

    let alice = create(&url, "alice", false).await?;
    let app = spawn_app_with(on_every_address).await?;
    let port = app.base.rsplit(':').next().ok_or("no port")?;
    let jobs = format!("http://127.0.0.1:{port}/api/jobs");
    assert_eq!(app.client.get(&jobs).send().await?.status(), 401);
    assert_eq!(app.client.get(&jobs).bearer_auth(&alice).send().await?.status(), 200);
    app.stop().await?;
    Ok(())
}
