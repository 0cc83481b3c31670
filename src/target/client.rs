//! The HTTP call to a CI API, behind a small [`Transport`] seam.
//!
//! The dispatcher holds an `Arc<dyn Transport>`: [`Http`] (reqwest) in the
//! daemon, a scripted stand-in in tests (one that panics, say, to prove a
//! failing attempt is still recorded). The live token is a [`Secret`] passed
//! beside the printable [`OutboundRequest`] and joins it only in [`wire`],
//! while the HTTP request is built.

use std::time::Duration;

use tracing::Instrument;

use crate::config::secret::Secret;
use crate::telemetry::trace;

use super::redact::Redactor;
use super::{Credential, OutboundRequest, Response, USER_AGENT};

/// Response bytes read per attempt; the rest of a large CI error page is
/// never read (the connection is dropped instead of drained).
pub const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out waiting for the CI API")]
    Timeout,
    #[error("cannot connect to the CI API: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Failed(String),
    /// The request itself cannot be built (a config problem, not the CI's).
    #[error("cannot build the request: {0}")]
    Build(String),
}

impl SendError {
    /// Whether the request may have reached the CI although no answer came
    /// back (a timeout or a connection cut after connecting): a pipeline may
    /// exist, and the next attempt reconciles before sending again.
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, SendError::Timeout | SendError::Failed(_))
    }
}

/// One trigger call: send `request` with `token` in its place, within `timeout`.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    async fn send(
        &self,
        request: &OutboundRequest,
        token: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Response, SendError>;

    /// [`send`](Self::send), reading up to `limit` bytes of the answer
    /// instead of [`RESPONSE_BODY_LIMIT`]: the VCS reads of changed files,
    /// whose answers are long lists. A stand-in that does not bound its
    /// answers need not implement it.
    async fn send_limited(
        &self,
        request: &OutboundRequest,
        token: Option<&Secret>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, SendError> {
        let _ = limit;
        self.send(request, token, timeout).await
    }
}

/// The shared HTTP client: no redirects, warm connections.
///
/// It honours the standard proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY`, `NO_PROXY`), as reqwest does by default, so a host that
/// reaches the CI only through an egress proxy works. Through `HTTPS_PROXY`
/// the proxy sees only a CONNECT to the CI host; the token stays inside TLS.
/// An `http://` target URL through `HTTP_PROXY` shows the proxy the token.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The reqwest [`Transport`].
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: http_client(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

#[async_trait::async_trait]
impl Transport for Http {
    /// Traced, in a client span of its own ([`trace::client_span`]).
    async fn send(
        &self,
        request: &OutboundRequest,
        token: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        self.send_limited(request, token, timeout, RESPONSE_BODY_LIMIT)
            .await
    }

    async fn send_limited(
        &self,
        request: &OutboundRequest,
        token: Option<&Secret>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, SendError> {
        let Some(span) = trace::client_span(request.method, &request.url) else {
            return self.exchange(request, token, timeout, limit).await;
        };
        let answer = self
            .exchange(request, token, timeout, limit)
            .instrument(span.clone())
            .await;
        trace::client_answered(&span, answer.as_ref().map(|r| r.status).map_err(SendError::kind));
        answer
    }
}

impl SendError {
    /// Its `error.type` on a client span.
    fn kind(&self) -> &'static str {
        match self {
            SendError::Timeout => "timeout",
            SendError::Connect(_) => "connect",
            SendError::Failed(_) => "request",
            SendError::Build(_) => "build",
        }
    }
}

impl Http {
    /// Send `request` and read at most `limit` bytes of the answer.
    async fn exchange(
        &self,
        request: &OutboundRequest,
        token: Option<&Secret>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, SendError> {
        let wire = wire(&self.client, request, token, timeout)?;
        let mut response = self.client.execute(wire).await.map_err(describe_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // Keep a bounded prefix of the body and stop reading there: CI error
        // pages can be large, and a slow one would otherwise hold the attempt
        // until its timeout.
        let mut body = Vec::new();
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                // The status has arrived, and it stands: a 2xx means the CI
                // created the pipeline, whatever happens to the rest of its
                // answer (a retry would create a second one).
                Err(e) => {
                    tracing::warn!(status, error = %describe_error(e), "the CI API's answer was cut off after its status; the status stands");
                    break;
                }
            }
        }
        let redact = Redactor::new(token.map_or("", Secret::expose));
        Ok(Response {
            status,
            headers: redact.headers(headers),
            body: redact.bytes(body).into(),
        })
    }
}

/// The HTTP request for `request`, with the live token where its
/// [`Credential`] says. The only place a token meets a request.
pub fn wire(
    client: &reqwest::Client,
    request: &OutboundRequest,
    token: Option<&Secret>,
    timeout: Duration,
) -> Result<reqwest::Request, SendError> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| SendError::Build(format!("invalid method {}", request.method)))?;
    let token = match (&request.credential, token) {
        (Credential::None, _) => None,
        (_, Some(token)) => Some(token),
        (_, None) => return Err(SendError::Build("no token to send".into())),
    };
    let body = match (&request.credential, token) {
        (Credential::BodyField(field), Some(token)) => {
            let mut filled = request.clone();
            let slot = filled
                .body
                .as_object_mut()
                .and_then(|b| b.get_mut(*field))
                .ok_or_else(|| SendError::Build(format!("the body has no `{field}` field")))?;
            *slot = token.expose().into();
            filled.body_bytes()
        }
        _ => request.body_bytes(),
    }
    .map_err(SendError::Build)?;
    let mut builder = client.request(method, &request.url).timeout(timeout);
    // A call without a body (a GET, a cancel) sends none, not `null`.
    if !request.body.is_null() {
        builder = builder.body(body);
    }
    let in_header = request.credential.header();
    for h in &request.headers {
        let value = match token {
            Some(token) if in_header == Some(h.name.as_ref()) => {
                let text = match &request.credential {
                    Credential::Authorization(scheme) => format!("{scheme} {}", token.expose()),
                    Credential::Basic(user) => {
                        use base64::Engine as _;
                        let pair = format!("{user}:{}", token.expose());
                        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
                    }
                    _ => token.expose().to_owned(),
                };
                let mut value = http::HeaderValue::from_str(&text).map_err(|_| {
                    SendError::Build(format!("the token is not a valid {} header value", h.name))
                })?;
                value.set_sensitive(true);
                value
            }
            _ => http::HeaderValue::from_str(&h.value)
                .map_err(|_| SendError::Build(format!("invalid value for header {}", h.name)))?,
        };
        builder = builder.header(h.name.as_ref(), value);
    }
    builder.build().map_err(describe_error)
}

fn describe_error(e: reqwest::Error) -> SendError {
    let e = e.without_url();
    // A connect timeout is a connect error: nothing was sent.
    if e.is_connect() {
        SendError::Connect(root_cause(&e))
    } else if e.is_timeout() {
        SendError::Timeout
    } else if e.is_builder() {
        SendError::Build(root_cause(&e))
    } else {
        SendError::Failed(root_cause(&e))
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::target::{Encoding, Header, REDACTED};

    fn circleci() -> OutboundRequest {
        OutboundRequest {
            method: "POST",
            url: "https://circleci.com/api/v2/project/gh/a/b/pipeline".into(),
            headers: vec![
                Header {
                    name: "Circle-Token".into(),
                    value: REDACTED.into(),
                },
                Header {
                    name: "Content-Type".into(),
                    value: "application/json".into(),
                },
            ],
            body: serde_json::json!({"branch": "main"}),
            encoding: Encoding::Json,
            credential: Credential::Header("Circle-Token".into()),
        }
    }

    fn gitlab() -> OutboundRequest {
        OutboundRequest {
            method: "POST",
            url: "https://gitlab.example.com/api/v4/projects/1/trigger/pipeline".into(),
            headers: vec![Header {
                name: "Content-Type".into(),
                value: "application/json".into(),
            }],
            body: serde_json::json!({"ref": "main", "token": REDACTED, "variables": {"A": "1"}}),
            encoding: Encoding::Json,
            credential: Credential::BodyField("token"),
        }
    }

    fn body(r: &reqwest::Request) -> String {
        String::from_utf8(r.body().unwrap().as_bytes().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn the_token_joins_the_request_only_on_the_wire() {
        let client = http_client();
        let token = Secret::new("circle-live-token");
        let w = wire(&client, &circleci(), Some(&token), Duration::from_secs(5)).unwrap();
        let names: Vec<&str> = w.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["circle-token", "content-type"]);
        assert_eq!(w.headers()["circle-token"], "circle-live-token");
        assert!(w.headers()["circle-token"].is_sensitive());
        assert_eq!(body(&w), r#"{"branch":"main"}"#);
        assert!(!w.url().as_str().contains("circle-live-token"));

        let token = Secret::new("glptt-live-token");
        let w = wire(&client, &gitlab(), Some(&token), Duration::from_secs(5)).unwrap();
        assert_eq!(
            body(&w),
            r#"{"ref":"main","token":"glptt-live-token","variables":{"A":"1"}}"#
        );
        assert!(!w.url().as_str().contains("glptt"));
        for (_, v) in w.headers() {
            assert!(!v.to_str().unwrap().contains("glptt"));
        }
    }

    #[test]
    fn a_body_without_its_token_field_is_refused() {
        let mut r = gitlab();
        r.body = serde_json::json!({"ref": "main"});
        let e = wire(
            &http_client(),
            &r,
            Some(&Secret::new("t")),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot build the request: the body has no `token` field"
        );
    }

    /// A CI answering a huge body slowly: `send` returns once it holds
    /// [`RESPONSE_BODY_LIMIT`] bytes, long before the request timeout.
    #[tokio::test]
    async fn reading_stops_at_the_body_limit() {
        // A 10 MB body declared, 100 KiB sent, the rest never.
        let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10000000\r\n\r\n";
        let started = Instant::now();
        let response = send_answered(head, vec![b'x'; 100 * 1024], true, "t", Duration::from_secs(30)).await;
        assert_eq!(response.status, 503);
        assert_eq!(response.body.len(), RESPONSE_BODY_LIMIT);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    /// Send a CircleCI trigger with `token` to a server that answers with
    /// `head` and `body`, then closes (or stalls, for `stall`); what `send`
    /// made of it.
    async fn send_answered(
        head: &'static str,
        body: Vec<u8>,
        stall: bool,
        token: &str,
        timeout: Duration,
    ) -> Response {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&body).await.unwrap();
            if stall {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        let mut request = circleci();
        request.url = format!("http://{addr}/api/v2/project/gh/a/b/pipeline");
        let response = Http::new()
            .send(&request, Some(&Secret::new(token)), timeout)
            .await
            .unwrap();
        server.abort();
        response
    }

    /// A 2xx whose body then breaks off (closed, or stalled past the
    /// timeout) is still the CI's 2xx: the pipeline exists, and a retry
    /// would create a second one.
    #[tokio::test]
    async fn a_2xx_cut_off_after_its_status_stands() {
        for stall in [false, true] {
            let head = "HTTP/1.1 201 Created\r\ncontent-length: 1000\r\n\r\n";
            let body = br#"{"id":"5034460f"#.to_vec();
            let response = send_answered(head, body, stall, "t", Duration::from_secs(2)).await;
            assert_eq!(response.status, 201, "stall: {stall}");
            assert_eq!(&response.body[..], br#"{"id":"5034460f"#);
        }
    }

    /// A CI that echoes the request (its body, its headers, "invalid token
    /// X") answers without the token; the rest of the answer is intact.
    #[tokio::test]
    async fn a_token_echoed_by_the_ci_is_scrubbed_from_its_answer() {
        let token = "glptt-Echoed\"Secret";
        let echoed = format!(
            r#"{{"message":"invalid token {token_plain}","received":{{"token":{token_json},"headers":{{"circle-token":"{token_plain}"}}}},"state":"t"}}"#,
            token_plain = token,
            token_json = serde_json::to_string(token).unwrap(),
        );
        let head = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
        let response = send_answered(head, echoed.into_bytes(), false, token, Duration::from_secs(5)).await;
        let text = String::from_utf8(response.body.to_vec()).unwrap();
        assert_eq!(
            text,
            r#"{"message":"invalid token ***","received":{"token":"***","headers":{"circle-token":"***"}},"state":"t"}"#
        );

        let token = "glptt-Echoed-Secret";
        let echoed = format!(
            r#"{{"message":"invalid token {token}.","received":{{"token":"{token}","headers":{{"circle-token":"{token}"}}}},"state":"t","other":"x{token}y"}}"#
        );
        let response = send_answered(head, echoed.into_bytes(), false, token, Duration::from_secs(5)).await;
        let text = String::from_utf8(response.body.to_vec()).unwrap();
        assert_eq!(
            text,
            r#"{"message":"invalid token ***.","received":{"token":"***","headers":{"circle-token":"***"}},"state":"t","other":"x***y"}"#
        );
    }

    #[test]
    fn a_token_made_of_json_escapes_is_scrubbed_whole() {
        // proptest found this: the raw `"` was replaced inside `\"` first,
        // leaving the backslash of the token's escaped form behind.
        let out = Redactor::new("\"").bytes(br#" " "\"" "#.to_vec());
        assert!(!String::from_utf8(out.clone()).unwrap().contains('\\'), "{out:?}");
    }

    #[test]
    fn a_short_token_is_scrubbed_only_where_it_stands_alone() {
        let out = Redactor::new("t").bytes(br#"{"state":"t","token":"t.","at":"tt"}"#.to_vec());
        assert_eq!(out, br#"{"state":"***","token":"***.","at":"tt"}"#);
    }

    proptest::proptest! {
        /// Any token, written into an answer between delimiters, as is or
        /// as a JSON string, is gone after scrubbing; nothing panics.
        #[test]
        fn scrubbing_removes_every_delimited_token(
            token in "[ -~]{1,40}",
            before in "[ -~]{0,40}",
            after in "[ -~]{0,40}",
        ) {
            let json = serde_json::to_string(&token).unwrap();
            let body = format!("{before} {token} \n{json}\n {after}");
            let out = String::from_utf8(Redactor::new(&token).bytes(body.into_bytes())).unwrap();
            let shown = out.replace("***", "");
            let escaped = &json[1..json.len() - 1];
            proptest::prop_assume!(!format!("{before}  \n\n {after}").contains(&token));
            proptest::prop_assert!(!out.contains(&format!(" {token} ")), "{out}");
            proptest::prop_assert!(!shown.contains(escaped), "{out}");
        }
    }
}
