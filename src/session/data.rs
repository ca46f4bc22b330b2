//! DATA: receive the message under strict end-of-data rules, check it, relay it.
//!
//! The client gets `250` only after the upstream said `250` for the same message; any
//! upstream trouble becomes `451 4.4.1` so the sender retries. Nothing is queued here.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::mail::{refusal_outcome, upstream_outcome};
use super::{COMMAND_CHUNK, End, Flow, Session};
use crate::checks::auth_results;
use crate::dotstream::{Anomalies, Decoder};
use crate::envelope::{Checks, Stage};
use crate::relay::TraceMode;
use crate::reply::{Reply, StatusCode, reply};
use crate::spool::Spool;
use crate::stream::ReadError;
use crate::telemetry::ProtocolErrorKind;

/// Read size while a message is being received.
const DATA_CHUNK: usize = 64 * 1024;

/// What went wrong while receiving, decided after the final dot.
#[derive(Debug, Default)]
struct Received {
    size: u64,
    anomalies: Anomalies,
    oversize: bool,
    header_too_big: bool,
    spool_error: Option<std::io::Error>,
}

impl Session {
    /// DATA preconditions; `354` and the message itself follow in [`Self::receive_data`].
    pub(super) async fn data(&mut self) -> Flow {
        if self.env.sender.is_none() {
            self.error_reply(reply(503, (5, 5, 1), "Error: need MAIL command"));
            return Flow::Continue;
        }
        if self.upstream_failed {
            self.push(&super::rcpt::upstream_aborted());
            return Flow::Continue;
        }
        if self.env.recipients.is_empty() {
            let r = if self.rcpts_tried > 0 {
                reply(554, (5, 5, 1), "Error: no valid recipients")
            } else {
                reply(503, (5, 5, 1), "Error: need RCPT command")
            };
            self.error_reply(r);
            return Flow::Continue;
        }
        if !self.conn.buffered().is_empty() {
            // The message was sent before our 354: a client that does not wait for replies
            // (RFC 2920 makes DATA the last command of a group). Refuse and close.
            let r = reply(554, (5, 5, 0), "Error: SMTP protocol synchronization");
            self.note_bad_input(ProtocolErrorKind::PipeliningAfterData, &r);
            self.push(&r);
            return Flow::Close;
        }
        self.push(
            &Reply::new(354, StatusCode(2, 0, 0), "End data with <CR><LF>.<CR><LF>")
                .without_status(),
        );
        Flow::Data
    }

    /// Receives the message into a spool, then answers for it.
    pub(super) async fn receive_data(&mut self) -> Result<(), End> {
        self.flush().await?;
        let limits = self.rt.config.limits.clone();
        let normalize = self.rt.normalizes(self.client.ip);
        let mut decoder = Decoder::new(normalize);
        let mut spool = Spool::new(&self.rt.spool_dir, limits.memory_spool_threshold);
        // The declared SIZE (bounded by what stays in memory) saves regrowing the buffer.
        spool.reserve(self.env.declared_size.unwrap_or(0));
        let mut headers = HeaderScan::default();
        let mut got = Received::default();
        // Grows to the size of what one read decodes; small messages stay small.
        let mut decoded = Vec::new();
        let started = Instant::now();
        let mut wire_bytes: u64 = 0;
        let every = self
            .upstream
            .as_ref()
            .map_or(Duration::from_secs(60), |u| u.keepalive);
        let mut keepalive = tokio::time::interval_at(started + every, every);
        self.conn.set_chunk(DATA_CHUNK);
        loop {
            decoded.clear();
            let input = self.conn.buffered();
            let used = decoder.decode(input, &mut decoded);
            self.conn.consume(used);
            wire_bytes += used as u64;
            got.size += decoded.len() as u64;
            if !headers.done {
                headers.scan(&decoded);
                got.header_too_big |= headers.bytes > limits.max_header_size;
            }
            got.oversize |= got.size > limits.max_message_size;
            let refused = got.oversize
                || got.header_too_big
                || got.spool_error.is_some()
                || (!normalize && decoder.anomalies().any());
            if !refused && let Err(e) = spool.append(&decoded).await {
                got.spool_error = Some(e);
            }
            if decoder.is_done() {
                break;
            }
            let deadline = data_deadline(
                started,
                wire_bytes,
                limits.command_timeout,
                limits.min_data_rate,
            );
            let input = tokio::select! {
                r = self.conn.fill(deadline) => Some(r),
                _ = keepalive.tick(), if self.upstream.is_some() => None,
            };
            let Some(input) = input else {
                self.keep_upstream_alive().await;
                continue;
            };
            match input {
                Ok(_) => {}
                Err(ReadError::Timeout) => {
                    self.conn.set_chunk(COMMAND_CHUNK);
                    let r = reply(
                        421,
                        (4, 4, 2),
                        format!("{} Error: timeout exceeded", self.rt.config.hostname),
                    );
                    self.note_bad_input(ProtocolErrorKind::DataTimeout, &r);
                    self.push(&r);
                    let _ = self.flush().await;
                    return Err(End::Timeout);
                }
                Err(ReadError::Closed) => return Err(End::ClientClosed),
                Err(ReadError::Io(e)) => return Err(End::Io(e.to_string())),
            }
        }
        self.conn.set_chunk(COMMAND_CHUNK);
        if got.spool_error.is_none()
            && let Err(e) = spool.flush().await
        {
            got.spool_error = Some(e);
        }
        got.anomalies = decoder.anomalies();
        let eod = Instant::now();
        let r = self.end_of_data(spool, got, normalize).await;
        self.rt
            .metrics
            .end_of_data_seconds
            .observe(eod.elapsed().as_secs_f64());
        self.push(&r);
        Ok(())
    }

    /// A NOOP to the waiting upstream while the client is still sending; a session that
    /// does not answer is dropped (the message then gets 451 4.4.1 and is retried).
    async fn keep_upstream_alive(&mut self) {
        if let Some(up) = self.upstream.as_mut()
            && let Err(e) = up.noop().await
        {
            warn!(session = %self.id, error = %e, "upstream lost while the client was sending");
            self.upstream = None;
            self.upstream_in_transaction = false;
        }
    }

    /// Decides a fully received message: limits, content rules, then the upstream.
    async fn end_of_data(&mut self, mut spool: Spool, got: Received, normalize: bool) -> Reply {
        self.message_size = got.size;
        self.rt.metrics.message_size_bytes.observe(got.size as f64);
        if let Some((kind, r)) = self.refusal_for_content(&got, normalize) {
            self.note_bad_input(kind, &r);
            return self.refuse_message(r).await;
        }
        if let Some(e) = &got.spool_error {
            return self.local_failure("spool write", e).await;
        }
        let mut view = crate::policy::message_view(
            spool.head(),
            self.rt.config.limits.body_scan_limit as usize,
        );
        view.size = got.size;
        let want = self.checks_wanted(Stage::Data);
        if want.intersects(Checks::DKIM | Checks::DMARC | Checks::ARC) {
            // DKIM needs the whole message; it is bounded by the size limit.
            match spool.read_all().await {
                Ok(raw) => self.run_checks(want, Some(&raw)).await,
                Err(e) => return self.local_failure("spool read", &e).await,
            }
        } else {
            self.run_checks(want, None).await;
        }
        if let Some(refusal) = self.evaluate_with(Stage::Data, Some(&view)).await {
            return self.refuse_message(refusal).await;
        }
        let prepend = self.headers_to_prepend();
        let Some(up) = self.upstream.as_mut() else {
            self.finish_transaction("upstream_failed", None);
            return reply(
                451,
                (4, 4, 1),
                "Error: upstream unavailable, try again later",
            );
        };
        // An incoming Authentication-Results under our name is a forgery: drop it.
        let forged = auth_results::forged_ranges(spool.head(), self.rt.config.authserv_id());
        match up.data(prepend.as_bytes(), &forged, &mut spool).await {
            Ok(r) if r.code == 250 => {
                self.upstream_in_transaction = false;
                self.finish_transaction("delivered", Some(&r));
                r
            }
            Ok(r) if r.code == 421 || r.is_positive() => {
                // A 421 is about the upstream's own connection (and names its host); a 2xx
                // other than 250 after the dot is not an acceptance we can vouch for.
                warn!(session = %self.id, client = %self.client.ip, reply = %r, "upstream gave no usable answer to the message");
                self.finish_transaction("upstream_failed", Some(&r));
                self.upstream = None;
                self.upstream_in_transaction = false;
                reply(
                    451,
                    (4, 4, 1),
                    "Error: upstream failure, message not accepted, try again later",
                )
            }
            Ok(r) => {
                self.finish_transaction(upstream_outcome(&r), Some(&r));
                self.reset_upstream().await;
                self.errors += 1;
                r
            }
            Err(e) => {
                warn!(session = %self.id, client = %self.client.ip, error = %e, "upstream failed at DATA");
                self.upstream = None;
                self.upstream_in_transaction = false;
                self.finish_transaction("upstream_failed", None);
                reply(
                    451,
                    (4, 4, 1),
                    "Error: upstream failure, message not accepted, try again later",
                )
            }
        }
    }

    /// Limits and content defects found while receiving, with their metric kind.
    fn refusal_for_content(
        &self,
        got: &Received,
        normalize: bool,
    ) -> Option<(ProtocolErrorKind, Reply)> {
        if got.oversize {
            return Some((
                ProtocolErrorKind::Size,
                reply(552, (5, 3, 4), "Error: message file too big"),
            ));
        }
        if got.header_too_big {
            return Some((
                ProtocolErrorKind::HeaderSize,
                reply(552, (5, 3, 4), "Error: message header too big"),
            ));
        }
        if !normalize && (got.anomalies.bare_cr || got.anomalies.bare_lf) {
            return Some((
                ProtocolErrorKind::BareLineEnd,
                reply(
                    550,
                    (5, 6, 0),
                    "Error: message contains bare CR or bare LF (see RFC 5321 section 2.3.8)",
                ),
            ));
        }
        if !normalize && got.anomalies.nul {
            return Some((
                ProtocolErrorKind::NulInData,
                reply(550, (5, 6, 0), "Error: message contains NUL characters"),
            ));
        }
        None
    }

    /// Our own failure (the spool): a 4xx so the sender retries; not the client's fault,
    /// so not counted as bad input. A full disk says so (`452 4.3.1`, RFC 3463).
    async fn local_failure(&mut self, what: &str, e: &std::io::Error) -> Reply {
        warn!(session = %self.id, error = %e, "{what} failed");
        self.finish_transaction("tempfailed", None);
        self.reset_upstream().await;
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        if matches!(e.kind(), StorageFull | QuotaExceeded) {
            return reply(
                452,
                (4, 3, 1),
                "Error: insufficient system storage, try again later",
            );
        }
        reply(451, (4, 3, 0), "Error: local error, try again later")
    }

    /// Refuses the received message (a content limit or a `data` rule): it never reaches
    /// the upstream, whose transaction is reset.
    async fn refuse_message(&mut self, r: Reply) -> Reply {
        self.errors += 1;
        self.finish_transaction(refusal_outcome(&r), None);
        self.reset_upstream().await;
        r
    }

    /// Our trace header when the upstream cannot be told the client any other way, and
    /// the headers rules asked for.
    fn headers_to_prepend(&self) -> String {
        let mut prepend = String::new();
        let no_client_trace = self
            .upstream
            .as_ref()
            .is_some_and(|u| u.trace == TraceMode::ReceivedHeader);
        if no_client_trace || self.client.tls {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            prepend.push_str(&crate::relay::trace::received_header(
                &self.identity(),
                &self.rt.config.hostname,
                now,
            ));
        }
        if self.rt.config.adds_auth_results(&self.auth_facts) {
            prepend.push_str(&auth_results::header(
                self.rt.config.authserv_id(),
                &self.auth_facts,
                self.client.ip,
                self.env.helo.as_deref().unwrap_or(""),
                self.env.sender.as_deref().unwrap_or(""),
            ));
        }
        for h in &self.pending_headers {
            prepend.push_str(h);
            prepend.push_str("\r\n");
        }
        prepend
    }
}

/// The deadline for the next read during DATA: each read gets the command timeout, and
/// the whole transfer must keep up the minimum rate (Postfix `smtpd_min_data_rate`):
/// every byte received buys `1/min_rate` seconds beyond the first timeout.
fn data_deadline(started: Instant, bytes: u64, timeout: Duration, min_rate: u64) -> Instant {
    let per_read = Instant::now() + timeout;
    if min_rate == 0 {
        return per_read;
    }
    let overall = started + timeout + Duration::from_secs_f64(bytes as f64 / min_rate as f64);
    per_read.min(overall)
}

/// Finds the end of the header section in a stream of canonical message bytes.
#[derive(Debug, Default)]
struct HeaderScan {
    done: bool,
    bytes: u64,
    /// How much of "\r\n\r\n" has matched; starts as if a CRLF preceded the message.
    matched: u8,
    started: bool,
}

impl HeaderScan {
    fn scan(&mut self, chunk: &[u8]) {
        if !self.started {
            self.started = true;
            self.matched = 2;
        }
        for &b in chunk {
            self.bytes += 1;
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.matched == 4 {
                self.done = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_scan_finds_end_across_chunks() {
        let msg = b"Subject: a\r\nX: b\r\n\r\nbody\r\n";
        for cut in 0..msg.len() {
            let mut s = HeaderScan::default();
            s.scan(&msg[..cut]);
            if !s.done {
                s.scan(&msg[cut..]);
            }
            assert!(s.done);
            assert_eq!(s.bytes, 20, "cut {cut}");
        }
        let mut s = HeaderScan::default();
        s.scan(b"\r\nbody only");
        assert!(s.done);
        assert_eq!(s.bytes, 2);
    }

    #[test]
    fn data_deadline_enforces_minimum_rate() {
        let t0 = Instant::now();
        let d = data_deadline(t0, 1000, Duration::from_secs(10), 500);
        assert!(d <= t0 + Duration::from_secs(12) + Duration::from_millis(5));
    }
}
