//! The commands that do not touch the envelope's contents: RSET, NOOP, VRFY, EXPN, HELP,
//! QUIT, and STARTTLS.

use tracing::{info, warn};

use super::{End, Flow, Session};
use crate::reply::reply;
use crate::stream::{Stream, Transport};
use crate::telemetry::{ProtocolErrorKind, TransactionOutcome};

impl<S: Transport> Session<S> {
    pub(super) async fn rset(&mut self) -> Flow {
        self.junk += 1;
        self.finish_transaction(TransactionOutcome::Aborted, None);
        self.failed_chunk = None;
        self.reset_upstream().await;
        if let Some(chain) = self.filters.as_mut() {
            chain.abort().await;
        }
        self.push(&reply(250, (2, 0, 0), "Ok"));
        Flow::Continue
    }

    pub(super) fn noop(&mut self) -> Flow {
        self.junk += 1;
        self.push(&reply(250, (2, 0, 0), "Ok"));
        Flow::Continue
    }

    /// Never a mailbox probe: the upstream decides at RCPT.
    pub(super) fn vrfy(&mut self) -> Flow {
        self.junk += 1;
        self.push(&reply(
            252,
            (2, 0, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        ));
        Flow::Continue
    }

    pub(super) fn expn(&mut self) -> Flow {
        self.junk += 1;
        self.error_reply(reply(502, (5, 5, 1), "Error: EXPN not available"));
        Flow::Continue
    }

    pub(super) fn help(&mut self) -> Flow {
        self.junk += 1;
        self.push(&reply(
            214,
            (2, 0, 0),
            "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
        ));
        Flow::Continue
    }

    pub(super) fn quit(&mut self) -> Flow {
        self.push(&reply(221, (2, 0, 0), "Bye"));
        Flow::Quit
    }

    /// STARTTLS preconditions; the handshake itself runs after `220` is flushed.
    pub(super) fn starttls_command(&mut self) -> Flow {
        if self.client.tls {
            self.error_reply(reply(503, (5, 5, 1), "Error: TLS already active"));
            return Flow::Continue;
        }
        if self.listener.tls.is_none() {
            self.error_reply(reply(502, (5, 5, 1), "Error: command not implemented"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.error_reply(reply(503, (5, 5, 1), "Error: MAIL transaction in progress"));
            return Flow::Continue;
        }
        self.push(&reply(220, (2, 0, 0), "Ready to start TLS"));
        Flow::StartTls
    }

    /// Flushes `220`, discards any plaintext pipelined after STARTTLS (CVE-2011-0411
    /// class: it must never be executed inside the TLS session), handshakes, and resets
    /// the session to the state after the greeting (RFC 3207 §4.2).
    pub(super) async fn start_tls(&mut self) -> Result<(), End> {
        self.flush().await?;
        let injected = self.conn.discard_buffered();
        if injected > 0 {
            self.rt.metrics.session.starttls_injection();
            self.rt
                .metrics
                .session
                .protocol_error(ProtocolErrorKind::StarttlsInjection);
            warn!(session = %self.id, client = %self.client.ip, bytes = injected, "discarded plaintext pipelined after STARTTLS");
        }
        let acceptor = self.listener.tls.clone().ok_or(End::Limit("no TLS"))?;
        let tcp = self
            .conn
            .stream
            .take_plain()
            .ok_or(End::Limit("not plain"))?;
        let timeout = self.rt.config.limits.command_timeout;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.rt
                    .metrics
                    .session
                    .protocol_error(ProtocolErrorKind::TlsHandshake);
                info!(session = %self.id, client = %self.client.ip, error = %e, "TLS handshake failed");
                return Err(End::Io(format!("TLS handshake: {e}")));
            }
            Err(_) => {
                self.rt
                    .metrics
                    .session
                    .protocol_error(ProtocolErrorKind::Timeout);
                return Err(End::Timeout);
            }
        };
        self.conn.stream = Stream::ServerTls(Box::new(tls));
        self.client.tls = true;
        self.esmtp = false;
        self.helo = None;
        self.tx = None;
        self.session_accepted = false;
        if let Some(up) = self.upstream.take() {
            up.quit().await;
        }
        info!(session = %self.id, client = %self.client.ip, tls = self.conn.stream.tls_description().unwrap_or_default(), "STARTTLS");
        Ok(())
    }
}
