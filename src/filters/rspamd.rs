//! Rspamd over HTTP: `POST /checkv2` to its normal worker (port 11333 by default — not the
//! proxy's milter port 11332), on the hyper client mxguard already has.
//!
//! One TCP connection per check, under one timeout for the whole exchange (connect, send,
//! the scan, the reply). The request carries the session's facts as rspamd's protocol
//! headers (`IP`, `Helo`, `Hostname` — only a forward-confirmed name, or rspamd scores
//! `HFILTER_HOSTNAME_UNKNOWN` — `From`, one `Rcpt` per recipient, `Queue-Id`, `User`,
//! `TLS-Cipher`, `TLS-Version`, `MTA-Name`) and the message as the body; the JSON reply
//! becomes an [`RspamdVerdict`].

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::milter::config::{DefaultAction, de_duration};
use crate::milter::protocol::{MilterEdit, canonical_header_value, valid_header_name};

/// Replies larger than this are refused (a verdict is a few KiB; many symbols with
/// options can reach tens).
const MAX_REPLY: usize = 4 << 20;

/// One rspamd instance, as configured:
///
/// ```yaml
/// name: rspamd
/// rspamd: http://127.0.0.1:11333   # the normal worker
/// default_action: accept           # tempfail | accept | reject | shutdown
/// timeout: 30s                     # connect + scan + reply
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RspamdConfig {
    pub name: String,
    pub rspamd: RspamdUrl,
    #[serde(default)]
    pub default_action: DefaultAction,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl RspamdConfig {
    pub fn new(name: impl Into<String>, rspamd: RspamdUrl) -> Self {
        RspamdConfig {
            name: name.into(),
            rspamd,
            default_action: DefaultAction::default(),
            timeout: default_timeout(),
        }
    }
}

/// 30 s: rspamd's own task timeout is 8 s by default, its proxy waits up to 120 s.
pub fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `http://host:port[/prefix]`: where the normal worker listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RspamdUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix before `/checkv2` (empty, or e.g. `/rspamd` behind a proxy).
    pub prefix: String,
}

impl std::str::FromStr for RspamdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let uri: hyper::Uri = s
            .trim()
            .parse()
            .map_err(|e| format!("rspamd address {s:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "rspamd address {s:?}: scheme {other} is not supported (http only: \
                     run rspamd on loopback or a private network)"
                ));
            }
            None => return Err(format!("rspamd address {s:?}: expected http://host:port")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("rspamd address {s:?}: no host"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        Ok(RspamdUrl {
            host,
            port: uri.port_u16().unwrap_or(11333),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for RspamdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

impl<'de> Deserialize<'de> for RspamdUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The session's facts sent with a message; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct RspamdRequest<'a> {
    /// `IP`: the client's address.
    pub ip: Option<IpAddr>,
    /// `Helo`: the HELO/EHLO name.
    pub helo: Option<&'a str>,
    /// `Hostname`: only a forward-confirmed (FCrDNS) client name.
    pub hostname: Option<&'a str>,
    /// `From`: the envelope sender (empty for the null sender).
    pub from: Option<&'a str>,
    /// `Rcpt`: one header per envelope recipient.
    pub rcpts: &'a [&'a str],
    /// `Queue-Id`: mxguard's session/transaction id.
    pub queue_id: Option<&'a str>,
    /// `User`: the SASL login, for authenticated submissions.
    pub user: Option<&'a str>,
    pub tls_cipher: Option<&'a str>,
    pub tls_version: Option<&'a str>,
    /// `MTA-Name`: the name rspamd writes in its Authentication-Results.
    pub mta_name: Option<&'a str>,
}

/// Rspamd's recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RspamdAction {
    NoAction,
    /// Only when a greylist threshold is configured with the greylist module off; the
    /// module itself answers `soft reject` (rspamd#3295).
    Greylist,
    AddHeader,
    RewriteSubject,
    SoftReject,
    Reject,
    /// Any other (custom) action, by name: e.g. `discard`, `quarantine`.
    Other(String),
}

impl RspamdAction {
    pub fn from_name(name: &str) -> RspamdAction {
        match name {
            "no action" => RspamdAction::NoAction,
            "greylist" => RspamdAction::Greylist,
            "add header" => RspamdAction::AddHeader,
            "rewrite subject" => RspamdAction::RewriteSubject,
            "soft reject" => RspamdAction::SoftReject,
            "reject" => RspamdAction::Reject,
            other => RspamdAction::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RspamdAction::NoAction => "no action",
            RspamdAction::Greylist => "greylist",
            RspamdAction::AddHeader => "add header",
            RspamdAction::RewriteSubject => "rewrite subject",
            RspamdAction::SoftReject => "soft reject",
            RspamdAction::Reject => "reject",
            RspamdAction::Other(name) => name,
        }
    }
}

/// One symbol that matched.
#[derive(Debug, Clone, PartialEq)]
pub struct RspamdSymbol {
    pub name: String,
    pub score: f64,
    pub options: Vec<String>,
}

/// A header rspamd wants added (`milter.add_headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RspamdHeader {
    pub name: String,
    /// The field body as written after `Name:` (leading space, CRLF folding).
    pub value: String,
    /// `None`: append. `n ≥ 0`: insert after `n` fields. `n < 0`: counted from the end
    /// (`-1` = after the last field).
    pub order: Option<i64>,
}

/// A header rspamd wants removed (`milter.remove_headers`): `order` 0 = every occurrence,
/// `n > 0` the n-th, `n < 0` counted from the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RspamdHeaderRemoval {
    pub name: String,
    pub order: i64,
}

/// A decoded `/checkv2` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct RspamdVerdict {
    pub action: RspamdAction,
    pub score: f64,
    pub required_score: f64,
    /// Rspamd stopped early (e.g. GTUBE, a settings `skip`).
    pub is_skipped: bool,
    /// Sorted by name.
    pub symbols: Vec<RspamdSymbol>,
    /// `messages.smtp_message`: the reply text rspamd suggests for a reject.
    pub smtp_message: Option<String>,
    /// The new subject for `rewrite subject`.
    pub subject: Option<String>,
    pub add_headers: Vec<RspamdHeader>,
    pub remove_headers: Vec<RspamdHeaderRemoval>,
    pub message_id: Option<String>,
}

impl RspamdVerdict {
    pub fn symbol(&self, name: &str) -> Option<&RspamdSymbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// The header changes as edits, computed exactly as rspamd's own milter mode sends
    /// them: removals first, then additions; indexes count `fields` — the message's field
    /// names in order, as scanned — before any change.
    pub fn header_edits(&self, fields: &[&str]) -> Vec<MilterEdit> {
        let mut edits = Vec::new();
        for r in &self.remove_headers {
            let count = fields
                .iter()
                .filter(|f| f.eq_ignore_ascii_case(&r.name))
                .count() as i64;
            let delete = |index: i64| MilterEdit::DeleteHeader {
                index: index as u32,
                name: r.name.clone(),
            };
            match r.order {
                0 => edits.extend((1..=count).rev().map(delete)),
                n if n > 0 && n <= count => edits.push(delete(n)),
                n if n < 0 && -n <= count => edits.push(delete(count + n + 1)),
                _ => {}
            }
        }
        let total = fields.len() as i64;
        for h in &self.add_headers {
            let (name, value) = (h.name.clone(), h.value.clone());
            edits.push(match h.order {
                None => MilterEdit::AddHeader { name, value },
                Some(n) if n >= 0 => MilterEdit::InsertHeader {
                    index: n.min(u32::MAX as i64) as u32,
                    name,
                    value,
                },
                Some(n) if -n <= total => MilterEdit::InsertHeader {
                    index: (total + n + 1) as u32,
                    name,
                    value,
                },
                Some(_) => MilterEdit::InsertHeader {
                    index: 0,
                    name,
                    value,
                },
            });
        }
        edits
    }

    /// For `rewrite subject`: the change of the first `Subject` field.
    pub fn subject_edit(&self) -> Option<MilterEdit> {
        let subject = self.subject.as_deref()?;
        let value = canonical_header_value(subject, false).ok()?;
        Some(MilterEdit::ChangeHeader {
            index: 1,
            name: "Subject".into(),
            value,
        })
    }
}

/// A failure asking rspamd.
#[derive(Debug, thiserror::Error)]
#[error("rspamd {filter}: {kind}")]
pub struct RspamdError {
    pub filter: String,
    #[source]
    pub kind: RspamdErrorKind,
}

impl RspamdError {
    /// `connect`, `timeout`, `http`, `status`, `reply`, `input`.
    pub fn label(&self) -> &'static str {
        self.class().as_str()
    }

    pub fn class(&self) -> ErrorClass {
        match self.kind {
            RspamdErrorKind::Connect { .. } => ErrorClass::Connect,
            RspamdErrorKind::Timeout(_) => ErrorClass::Timeout,
            RspamdErrorKind::Http(_) => ErrorClass::Http,
            RspamdErrorKind::Status { .. } => ErrorClass::Status,
            RspamdErrorKind::Reply(_) => ErrorClass::Reply,
            RspamdErrorKind::Input(_) => ErrorClass::Input,
        }
    }
}

/// An [`RspamdErrorKind`] without its details: the `kind` of log lines and of
/// `mxguard_filter_errors_total`, one list that counts and initialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Connect,
    Timeout,
    Http,
    Status,
    Reply,
    Input,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::Connect,
        ErrorClass::Timeout,
        ErrorClass::Http,
        ErrorClass::Status,
        ErrorClass::Reply,
        ErrorClass::Input,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Http => "http",
            ErrorClass::Status => "status",
            ErrorClass::Reply => "reply",
            ErrorClass::Input => "input",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RspamdErrorKind {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no verdict within {0:?}")]
    Timeout(Duration),
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("unusable reply: {0}")]
    Reply(String),
    /// A request header value that HTTP cannot carry (CR, LF, NUL).
    #[error("cannot send {0}")]
    Input(String),
}

/// Asks one rspamd instance.
#[derive(Debug, Clone)]
pub struct RspamdClient {
    cfg: RspamdConfig,
}

impl RspamdClient {
    pub fn new(cfg: RspamdConfig) -> Self {
        RspamdClient { cfg }
    }

    pub fn config(&self) -> &RspamdConfig {
        &self.cfg
    }

    /// Scans `message` (the whole message, CRLF line ends).
    pub async fn check(
        &self,
        req: &RspamdRequest<'_>,
        message: impl Into<Bytes>,
    ) -> Result<RspamdVerdict, RspamdError> {
        self.check_body(req, Full::new(message.into())).await
    }

    /// Scans a message given as any HTTP body (e.g. streamed from a spool file).
    pub async fn check_body<B>(
        &self,
        req: &RspamdRequest<'_>,
        body: B,
    ) -> Result<RspamdVerdict, RspamdError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request = self.request(req, body).map_err(|kind| self.error(kind))?;
        let exchange = self.exchange(request);
        match tokio::time::timeout(self.cfg.timeout, exchange).await {
            Err(_) => Err(self.error(RspamdErrorKind::Timeout(self.cfg.timeout))),
            Ok(Err(kind)) => Err(self.error(kind)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn error(&self, kind: RspamdErrorKind) -> RspamdError {
        RspamdError {
            filter: self.cfg.name.clone(),
            kind,
        }
    }

    fn request<B>(&self, req: &RspamdRequest<'_>, body: B) -> Result<Request<B>, RspamdErrorKind> {
        let url = &self.cfg.rspamd;
        let authority = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let mut r = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/checkv2", url.prefix))
            .body(body)
            .map_err(|e| RspamdErrorKind::Input(e.to_string()))?;
        let h = r.headers_mut();
        let mut put = |name: &'static str, value: &str| -> Result<(), RspamdErrorKind> {
            let v = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| RspamdErrorKind::Input(format!("{name} header {value:?}")))?;
            h.append(HeaderName::from_static(name), v);
            Ok(())
        };
        put("host", &authority)?;
        if let Some(ip) = req.ip {
            put("ip", &ip.to_string())?;
        }
        let optional = [
            ("helo", req.helo),
            ("hostname", req.hostname),
            ("from", req.from),
            ("queue-id", req.queue_id),
            ("user", req.user),
            ("tls-cipher", req.tls_cipher),
            ("tls-version", req.tls_version),
            ("mta-name", req.mta_name),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                put(name, v)?;
            }
        }
        for rcpt in req.rcpts {
            put("rcpt", rcpt)?;
        }
        Ok(r)
    }

    async fn exchange<B>(&self, request: Request<B>) -> Result<RspamdVerdict, RspamdErrorKind>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let url = &self.cfg.rspamd;
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| RspamdErrorKind::Connect {
                url: url.to_string(),
                source,
            })?;
        tcp.set_nodelay(true).ok();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(RspamdErrorKind::Http)?;
        let talk = async {
            let resp = sender
                .send_request(request)
                .await
                .map_err(RspamdErrorKind::Http)?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| RspamdErrorKind::Reply(format!("reading the reply: {e}")))?
                .to_bytes();
            Ok::<_, RspamdErrorKind>((status, body))
        };
        // Drive the connection and the request together, so the caller's timeout drops
        // both and nothing outlives the check. The connection may finish first (rspamd
        // closes after replying); the reply is then already buffered for `talk`.
        tokio::pin!(conn);
        tokio::pin!(talk);
        let (status, body) = tokio::select! {
            r = &mut talk => r?,
            c = &mut conn => {
                c.map_err(RspamdErrorKind::Http)?;
                talk.await?
            }
        };
        if status != StatusCode::OK {
            return Err(RspamdErrorKind::Status {
                status,
                message: error_text(&body),
            });
        }
        parse_verdict(&body).map_err(RspamdErrorKind::Reply)
    }
}

/// Rspamd's error replies are `{"error": "..."}`; otherwise the start of the body.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorReply {
        error: String,
    }
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

#[derive(Deserialize)]
struct RawVerdict {
    #[serde(default)]
    is_skipped: bool,
    score: Option<f64>,
    required_score: Option<f64>,
    action: Option<String>,
    #[serde(default)]
    symbols: std::collections::BTreeMap<String, RawSymbol>,
    #[serde(default)]
    messages: RawMessages,
    subject: Option<String>,
    milter: Option<RawMilter>,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct RawSymbol {
    #[serde(default)]
    score: f64,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RawMessages {
    smtp_message: Option<String>,
}

#[derive(Deserialize)]
struct RawMilter {
    #[serde(default)]
    add_headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    remove_headers: serde_json::Map<String, serde_json::Value>,
}

/// Decodes a `/checkv2` reply body.
pub fn parse_verdict(body: &[u8]) -> Result<RspamdVerdict, String> {
    let raw: RawVerdict =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON verdict: {e}"))?;
    if let Some(e) = raw.error {
        return Err(format!("rspamd error: {e}"));
    }
    let missing = |field: &str| format!("verdict without `{field}`");
    let action = raw.action.ok_or_else(|| missing("action"))?;
    let score = raw.score.ok_or_else(|| missing("score"))?;
    let required_score = raw
        .required_score
        .ok_or_else(|| missing("required_score"))?;
    let (add_headers, remove_headers) = match raw.milter {
        Some(m) => (
            added_headers(&m.add_headers)?,
            removed_headers(&m.remove_headers)?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(RspamdVerdict {
        action: RspamdAction::from_name(&action),
        score,
        required_score,
        is_skipped: raw.is_skipped,
        symbols: raw
            .symbols
            .into_iter()
            .map(|(name, s)| RspamdSymbol {
                name,
                score: s.score,
                options: s.options,
            })
            .collect(),
        smtp_message: raw.messages.smtp_message,
        subject: raw.subject,
        add_headers,
        remove_headers,
        message_id: raw.message_id,
    })
}

/// `add_headers`: `name → "value" | {value, order} | [either, …]`.
fn added_headers(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<RspamdHeader>, String> {
    use serde_json::Value;
    let mut out = Vec::new();
    for (name, v) in map {
        if !valid_header_name(name) {
            return Err(format!(
                "invalid header name {name:?} in milter.add_headers"
            ));
        }
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for item in items {
            let (value, order) = match item {
                Value::String(s) => (s.as_str(), None),
                Value::Object(o) => {
                    let value = o
                        .get("value")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("milter.add_headers.{name}: no string value"))?;
                    let order = o
                        .get("order")
                        .or_else(|| o.get("index"))
                        .and_then(Value::as_i64);
                    (value, order)
                }
                _ => return Err(format!("milter.add_headers.{name}: unexpected {item}")),
            };
            let value = canonical_header_value(value, false)
                .map_err(|e| format!("milter.add_headers.{name}: {e}"))?;
            out.push(RspamdHeader {
                name: name.clone(),
                value,
                order,
            });
        }
    }
    Ok(out)
}

/// `remove_headers`: `name → order`.
fn removed_headers(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<RspamdHeaderRemoval>, String> {
    map.iter()
        .map(|(name, v)| {
            let order = v
                .as_i64()
                .ok_or_else(|| format!("milter.remove_headers.{name}: not an integer"))?;
            if !valid_header_name(name) {
                return Err(format!(
                    "invalid header name {name:?} in milter.remove_headers"
                ));
            }
            Ok(RspamdHeaderRemoval {
                name: name.clone(),
                order,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rspamd 3.4's reply to a clean message (abridged from a real run).
    const CLEAN: &str = r#"{"is_skipped":false,"score":3.699999,"required_score":15.0,
      "action":"no action","symbols":{
        "AUTH_NA":{"name":"AUTH_NA","score":1.0,"metric_score":1.0,"description":"x"},
        "MIME_GOOD":{"name":"MIME_GOOD","score":-0.1,"metric_score":-0.1,"options":["text/plain"]}},
      "messages":{},"message-id":"2@example.com","time_real":0.02,
      "milter":{"remove_headers":{"Authentication-Results":0,"X-Spam":0,"X-Old":-1},
        "add_headers":{
          "Authentication-Results":{"order":1,"value":"vm;\r\n\tdkim=none;\r\n\tdmarc=none"},
          "X-Spam-Status":{"order":-1,"value":"No, score=3.70"},
          "X-Two":["a",{"value":"b"}]}}}"#;

    #[test]
    fn clean_reply() {
        let v = parse_verdict(CLEAN.as_bytes()).unwrap();
        assert_eq!(v.action, RspamdAction::NoAction);
        assert!((v.score - 3.7).abs() < 1e-3 && v.required_score == 15.0);
        assert_eq!(v.symbol("MIME_GOOD").unwrap().options, ["text/plain"]);
        assert_eq!(v.symbols.len(), 2);
        assert_eq!(v.message_id.as_deref(), Some("2@example.com"));
        assert_eq!(
            v.add_headers[0],
            RspamdHeader {
                name: "Authentication-Results".into(),
                value: " vm;\r\n\tdkim=none;\r\n\tdmarc=none".into(),
                order: Some(1)
            }
        );
        assert_eq!(v.add_headers.len(), 4, "arrays give one header each");
        assert_eq!(v.remove_headers.len(), 3);
    }

    #[test]
    fn edits_follow_rspamd_milter_mode() {
        let v = parse_verdict(CLEAN.as_bytes()).unwrap();
        let fields = [
            "Authentication-Results",
            "From",
            "X-Old",
            "Authentication-Results",
            "X-Old",
            "Subject",
        ];
        let e = v.header_edits(&fields);
        let del = |index, name: &str| MilterEdit::DeleteHeader {
            index,
            name: name.into(),
        };
        assert_eq!(
            &e[..3],
            &[
                del(2, "Authentication-Results"),
                del(1, "Authentication-Results"),
                del(2, "X-Old")
            ]
        );
        // JSON object keys come sorted by name.
        assert!(
            matches!(&e[3], MilterEdit::InsertHeader { index: 1, name, .. } if name == "Authentication-Results")
        );
        assert!(
            matches!(&e[4], MilterEdit::InsertHeader { index: 6, name, .. } if name == "X-Spam-Status")
        );
        assert!(
            matches!(&e[5], MilterEdit::AddHeader { name, value } if name == "X-Two" && value == " a")
        );
        assert!(
            matches!(&e[6], MilterEdit::AddHeader { name, value } if name == "X-Two" && value == " b")
        );
        assert_eq!(e.len(), 7);
    }

    #[test]
    fn gtube_reject() {
        let v = parse_verdict(
            br#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject",
                "symbols":{"GTUBE":{"name":"GTUBE","score":0.0}},
                "messages":{"smtp_message":"Gtube pattern"}}"#,
        )
        .unwrap();
        assert_eq!(v.action, RspamdAction::Reject);
        assert_eq!(v.smtp_message.as_deref(), Some("Gtube pattern"));
        assert!(v.is_skipped && v.symbol("GTUBE").is_some());
    }

    #[test]
    fn rewrite_subject_and_other_actions() {
        let v = parse_verdict(
            br#"{"score":9,"required_score":15,"action":"rewrite subject","subject":"*** SPAM *** hi"}"#,
        )
        .unwrap();
        assert_eq!(v.action, RspamdAction::RewriteSubject);
        assert_eq!(
            v.subject_edit(),
            Some(MilterEdit::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: " *** SPAM *** hi".into()
            })
        );
        let v = parse_verdict(br#"{"score":1,"required_score":15,"action":"discard"}"#).unwrap();
        assert_eq!(v.action, RspamdAction::Other("discard".into()));
    }

    #[test]
    fn bad_replies() {
        assert!(parse_verdict(b"not json").is_err());
        assert!(
            parse_verdict(br#"{"error":"cannot parse message"}"#)
                .unwrap_err()
                .contains("cannot parse")
        );
        assert!(parse_verdict(br#"{"score":1}"#).is_err());
        let injected = br#"{"score":1,"required_score":15,"action":"add header",
            "milter":{"add_headers":{"X-A":"v\nBcc: x@example"}}}"#;
        assert!(parse_verdict(injected).is_err());
    }

    #[test]
    fn urls() {
        let u: RspamdUrl = "http://127.0.0.1:11333".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 11333, "")
        );
        let u: RspamdUrl = "http://[::1]:8080/rspamd/".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 8080, "/rspamd")
        );
        assert_eq!(u.to_string(), "http://[::1]:8080/rspamd");
        assert!(
            "https://r.example"
                .parse::<RspamdUrl>()
                .unwrap_err()
                .contains("http only")
        );
        assert!("127.0.0.1:11333".parse::<RspamdUrl>().is_err());
    }

    #[test]
    fn request_headers() {
        let c = RspamdClient::new(RspamdConfig::new(
            "rspamd",
            "http://127.0.0.1:11333".parse().unwrap(),
        ));
        let rcpts = ["b@example.org", "c@example.org"];
        let req = RspamdRequest {
            ip: Some("192.0.2.1".parse().unwrap()),
            helo: Some("mail.example.com"),
            from: Some("a@example.com"),
            rcpts: &rcpts,
            queue_id: Some("S1T1"),
            ..Default::default()
        };
        let r = c.request(&req, ()).unwrap();
        assert_eq!(r.uri(), "/checkv2");
        let h = r.headers();
        assert_eq!(h["ip"], "192.0.2.1");
        assert_eq!(h["host"], "127.0.0.1:11333");
        assert_eq!(h.get_all("rcpt").iter().count(), 2);
        assert!(h.get("hostname").is_none(), "no unverified hostname");
        let bad = RspamdRequest {
            helo: Some("a\r\nX: y"),
            ..Default::default()
        };
        assert!(matches!(
            c.request(&bad, ()),
            Err(RspamdErrorKind::Input(_))
        ));
    }

    #[test]
    fn yaml() {
        let c: RspamdConfig =
            serde_yaml_ng::from_str("name: rspamd\nrspamd: http://127.0.0.1:11333\n").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.default_action, DefaultAction::Tempfail);
        let e = serde_yaml_ng::from_str::<RspamdConfig>(
            "name: r\nrspamd: http://x:1\ncommand_timeout: 1s\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `command_timeout`"), "{e}");
    }
}
