//! AUTH on submission listeners: the SASL exchange is relayed in lockstep to the
//! upstream, over the same session that will carry the mail, so the upstream MTA (with
//! its Dovecot or Cyrus SASL) stays the one place that knows passwords.
//!
//! The user name is learned from the client first — from its initial response, or from
//! its answer to our own first challenge — and every limit of the [`AuthGuard`] is checked
//! before anything is relayed. Each further response line arrives through the session's
//! one read loop (the `Sasl` input state). mxguard learns only the user name (for rules,
//! rate limits and logs); passwords are never logged and never stored.
//!
//! [`AuthGuard`]: crate::auth_guard::AuthGuard

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tracing::{info, warn};

use super::input::Input;
use super::{Flow, Session};
use crate::auth_guard::AuthGate;
use crate::config::IpNet;
use crate::reply::{Reply, StatusCode, reply};
use crate::stream::Transport;
use crate::telemetry::ProtocolErrorKind;

/// A SASL response line longer than this is refused (RFC 4954 has no limit; Postfix uses 12 KiB).
const MAX_SASL_LINE: usize = 12 * 1024;

/// Where an AUTH exchange stands while it waits for the client's next line.
#[derive(Debug)]
pub(super) enum SaslState {
    /// Our own first challenge is out: the answer carries the user name.
    First { mechanism: &'static str },
    /// The upstream's challenge is out: the answer goes to the upstream.
    Relaying {
        mechanism: &'static str,
        user: String,
        network: String,
    },
}

impl<S: Transport> Session<S> {
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
        if self.tx.is_some() {
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
        if !self.rt.auth_guard.network_allowed(&self.client_network()) {
            return self.too_many_auth_failures(None);
        }
        if !initial_response.is_empty() {
            if initial_response == "*" || initial_response == "=" {
                return self.auth_cancelled();
            }
            return self.auth_with_first(name, initial_response).await;
        }
        // No initial response: our own first challenge ("Username:" for LOGIN).
        let challenge = if name == "LOGIN" { "VXNlcm5hbWU6" } else { "" };
        self.push(&Reply::new(334, StatusCode(3, 0, 0), challenge).without_status());
        self.input = Input::Sasl(SaslState::First { mechanism: name });
        Flow::Continue
    }

    /// A SASL response line from the client, in the state the exchange is in.
    pub(super) async fn sasl_line(&mut self, raw: &[u8]) -> Flow {
        let Input::Sasl(state) = std::mem::replace(&mut self.input, Input::Command) else {
            return Flow::Continue;
        };
        let text = String::from_utf8_lossy(raw)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        let answer = if text.len() > MAX_SASL_LINE || !text.bytes().all(|b| b.is_ascii_graphic()) {
            "*".to_owned()
        } else {
            text
        };
        match state {
            SaslState::First { .. } if answer == "*" => self.auth_cancelled(),
            SaslState::First { mechanism } => self.auth_with_first(mechanism, answer).await,
            SaslState::Relaying { .. } if answer == "*" => {
                if let Some(up) = self.upstream.as_mut() {
                    let _ = up.auth_step(b"*\r\n").await;
                }
                self.auth_cancelled()
            }
            SaslState::Relaying {
                mechanism,
                user,
                network,
            } => {
                let line = format!("{answer}\r\n");
                self.auth_step(mechanism, user, network, line).await
            }
        }
    }

    /// The client's first response is known: learn the user, check every limit, and
    /// only then start the exchange upstream.
    async fn auth_with_first(&mut self, mechanism: &'static str, first: String) -> Flow {
        let network = self.client_network();
        let Some(user) = user_from_response(mechanism, &first) else {
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
                    .session
                    .protocol_error(ProtocolErrorKind::AuthDelayed);
                info!(session = %self.id, client = %self.client.ip, user = %user, delay_ms = d.as_millis() as u64, "AUTH delayed: user under a spread guessing attack");
                tokio::time::sleep(d).await;
            }
            AuthGate::Allow => {}
        }
        if self.upstream.is_none() {
            match self.rt.upstreams.connect(&self.identity()).await {
                Ok(up) => self.upstream = Some(Box::new(up)),
                Err(e) => return self.auth_upstream_failed(&e),
            }
        }
        let line = format!("AUTH {mechanism} {first}\r\n");
        self.auth_step(mechanism, user, network, line).await
    }

    /// One line to the upstream; its answer ends the exchange (235, a refusal) or is a
    /// challenge passed on to the client.
    async fn auth_step(
        &mut self,
        mechanism: &'static str,
        user: String,
        network: String,
        line: String,
    ) -> Flow {
        let Some(up) = self.upstream.as_mut() else {
            return Flow::Continue;
        };
        let r = match up.auth_step(line.as_bytes()).await {
            Ok(r) => r,
            Err(e) => return self.auth_upstream_failed(&e),
        };
        let key = crate::auth_guard::canonical_user(&user);
        match r.code {
            235 => {
                info!(session = %self.id, client = %self.client.ip, user = %user, mechanism, "authenticated");
                self.rt.auth_guard.record_success(&network, &key);
                self.client.auth_user = Some(user);
                self.auth_mechanism = Some(mechanism.to_owned());
                self.filters_client_changed().await;
                self.push(&r);
            }
            334 => {
                self.push(&r.clone().without_status());
                self.input = Input::Sasl(SaslState::Relaying {
                    mechanism,
                    user,
                    network,
                });
            }
            _ => {
                info!(session = %self.id, client = %self.client.ip, user = %user, mechanism, "authentication failed");
                self.rt.auth_guard.record_failure(&network, Some(&key));
                self.bad_input(ProtocolErrorKind::AuthFailed, r);
            }
        }
        Flow::Continue
    }

    fn auth_cancelled(&mut self) -> Flow {
        self.error_reply(reply(501, (5, 7, 0), "Authentication cancelled"));
        Flow::Continue
    }

    fn auth_upstream_failed(&mut self, e: &crate::relay::RelayError) -> Flow {
        self.upstream_fault("auth", e);
        self.push(&super::fault::auth_unavailable());
        Flow::Continue
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
}

/// The user name carried by the client's first response: PLAIN's authentication identity
/// (the second NUL-separated field), or LOGIN's user name. Never the password.
fn user_from_response(mechanism: &str, b64: &str) -> Option<String> {
    if b64.is_empty() {
        return None;
    }
    let raw = B64.decode(b64).ok()?;
    let name = match mechanism {
        "PLAIN" => raw.split(|&b| b == 0).nth(1)?.to_vec(),
        _ => raw,
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
            user_from_response("PLAIN", &plain).as_deref(),
            Some("alice")
        );
        let login_user = B64.encode(b"bob");
        assert_eq!(
            user_from_response("LOGIN", &login_user).as_deref(),
            Some("bob")
        );
        assert_eq!(user_from_response("PLAIN", "!!notbase64"), None);
        assert_eq!(user_from_response("PLAIN", &B64.encode(b"nonuls")), None);
    }
}
