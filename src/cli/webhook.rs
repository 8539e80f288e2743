//! `aura webhook …`: register, list, remove endpoints, read their delivery log, rotate a
//! secret, and `verify` a saved request's signature (for people debugging their receiver).
//!
//! A saved request for `verify` is the request's header lines (`name: value`, an optional
//! request line such as `POST /hook HTTP/1.1` first), one blank line, then the body exactly as
//! received, to the end of the file — what `nc -l 8080 > saved` writes, or what a receiver
//! that logs its requests should write.

use std::path::PathBuf;

use serde_json::{Value, json};
use uuid::Uuid;

use super::client::{CliError, Client};
use crate::webhooks::sign;

#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Register an endpoint; prints it as JSON with its secret, which is shown only this once.
    Add {
        url: String,
        /// Event types to deliver (comma-separated or repeated); every type when left out.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List the endpoints (never their secrets).
    List {
        /// The API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Delete an endpoint; its deliveries stop.
    Remove { id: String },
    /// The newest delivery attempts of an endpoint.
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret (printed once); the old one keeps signing for 24 hours.
    Rotate { id: String },
    /// Check the signature of a saved request: header lines, a blank line, the body. Exit 0
    /// when one of its `v1` signatures was made with the secret, 1 otherwise.
    Verify {
        /// The endpoint's secret, `whsec_…`.
        #[arg(long, env = "AURA_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The saved request; standard input when left out.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Runs a webhook command that talks to the server.
pub async fn run(client: &Client, command: WebhookCommand) -> Result<u8, CliError> {
    match command {
        WebhookCommand::Add { url, events } => {
            let mut body = json!({"url": url});
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            let created = client.post_json("/api/webhooks", Some(&body)).await?;
            println!("{}", serde_json::to_string_pretty(&created).unwrap_or_default());
            eprintln!("aura: keep the secret now; it is shown only this once");
            Ok(0)
        }
        WebhookCommand::List { json } => {
            let list = client.get_json("/api/webhooks").await?;
            if json {
                println!("{list}");
                return Ok(0);
            }
            println!("{:<36}  {:>12}  {:<40}  URL", "ID", "LAST EVENT", "EVENTS");
            for w in list["webhooks"].as_array().into_iter().flatten() {
                let events: Vec<&str> =
                    w["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{:<36}  {:>12}  {:<40}  {}",
                    w["id"].as_str().unwrap_or(""),
                    w["lastEventId"].as_i64().unwrap_or(0),
                    events.join(","),
                    w["url"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        WebhookCommand::Remove { id } => {
            let id = parse_id(&id)?;
            client.send(client.http().delete(client.url(&format!("/api/webhooks/{id}")))).await?;
            eprintln!("aura: webhook {id} removed");
            Ok(0)
        }
        WebhookCommand::Deliveries { id, limit, json } => {
            let id = parse_id(&id)?;
            let list = client.get_json(&format!("/api/webhooks/{id}/deliveries?limit={limit}")).await?;
            if json {
                println!("{list}");
                return Ok(0);
            }
            println!(
                "{:<27}  {:>10}  {:<14}  {:>7}  {:>6}  {:<9}  ERROR",
                "AT", "EVENT", "TYPE", "ATTEMPT", "STATUS", "OUTCOME"
            );
            for d in list["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{:<27}  {:>10}  {:<14}  {:>7}  {:>6}  {:<9}  {}",
                    d["at"].as_str().unwrap_or(""),
                    d["eventId"].as_i64().unwrap_or(0),
                    d["eventType"].as_str().unwrap_or(""),
                    d["attempt"].as_i64().unwrap_or(0),
                    d["statusCode"].as_i64().map_or("-".into(), |c| c.to_string()),
                    d["outcome"].as_str().unwrap_or(""),
                    d["error"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        WebhookCommand::Rotate { id } => {
            let id = parse_id(&id)?;
            let rotated = client.post_json(&format!("/api/webhooks/{id}/rotate"), None).await?;
            println!("{}", rotated["secret"].as_str().unwrap_or(""));
            eprintln!(
                "aura: new secret shown only this once; the old one also signs until {}",
                rotated["previousSecretExpiresAt"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
        WebhookCommand::Verify { secret, file } => verify(&secret, file),
    }
}

fn parse_id(s: &str) -> Result<Uuid, CliError> {
    Uuid::parse_str(s).map_err(|_| CliError::Usage(format!("{s:?} is not a webhook id (a UUID)")))
}

/// `aura webhook verify`: reads the saved request and checks its signature.
pub fn verify(secret: &str, file: Option<PathBuf>) -> Result<u8, CliError> {
    use std::io::Read;
    let mut saved = Vec::new();
    match &file {
        Some(path) => {
            saved =
                std::fs::read(path).map_err(|e| CliError::Io(format!("reading {}: {e}", path.display())))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut saved)
                .map_err(|e| CliError::Io(format!("reading stdin: {e}")))?;
        }
    }
    let key = sign::key_of(secret).ok_or_else(|| {
        CliError::Usage("the secret must look like whsec_<base64>, as Aura showed it".into())
    })?;
    let request = parse_saved(&saved)?;
    let header = |name: &str| {
        request.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    };
    let missing = |name: &str| CliError::Usage(format!("the saved request has no {name} header"));
    let id = header("webhook-id").ok_or_else(|| missing("webhook-id"))?;
    let timestamp: i64 = header("webhook-timestamp")
        .ok_or_else(|| missing("webhook-timestamp"))?
        .parse()
        .map_err(|_| CliError::Usage("webhook-timestamp is not a number of seconds".into()))?;
    let signature = header("webhook-signature").ok_or_else(|| missing("webhook-signature"))?;
    if sign::verify(&key, id, timestamp, request.body, signature) {
        println!("valid: webhook-id {id}, signed at {timestamp} with this secret");
        return Ok(0);
    }
    // An editor often adds a newline at the end of a file that the request did not have.
    if let Some(trimmed) = request.body.strip_suffix(b"\n")
        && sign::verify(&key, id, timestamp, trimmed.strip_suffix(b"\r").unwrap_or(trimmed), signature)
    {
        println!(
            "valid: webhook-id {id}, signed at {timestamp} with this secret (without the file's final newline)"
        );
        return Ok(0);
    }
    println!(
        "invalid: no v1 signature in webhook-signature was made with this secret over \
         \"{id}.{timestamp}.<body of {} bytes>\"",
        request.body.len()
    );
    Ok(1)
}

struct Saved<'a> {
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

/// Splits a saved request into its header lines and its body (after the first blank line).
fn parse_saved(saved: &[u8]) -> Result<Saved<'_>, CliError> {
    let (head, body) = match find(saved, b"\r\n\r\n") {
        Some(i) if find(saved, b"\n\n").is_none_or(|j| i < j) => (&saved[..i], &saved[i + 4..]),
        _ => match find(saved, b"\n\n") {
            Some(i) => (&saved[..i], &saved[i + 2..]),
            None => {
                return Err(CliError::Usage(
                    "the saved request has no blank line between headers and body".into(),
                ));
            }
        },
    };
    let head =
        std::str::from_utf8(head).map_err(|_| CliError::Usage("the header lines are not text".into()))?;
    let mut headers = Vec::new();
    for (n, line) in head.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if n == 0 && line.contains(" HTTP/") {
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(Saved { headers, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_request_splits_into_headers_and_the_exact_body() {
        let saved = b"POST /hook HTTP/1.1\r\nwebhook-id: 5\r\nWebhook-Timestamp: 17\r\n\r\n{\"a\":\n1}";
        let parsed = parse_saved(saved).expect("parses");
        assert_eq!(
            parsed.headers,
            vec![("webhook-id".into(), "5".into()), ("Webhook-Timestamp".into(), "17".into())]
        );
        assert_eq!(parsed.body, b"{\"a\":\n1}");
        let parsed = parse_saved(b"webhook-id: 5\n\nbody").expect("parses");
        assert_eq!(parsed.body, b"body");
        assert!(parse_saved(b"webhook-id: 5").is_err());
    }
}
