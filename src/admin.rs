//! Greylist administration: list, allow and purge entries of the state store — offline
//! from the command line, or live through the running server's HTTP listener (the only
//! way to edit a `file` store while the server holds its lock).
//!
//! The same [`AdminCommand`] runs in both places, so `mxguard greylist` prints the same
//! lines either way. The HTTP side is opt-in (`admin_endpoints: true`) because it changes
//! state: bind `metrics:` to loopback or a management network when enabling it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::config::IpNet;
use crate::store::{AllowTarget, GreyEntry, Store};

/// One greylist administration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Every live triplet and client network, one per line.
    List,
    /// Let a triplet (`net|sender|recipient`) or a client network pass for `ttl`.
    Allow { key: String, ttl: Duration },
    /// Remove entries whose key contains the pattern (all with an empty one).
    Purge { pattern: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("admin endpoint {addr}: {reason}")]
    Remote { addr: SocketAddr, reason: String },
}

/// Runs `cmd` against `store` and returns its text output.
pub async fn run(store: &dyn Store, cmd: &AdminCommand) -> Result<String, AdminError> {
    match cmd {
        AdminCommand::List => {
            let mut entries = store.list().await?;
            entries.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            Ok(entries
                .iter()
                .map(|e| format!("{}\n", entry_line(e)))
                .collect())
        }
        AdminCommand::Allow { key, ttl } => {
            store.allow(&allow_target(key)?, *ttl).await?;
            Ok(format!("allowed {key}\n"))
        }
        AdminCommand::Purge { pattern } => {
            let n = store.purge(pattern).await?;
            Ok(format!("purged {n} entries\n"))
        }
    }
}

fn entry_line(e: &GreyEntry) -> String {
    match e {
        GreyEntry::Triplet { key, record } => format!(
            "triplet {key} {} first_seen={} expires={}",
            if record.passed { "passed" } else { "pending" },
            record.first_seen / 1_000_000,
            record.expires / 1_000_000
        ),
        GreyEntry::Network { net, record } => format!(
            "network {net} passes={} expires={}",
            record.passes,
            record.expires / 1_000_000
        ),
    }
}

/// A key with `|` is a triplet; anything else must be a client network.
fn allow_target(key: &str) -> Result<AllowTarget, AdminError> {
    if key.contains('|') {
        return Ok(AllowTarget::Triplet(key.to_owned()));
    }
    let net: IpNet = key.parse().map_err(AdminError::BadRequest)?;
    Ok(AllowTarget::Network(net.to_string()))
}

/// The HTTP form of a command: `GET /greylist`, `POST /greylist/allow` (body: the key,
/// then the TTL on a second line), `POST /greylist/purge` (body: the pattern). Bodies
/// carry the arguments so keys with `|` and `@` need no URL encoding.
fn to_http(cmd: &AdminCommand) -> (Method, &'static str, String) {
    match cmd {
        AdminCommand::List => (Method::GET, "/greylist", String::new()),
        AdminCommand::Allow { key, ttl } => (
            Method::POST,
            "/greylist/allow",
            format!("{key}\n{}s\n", ttl.as_secs()),
        ),
        AdminCommand::Purge { pattern } => (Method::POST, "/greylist/purge", pattern.clone()),
    }
}

/// Parses a request of the HTTP listener into a command (`None`: not an admin path).
pub fn from_http(
    method: &Method,
    path: &str,
    body: &str,
) -> Option<Result<AdminCommand, AdminError>> {
    let bad = |m: &str| Some(Err(AdminError::BadRequest(m.to_owned())));
    match (method, path) {
        (&Method::GET, "/greylist") => Some(Ok(AdminCommand::List)),
        (&Method::POST, "/greylist/allow") => {
            let mut lines = body.lines().map(str::trim);
            let Some(key) = lines.next().filter(|k| !k.is_empty()) else {
                return bad("body: the key on the first line, the TTL (e.g. 35d) on the second");
            };
            let ttl = match lines.next().filter(|t| !t.is_empty()) {
                Some(t) => match crate::config::parse_duration(t) {
                    Ok(d) => d,
                    Err(e) => return bad(&e),
                },
                None => Duration::from_secs(35 * 86_400),
            };
            Some(Ok(AdminCommand::Allow {
                key: key.to_owned(),
                ttl,
            }))
        }
        (&Method::POST, "/greylist/purge") => Some(Ok(AdminCommand::Purge {
            pattern: body.trim().to_owned(),
        })),
        (_, p) if p.starts_with("/greylist") => {
            bad("use GET /greylist, POST /greylist/allow or POST /greylist/purge")
        }
        _ => None,
    }
}

/// Handles an admin request on the server: status and text body.
pub async fn serve(
    store: &dyn Store,
    cmd: Result<AdminCommand, AdminError>,
) -> (StatusCode, String) {
    let cmd = match cmd {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match run(store, &cmd).await {
        Ok(out) => {
            if !matches!(cmd, AdminCommand::List) {
                tracing::info!(command = ?cmd, "greylist changed through the admin endpoint");
            }
            (StatusCode::OK, out)
        }
        Err(e @ AdminError::BadRequest(_)) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Sends `cmd` to a running server's admin endpoint and returns its output.
pub async fn remote(addr: SocketAddr, cmd: &AdminCommand) -> Result<String, AdminError> {
    let fail = |reason: String| AdminError::Remote { addr, reason };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(conn);
    let (method, path, body) = to_http(cmd);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&text).into_owned();
    if status.is_success() {
        Ok(text)
    } else {
        Err(fail(format!("{status}: {}", text.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_form_round_trips() {
        for cmd in [
            AdminCommand::List,
            AdminCommand::Allow {
                key: "192.0.2.0/24|a@b.example|c@d.example".into(),
                ttl: Duration::from_secs(3600),
            },
            AdminCommand::Purge {
                pattern: "b.example".into(),
            },
        ] {
            let (m, p, body) = to_http(&cmd);
            assert_eq!(from_http(&m, p, &body).unwrap().unwrap(), cmd);
        }
        assert!(from_http(&Method::GET, "/metrics", "").is_none());
        assert!(
            from_http(&Method::DELETE, "/greylist", "")
                .unwrap()
                .is_err()
        );
        assert!(allow_target("not a network").is_err());
    }
}
