//! AUTH on submission listeners: the SASL exchange is relayed in lockstep to the
//! upstream, over the same session that will carry the mail, so the upstream MTA (with
//! its Dovecot or Cyrus SASL) stays the one place that knows passwords.
//!
//! mxguard learns only the user name (for rules, rate limits and logs); passwords are
//! never logged and never stored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tracing::{info, warn};

use super::{End, Flow, Session};
use crate::auth_guard::AuthGate;
use crate::config::IpNet;
use crate::reply::{Reply, reply};
use crate::telemetry::ProtocolErrorKind;

/// A SASL response line longer than this is refused (RFC 4954 has no limit; Postfix uses 12 KiB).
const MAX_SASL_LINE: usize = 12 * 1024;

impl Session {
    pub(super) async fn auth(&mut self, mechanism: u64, initial_response: String) -> Flow {
        if !self.listener.submission {
            self.error_reply(reply(503, (5, 5, 1), "Error: authentication not enabled"));
            return Flow::Continue;
        }
        if !self.client.tls {
            self.error_reply(reply(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
            return Flow::Continue;
        }
        if self.client.auth_user.is_some() {
            self.error_reply(reply(503, (5, 5, 1), "Error: already authenticated"));
            return Flow::Continue;
        }
        if self.env.sender.is_some() {
            self.error_reply(reply(503, (5, 5, 1), "Error: MAIL transaction in progress"));
            return Flow::Continue;
        }
        let name = match mechanism {
            smtp_proto::AUTH_PLAIN => "PLAIN",
            smtp_proto::AUTH_LOGIN => "LOGIN",
            _ => {
                self.error_reply(reply(
                    504,
                    (5, 5, 4),
                    "Error: unsupported authentication mechanism",
                ));
                return Flow::Continue;
            }
        };
        let network = self.client_network();
        if !self.rt.auth_guard.network_allowed(&network) {
            return self.too_many_auth_failures(None);
        }
        // The user name comes first, from the client alone: every limit is checked
        // before anything reaches the upstream's SASL.
        let first = match self.first_sasl_response(name, initial_response).await {
            Ok(Some(first)) => first,
            Ok(None) => {
                self.error_reply(reply(501, (5, 7, 0), "Authentication cancelled"));
                return Flow::Continue;
            }
            Err(end) => {
                info!(session = %self.id, client = %self.client.ip, reason = %end, "client left during AUTH");
                return Flow::Close;
            }
        };
        let Some(user) = user_from_response(name, &first, 0) else {
            self.rt.auth_guard.record_failure(&network, None);
            self.bad_input(
                ProtocolErrorKind::AuthFailed,
                reply(
                    501,
                    (5, 5, 2),
                    "Error: cannot decode the authentication response",
                ),
            );
            return Flow::Continue;
        };
        let key = crate::auth_guard::canonical_user(&user);
        match self.rt.auth_guard.gate(&network, &key) {
            AuthGate::Refuse => return self.too_many_auth_failures(Some(&user)),
            AuthGate::Delay(d) => {
                self.rt
                    .metrics
                    .protocol_error(ProtocolErrorKind::AuthDelayed);
                info!(session = %self.id, client = %self.client.ip, user = %user, delay_ms = d.as_millis() as u64, "AUTH delayed: user under a spread guessing attack");
                tokio::time::sleep(d).await;
            }
            AuthGate::Allow => {}
        }
        match self.relay_auth(name, first).await {
            Ok(AuthOutcome::Success { reply: r }) => {
                info!(session = %self.id, client = %self.client.ip, user = %user, mechanism = name, "authenticated");
                self.rt.auth_guard.record_success(&network, &key);
                self.client.auth_user = Some(user);
                self.push(&r);
                Flow::Continue
            }
            Ok(AuthOutcome::Refused { reply: r }) => {
                info!(session = %self.id, client = %self.client.ip, user = %user, mechanism = name, "authentication failed");
                self.rt.auth_guard.record_failure(&network, Some(&key));
                self.bad_input(ProtocolErrorKind::AuthFailed, r);
                Flow::Continue
            }
            Ok(AuthOutcome::Cancelled) => {
                self.error_reply(reply(501, (5, 7, 0), "Authentication cancelled"));
                Flow::Continue
            }
            Err(AuthError::Client(end)) => {
                info!(session = %self.id, client = %self.client.ip, reason = %end, "client left during AUTH");
                Flow::Close
            }
            Err(AuthError::Upstream(e)) => {
                warn!(session = %self.id, error = %e, "upstream failed during AUTH");
                self.upstream = None;
                self.push(&reply(
                    454,
                    (4, 7, 0),
                    "Temporary authentication failure, try again later",
                ));
                Flow::Continue
            }
        }
    }

    /// The client's first SASL response: the initial response on the AUTH line, or the
    /// answer to our own first challenge (`334 ` for PLAIN, `334 VXNlcm5hbWU6` —
    /// "Username:" — for LOGIN). `None` when the client cancels with `*`.
    async fn first_sasl_response(
        &mut self,
        mechanism: &str,
        initial: String,
    ) -> Result<Option<String>, End> {
        if !initial.is_empty() {
            return Ok((initial != "*" && initial != "=").then_some(initial));
        }
        let challenge = if mechanism == "LOGIN" {
            "VXNlcm5hbWU6"
        } else {
            ""
        };
        self.push(&Reply::new(334, crate::reply::StatusCode(3, 0, 0), challenge).without_status());
        let answer = self.read_sasl_line().await?;
        Ok((answer != "*").then_some(answer))
    }

    fn too_many_auth_failures(&mut self, user: Option<&str>) -> Flow {
        let r = reply(
            421,
            (4, 7, 0),
            "Error: too many failed authentication attempts, closing",
        );
        self.note_bad_input(ProtocolErrorKind::AuthRateLimited, &r);
        warn!(session = %self.id, client = %self.client.ip, user = user.unwrap_or(""), "too many failed AUTH attempts");
        self.push(&r);
        Flow::Close
    }

    fn client_network(&self) -> String {
        let l = &self.rt.config.limits;
        IpNet::containing(self.client.ip, l.ipv4_prefix, l.ipv6_prefix).to_string()
    }

    /// The exchange itself: AUTH with the client's first response to the upstream, then
    /// each 334 challenge to the client and its answer back, until the upstream says yes
    /// or no.
    async fn relay_auth(
        &mut self,
        mechanism: &str,
        first: String,
    ) -> Result<AuthOutcome, AuthError> {
        if self.upstream.is_none() {
            let up = self
                .rt
                .upstreams
                .connect(&self.identity())
                .await
                .map_err(AuthError::Upstream)?;
            self.upstream = Some(up);
        }
        let mut line = format!("AUTH {mechanism} {first}\r\n");
        loop {
            let up = self.upstream.as_mut().expect("connected above");
            let r = up
                .auth_step(line.as_bytes())
                .await
                .map_err(AuthError::Upstream)?;
            match r.code {
                235 => return Ok(AuthOutcome::Success { reply: r }),
                334 => {}
                _ => return Ok(AuthOutcome::Refused { reply: r }),
            }
            // A challenge: the client answers with one line.
            self.push(&Reply::multiline(334, r.status, r.lines().to_vec()).without_status());
            let answer = self.read_sasl_line().await.map_err(AuthError::Client)?;
            if answer == "*" {
                let up = self.upstream.as_mut().expect("connected above");
                let _ = up.auth_step(b"*\r\n").await;
                return Ok(AuthOutcome::Cancelled);
            }
            line = format!("{answer}\r\n");
        }
    }

    /// Reads the client's next line (a SASL response), flushing the challenge first.
    async fn read_sasl_line(&mut self) -> Result<String, End> {
        loop {
            if let Some(line) = self.next_line() {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if text.len() > MAX_SASL_LINE || !text.bytes().all(|b| b.is_ascii_graphic()) {
                    return Ok("*".into());
                }
                return Ok(text);
            }
            self.flush().await?;
            self.wait_for_input().await?;
        }
    }
}

enum AuthOutcome {
    Success { reply: Reply },
    Refused { reply: Reply },
    Cancelled,
}

enum AuthError {
    Client(End),
    Upstream(crate::relay::RelayError),
}

/// The user name carried by a client response: PLAIN's authentication identity (the
/// second NUL-separated field), or LOGIN's first answer. Never the password.
fn user_from_response(mechanism: &str, b64: &str, step: usize) -> Option<String> {
    if b64.is_empty() {
        return None;
    }
    let raw = B64.decode(b64).ok()?;
    let name = match (mechanism, step) {
        ("PLAIN", _) => raw.split(|&b| b == 0).nth(1)?.to_vec(),
        ("LOGIN", 0) => raw,
        _ => return None,
    };
    let name = String::from_utf8(name).ok()?;
    let clean: String = name.chars().filter(|c| !c.is_control()).take(256).collect();
    (!clean.is_empty()).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_never_passwords() {
        let plain = B64.encode(b"\0alice\0secret");
        assert_eq!(
            user_from_response("PLAIN", &plain, 0).as_deref(),
            Some("alice")
        );
        let login_user = B64.encode(b"bob");
        assert_eq!(
            user_from_response("LOGIN", &login_user, 0).as_deref(),
            Some("bob")
        );
        let login_pass = B64.encode(b"secret");
        assert_eq!(user_from_response("LOGIN", &login_pass, 1), None);
        assert_eq!(user_from_response("PLAIN", "!!notbase64", 0), None);
    }
}
