//! `hookbridge gitlab triggers ...`: manage GitLab pipeline trigger tokens
//! through the REST API (`/projects/:id/triggers`), with `PRIVATE-TOKEN` from
//! the environment.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum GitlabCommand {
    /// Pipeline trigger tokens of a project
    #[command(subcommand)]
    Triggers(TriggersCommand),
}

#[derive(Debug, Subcommand)]
pub enum TriggersCommand {
    /// List the project's trigger tokens (other users' tokens are shown truncated by GitLab)
    List(Common),
    /// Show one trigger token
    Show(WithId),
    /// Create a trigger token; its full value is printed once
    Create(Create),
    /// Change a trigger token's description
    Update(Update),
    /// Delete a trigger token
    Delete(WithId),
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// GitLab base URL, e.g. https://gitlab.example.com
    #[arg(long)]
    pub url: String,
    /// Project id or path (`group/sub/app`; encoded for you)
    #[arg(long)]
    pub project: String,
    /// Environment variable holding the PRIVATE-TOKEN (a token with the `api` scope)
    #[arg(long, default_value = "GITLAB_TOKEN")]
    pub token_env: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WithId {
    #[command(flatten)]
    pub common: Common,
    pub trigger_id: u64,
}

#[derive(Debug, Args)]
pub struct Create {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub description: String,
    /// Expiry, `YYYY-MM-DD` or an RFC 3339 time
    #[arg(long)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct Update {
    #[command(flatten)]
    pub common: Common,
    pub trigger_id: u64,
    #[arg(long)]
    pub description: String,
}

/// A trigger token as GitLab returns it (`API_Entities_Trigger`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Trigger {
    pub id: i64,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub last_used: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub owner: Option<Value>,
}

pub(crate) fn run(cmd: GitlabCommand) -> ExitCode {
    let GitlabCommand::Triggers(cmd) = cmd;
    super::common::block_on(triggers(cmd))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(c: &Common) -> Result<Client, String> {
        let token = std::env::var(&c.token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                format!(
                    "set ${} to a GitLab access token with the `api` scope",
                    c.token_env
                )
            })?;
        let root = c.url.trim_end_matches('/');
        let root = root.strip_suffix("/api/v4").unwrap_or(root);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::target::USER_AGENT)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client {
            http,
            base: format!(
                "{root}/api/v4/projects/{}/triggers",
                crate::target::encode::path_segment(&c.project)
            ),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("PRIVATE-TOKEN", &self.token)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| match e.is_timeout() {
            true => "GitLab did not answer within 30 s".to_owned(),
            false => format!("cannot reach GitLab: {}", e.without_url()),
        })?;
        let status = resp.status().as_u16();
        let bytes = bounded_body(resp).await?;
        if (200..300).contains(&status) {
            return Ok((status, bytes.to_vec()));
        }
        // A GitLab or proxy that echoes the request would show the token.
        let redact = crate::target::redact::Redactor::new(&self.token);
        let bytes = redact.bytes(bytes.to_vec());
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").or_else(|| v.get("error")).map(|m| m.to_string()))
            .unwrap_or_else(|| crate::target::truncate_body(&bytes, 300));
        let message = super::common::terminal_safe(&redact.text(&message));
        let hint = match status {
            401 => " — the token is missing, expired or revoked (check $GITLAB_TOKEN / --token-env)",
            403 => " — the token's user needs the Maintainer role on the project and the `api` scope",
            404 => {
                " — no such project or trigger (check --project and the trigger id; private projects answer 404 without access)"
            }
            _ => "",
        };
        Err(format!("GitLab answered {status}: {message}{hint}"))
    }
}

/// Pages of 100 trigger tokens `list` reads at most.
const MAX_PAGES: usize = 100;

/// The most of one GitLab answer read: a page of 100 triggers is ~50 KB.
const ANSWER_LIMIT: usize = 4 << 20;

/// The answer's body, refused once it passes [`ANSWER_LIMIT`] (a proxy or
/// server streaming without end would otherwise fill memory until the
/// request's timeout).
async fn bounded_body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let failed = |e: reqwest::Error| match e.is_timeout() {
        true => "GitLab's answer did not arrive within 30 s".to_owned(),
        false => format!("GitLab's answer broke off: {}", e.without_url()),
    };
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len().saturating_add(chunk.len()) > ANSWER_LIMIT {
            return Err(format!(
                "GitLab's answer is larger than {} MiB; not read further (is --url GitLab's?)",
                ANSWER_LIMIT >> 20
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("unexpected answer from GitLab: {e}"))
}

/// GitLab takes a date or a time; send a full RFC 3339 time either way.
fn expires(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).map_err(|_| format!("`{s}` is not a date"))?;
        return Ok(format!("{s}T00:00:00Z"));
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|_| format!("`{s}` is neither YYYY-MM-DD nor an RFC 3339 time"))?;
    Ok(s.to_owned())
}

async fn triggers(cmd: TriggersCommand) -> Result<(), String> {
    match cmd {
        TriggersCommand::List(c) => {
            let client = Client::new(&c)?;
            let mut all: Vec<Trigger> = Vec::new();
            let mut complete = false;
            for page in 1..=MAX_PAGES {
                let (_, body) = client
                    .call(reqwest::Method::GET, &format!("?per_page=100&page={page}"), None)
                    .await?;
                let batch: Vec<Trigger> = parse(&body)?;
                let done = batch.len() < 100;
                all.extend(batch);
                if done {
                    complete = true;
                    break;
                }
            }
            if !complete {
                eprintln!(
                    "warning: listed the first {} trigger tokens ({MAX_PAGES} pages of 100); the project may have more",
                    all.len()
                );
            }
            if c.json {
                return print_json(&all);
            }
            print!("{}", table(&all));
        }
        TriggersCommand::Show(w) => {
            let client = Client::new(&w.common)?;
            let (_, body) = client
                .call(reqwest::Method::GET, &format!("/{}", w.trigger_id), None)
                .await?;
            let t: Trigger = parse(&body)?;
            if w.common.json {
                return print_json(&t);
            }
            print!("{}", table(std::slice::from_ref(&t)));
        }
        TriggersCommand::Create(c) => {
            let client = Client::new(&c.common)?;
            let mut body = json!({ "description": c.description });
            if let Some(e) = &c.expires_at {
                body["expires_at"] = json!(expires(e)?);
            }
            let (_, out) = client.call(reqwest::Method::POST, "", Some(body)).await?;
            let t: Trigger = parse(&out)?;
            if c.common.json {
                return print_json(&t);
            }
            println!(
                "created trigger {} ({})",
                t.id,
                super::common::terminal_safe(t.description.as_deref().unwrap_or(""))
            );
            println!(
                "token: {}",
                super::common::terminal_safe(t.token.as_deref().unwrap_or("(not returned)"))
            );
            println!(
                "Store it now (e.g. as the target's `token`): GitLab shows other users only its first 4 characters later."
            );
        }
        TriggersCommand::Update(u) => {
            let client = Client::new(&u.common)?;
            let (_, out) = client
                .call(
                    reqwest::Method::PUT,
                    &format!("/{}", u.trigger_id),
                    Some(json!({ "description": u.description })),
                )
                .await?;
            let t: Trigger = parse(&out)?;
            if u.common.json {
                return print_json(&t);
            }
            println!(
                "updated trigger {}: {}",
                t.id,
                super::common::terminal_safe(t.description.as_deref().unwrap_or(""))
            );
        }
        TriggersCommand::Delete(w) => {
            let client = Client::new(&w.common)?;
            client
                .call(reqwest::Method::DELETE, &format!("/{}", w.trigger_id), None)
                .await?;
            if w.common.json {
                return print_json(&json!({ "deleted": w.trigger_id }));
            }
            println!("deleted trigger {}", w.trigger_id);
        }
    }
    Ok(())
}

fn print_json<T: Serialize>(v: &T) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| e.to_string())?);
    Ok(())
}

/// Tokens are shown as GitLab returns them (truncated for other users' tokens).
fn table(triggers: &[Trigger]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "DESCRIPTION".into(),
        "TOKEN".into(),
        "OWNER".into(),
        "LAST USED".into(),
        "EXPIRES".into(),
    ]];
    // What GitLab answered is printed with its control characters escaped.
    let safe = super::common::terminal_safe;
    for t in triggers {
        rows.push([
            t.id.to_string(),
            safe(t.description.as_deref().unwrap_or_default()),
            safe(t.token.as_deref().unwrap_or_default()),
            safe(
                t.owner
                    .as_ref()
                    .and_then(|o| o.get("username"))
                    .and_then(Value::as_str)
                    .unwrap_or("-"),
            ),
            safe(t.last_used.as_deref().unwrap_or("never")),
            safe(t.expires_at.as_deref().unwrap_or("-")),
        ]);
    }
    let mut out = super::common::table(&rows);
    if triggers.is_empty() {
        out.push_str("(no trigger tokens)\n");
    }
    out
}
