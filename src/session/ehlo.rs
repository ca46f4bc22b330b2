//! HELO and EHLO: the client names itself; we name what we offer.

use tracing::debug;

use super::{Flow, Session};
use crate::envelope::Stage;
use crate::reply::{Reply, StatusCode};

impl Session {
    /// HELO/EHLO. Resets any transaction (RFC 5321 §4.1.4), runs the `helo` rules, and
    /// answers with the extensions both we and the upstream support.
    pub(super) async fn ehlo(&mut self, host: String, esmtp: bool) -> Flow {
        if self.env.sender.is_some() {
            self.finish_transaction("aborted", None);
            self.reset_upstream().await;
        }
        let previous = self.env.helo.replace(host);
        if let Some(refusal) = self.evaluate(Stage::Helo).await {
            self.env.helo = previous;
            self.error_reply(refusal);
            return Flow::Continue;
        }
        // A changed HELO name changes the identity the upstream must see.
        if let Some(up) = self.upstream.take() {
            up.quit().await;
        }
        self.esmtp = esmtp;
        let hostname = self.rt.config.hostname.clone();
        let r = if esmtp {
            let mut lines = vec![hostname];
            lines.extend(self.extensions());
            Reply::multiline(250, StatusCode(2, 0, 0), lines)
        } else {
            Reply::new(250, StatusCode(2, 0, 0), hostname)
        };
        debug!(session = %self.id, helo = self.env.helo.as_deref().unwrap_or(""), esmtp, "helo");
        self.push(&r.without_status());
        Flow::Continue
    }

    /// The EHLO keywords: our own (PIPELINING, ENHANCEDSTATUSCODES, STARTTLS), and
    /// those that depend on the upstream only when it offers them too. Until the upstream
    /// has been seen, only the ones we can honour alone.
    pub(super) fn extensions(&self) -> Vec<String> {
        let mut ext = vec!["PIPELINING".to_owned()];
        let caps = self.rt.upstreams.capabilities();
        let max = self.rt.config.limits.max_message_size;
        let size = match caps.as_deref().and_then(|c| c.size) {
            Some(up) if up > 0 => max.min(up),
            _ => max,
        };
        ext.push(format!("SIZE {size}"));
        if caps.as_deref().is_some_and(|c| c.eight_bit_mime) {
            ext.push("8BITMIME".into());
        }
        ext.push("ENHANCEDSTATUSCODES".into());
        if caps.as_deref().is_some_and(|c| c.smtputf8) {
            ext.push("SMTPUTF8".into());
        }
        if self.listener.tls.is_some() && !self.client.tls {
            ext.push("STARTTLS".into());
        }
        if let Some(mechs) = self.offered_auth_mechanisms(caps.as_deref()) {
            ext.push(format!("AUTH {mechs}"));
        }
        ext
    }

    /// AUTH is offered on submission listeners, only under TLS (credentials never cross
    /// in plaintext), with the mechanisms we relay that the upstream offers too.
    fn offered_auth_mechanisms(&self, caps: Option<&crate::relay::Capabilities>) -> Option<String> {
        if !self.listener.submission || !self.client.tls || self.client.auth_user.is_some() {
            return None;
        }
        let caps = caps?;
        let mechs: Vec<&str> = ["PLAIN", "LOGIN"]
            .into_iter()
            .filter(|m| caps.auth.iter().any(|a| a == m))
            .collect();
        (!mechs.is_empty()).then(|| mechs.join(" "))
    }
}
