//! The HTTP client the command line uses to talk to a running server.
//!
//! Server errors arrive as problem+json; they become [`CliError::Problem`] so the user sees the
//! server's title and detail, never a Rust debug dump.

use std::time::Duration;

use serde_json::Value;

/// What went wrong, in words for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{title}: {detail}")]
    Problem { status: u16, title: String, detail: String },
    #[error("cannot reach the Aura server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `server`, sending `Authorization: Bearer <token>` on every request if given.
    pub fn new(server: &str, token: Option<&str>) -> Result<Client, CliError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| CliError::Usage("the token holds characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::Io(format!("setting up HTTP: {e}")))?;
        Ok(Client { base: server.trim_end_matches('/').to_owned(), http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        CliError::Unreachable { server: self.base.clone(), reason }
    }

    /// Sends a request and returns the response if it succeeded, the server's problem if not.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let res = req.send().await.map_err(|e| self.unreachable(&e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        Err(problem(res).await)
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let res = self.send(self.http.get(self.url(path))).await?;
        res.json().await.map_err(|e| CliError::Io(format!("reading the answer: {e}")))
    }

    pub async fn post_json(&self, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let mut req = self.http.post(self.url(path));
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = self.send(req).await?;
        res.json().await.map_err(|e| CliError::Io(format!("reading the answer: {e}")))
    }
}

/// Turns an error response into the server's own words.
pub async fn problem(res: reqwest::Response) -> CliError {
    let status = res.status();
    let fallback = status.canonical_reason().unwrap_or("error").to_owned();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    CliError::Problem {
        status: status.as_u16(),
        title: text("title").unwrap_or(fallback),
        detail: text("detail").unwrap_or_else(|| format!("the server answered {status}")),
    }
}
