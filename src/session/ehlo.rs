//! HELO and EHLO: the client names itself; we name what we offer.

use tracing::debug;

use super::{Flow, Session};
use crate::envelope::Stage;
use crate::relay::Capabilities;
use crate::reply::{Reply, StatusCode};
use crate::stream::Transport;
use crate::telemetry::TransactionOutcome;

/// The extensions a client was offered that depend on the upstreams: every configured
/// upstream seen so far supports them (see [`crate::relay::Upstreams::offered`]). What a
/// client may use is decided by this, per session, never by whichever upstream
/// connection happened to be opened last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Offer {
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub chunking: bool,
    /// SIZE as advertised.
    pub size: u64,
    /// SASL mechanisms we relay that every upstream offers.
    pub auth: Vec<String>,
}

impl Offer {
    fn from(caps: Option<&Capabilities>, max_size: u64) -> Offer {
        let Some(c) = caps else {
            return Offer {
                size: max_size,
                ..Offer::default()
            };
        };
        let size = match c.size {
            Some(up) if up > 0 => max_size.min(up),
            _ => max_size,
        };
        Offer {
            eight_bit_mime: c.eight_bit_mime,
            smtputf8: c.smtputf8,
            dsn: c.dsn,
            chunking: c.chunking,
            size,
            auth: ["PLAIN", "LOGIN"]
                .into_iter()
                .filter(|m| c.auth.iter().any(|a| a == m))
                .map(str::to_owned)
                .collect(),
        }
    }
}

impl<S: Transport> Session<S> {
    /// HELO/EHLO. Resets any transaction (RFC 5321 §4.1.4), runs the `helo` rules, and
    /// answers with the extensions both we and the upstreams support.
    pub(super) async fn ehlo(&mut self, host: String, esmtp: bool) -> Flow {
        if self.tx.is_some() {
            self.finish_transaction(TransactionOutcome::Aborted, None);
            self.reset_upstream().await;
        }
        self.failed_chunk = None;
        let previous = self.helo.replace(host);
        if let Some(refusal) = self.evaluate(Stage::Helo, None).await {
            self.helo = previous;
            self.error_reply(refusal);
            return Flow::Continue;
        }
        // A changed HELO name changes the identity the upstream must see, and the
        // filters'.
        if let Some(up) = self.upstream.take() {
            up.quit().await;
        }
        self.filters_client_changed().await;
        self.esmtp = esmtp;
        self.offered = Offer::from(
            self.rt.upstreams.offered().as_ref(),
            self.rt.config.limits.max_message_size,
        );
        let hostname = self.rt.config.hostname.clone();
        let r = if esmtp {
            let mut lines = vec![hostname];
            lines.extend(self.extensions());
            Reply::multiline(250, StatusCode(2, 0, 0), lines)
        } else {
            Reply::new(250, StatusCode(2, 0, 0), hostname)
        };
        debug!(session = %self.id, helo = self.helo.as_deref().unwrap_or(""), esmtp, "helo");
        self.push(&r.without_status());
        Flow::Continue
    }

    /// The EHLO keywords: our own (PIPELINING, ENHANCEDSTATUSCODES, STARTTLS), and those
    /// that depend on the upstreams only when every one of them offers them too. Never
    /// BINARYMIME (Postfix has none, and we re-encode messages).
    fn extensions(&self) -> Vec<String> {
        let o = &self.offered;
        let mut ext = vec!["PIPELINING".to_owned(), format!("SIZE {}", o.size)];
        if o.eight_bit_mime {
            ext.push("8BITMIME".into());
        }
        ext.push("ENHANCEDSTATUSCODES".into());
        if o.smtputf8 {
            ext.push("SMTPUTF8".into());
        }
        if o.dsn {
            ext.push("DSN".into());
        }
        if o.chunking {
            ext.push("CHUNKING".into());
        }
        if self.listener.tls.is_some() && !self.client.tls {
            ext.push("STARTTLS".into());
        }
        if let Some(mechs) = self.offered_auth_mechanisms() {
            ext.push(format!("AUTH {mechs}"));
        }
        ext
    }

    /// AUTH is offered on submission listeners, only under TLS (credentials never cross
    /// in plaintext), with the mechanisms we relay that the upstreams offer too.
    fn offered_auth_mechanisms(&self) -> Option<String> {
        if !self.listener.submission || !self.client.tls || self.client.auth_user.is_some() {
            return None;
        }
        let mechs = &self.offered.auth;
        (!mechs.is_empty()).then(|| mechs.join(" "))
    }
}
