//! The input states of the one read loop, command lines, and how long the session waits
//! for the next bytes in each state.

use std::time::Duration;

use tokio::time::Instant;

use super::auth::SaslState;
use super::{End, Session};
use crate::reply::reply;
use crate::runtime::shutdown_signalled;
use crate::stream::{ReadError, Transport};
use crate::telemetry::ProtocolErrorKind;

/// What the next bytes from the client are.
#[derive(Debug)]
pub(super) enum Input {
    /// Command lines.
    Command,
    /// DATA content, up to `CRLF.CRLF`.
    Data,
    /// The octets of a BDAT chunk (RFC 3030): `left` of `size` more, since `started`. A
    /// refused chunk is read and thrown away all the same, to stay in step with the
    /// client.
    Bdat {
        size: u64,
        left: u64,
        last: bool,
        started: Instant,
    },
    /// A SASL exchange waits for the client's next response line.
    Sasl(SaslState),
}

impl<S: Transport> Session<S> {
    /// Takes the next complete command line out of the buffer, enforcing the length limit.
    pub(super) fn next_line(&mut self) -> Option<Vec<u8>> {
        let max = self.rt.config.limits.max_line_length;
        loop {
            let buf = self.conn.buffered();
            match memchr::memchr(b'\n', buf) {
                Some(pos) => {
                    let line = buf[..=pos].to_vec();
                    self.conn.consume(pos + 1);
                    // The next line gets a deadline of its own.
                    self.line_started = None;
                    self.line_stressed = false;
                    if self.discarding_long_line || line.len() > max {
                        self.discarding_long_line = false;
                        self.line_too_long();
                        continue;
                    }
                    return Some(line);
                }
                None if buf.len() > max => {
                    // No end in sight: drop what we have and skip to the end of the line.
                    let n = buf.len();
                    self.conn.consume(n);
                    self.discarding_long_line = true;
                    return None;
                }
                None => return None,
            }
        }
    }

    fn line_too_long(&mut self) {
        self.bad_input(
            ProtocolErrorKind::LineTooLong,
            reply(500, (5, 5, 2), "Error: line too long"),
        );
    }

    /// The command timeout for the line now awaited: the stress timeout once stress hit it.
    fn command_timeout(&self) -> Duration {
        let l = &self.rt.config.limits;
        if self.line_stressed {
            l.command_timeout.min(l.stress_command_timeout)
        } else {
            l.command_timeout
        }
    }

    /// Waits for more input in the current state, or for shutdown.
    ///
    /// For command and SASL lines the deadline is per line: it runs from when we began
    /// waiting for the line, so a client dripping one byte at a time cannot hold its
    /// slot longer than one timeout; when the server comes under stress the (shorter)
    /// stress timeout applies at once, also to lines already awaited. For message
    /// content, each read gets the command timeout and the whole transfer must keep up
    /// the minimum data rate; meanwhile the waiting upstream gets a NOOP now and then.
    pub(super) async fn wait_for_input(&mut self) -> Result<(), End> {
        if self.receiving_message() {
            return self.wait_for_message_bytes().await;
        }
        let started = *self.line_started.get_or_insert_with(Instant::now);
        let mut shutdown = self.rt.shutdown.clone();
        let mut stress = self.rt.sessions.stress_changes();
        let in_transaction = self.tx.is_some();
        let result = loop {
            // Once stress has cut this line's deadline, it stays cut (even if the stress
            // ends a moment later): the short timeout is what the client was given.
            self.line_stressed |= self.rt.sessions.stressed();
            let deadline = started + self.command_timeout();
            tokio::select! {
                r = self.conn.fill(deadline) => break r,
                _ = stress.changed() => continue,
                _ = shutdown_signalled(&mut shutdown), if !in_transaction => {
                    self.push(&reply(421, (4, 3, 2), format!("{} Service shutting down, closing transmission channel", self.rt.config.hostname)));
                    let _ = self.flush().await;
                    return Err(End::Shutdown);
                }
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(ReadError::Timeout) => {
                // A partial line pending: a dripper, not an idle client.
                let kind = if self.line_stressed {
                    ProtocolErrorKind::StressTimeout
                } else if self.conn.buffered().is_empty() && !self.discarding_long_line {
                    ProtocolErrorKind::Timeout
                } else {
                    ProtocolErrorKind::SlowCommand
                };
                Err(self.timed_out(kind).await)
            }
            Err(ReadError::Closed) => Err(End::ClientClosed),
            Err(ReadError::Io(e)) => Err(End::Io(e.to_string())),
        }
    }

    /// `421 4.4.2` and the end of the session.
    async fn timed_out(&mut self, kind: ProtocolErrorKind) -> End {
        let r = reply(
            421,
            (4, 4, 2),
            format!("{} Error: timeout exceeded", self.rt.config.hostname),
        );
        self.note_bad_input(kind, &r);
        self.push(&r);
        let _ = self.flush().await;
        End::Timeout
    }

    /// Waits for message content (DATA or a BDAT chunk) under the data deadlines,
    /// keeping the waiting upstream transaction alive.
    async fn wait_for_message_bytes(&mut self) -> Result<(), End> {
        let Some((started, wire_bytes, next_noop)) = self.message_clock() else {
            return Ok(());
        };
        let limits = &self.rt.config.limits;
        let deadline = data_deadline(
            started,
            wire_bytes,
            limits.command_timeout,
            limits.min_data_rate,
        );
        let noop_due = self.upstream.is_some().then_some(next_noop);
        let in_data = matches!(self.input, Input::Data) && self.chunk_refusal.is_none();
        let result = tokio::select! {
            r = Self::read_message_bytes(&mut self.conn, self.receiving.as_deref_mut(), in_data, deadline) => r,
            _ = sleep_until_opt(noop_due) => {
                self.keep_upstream_alive().await;
                return Ok(());
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(ReadError::Timeout) => Err(self.timed_out(ProtocolErrorKind::DataTimeout).await),
            Err(ReadError::Closed) => Err(End::ClientClosed),
            Err(ReadError::Io(e)) => Err(End::Io(e.to_string())),
        }
    }

    /// A NOOP to the waiting upstream while the client is still sending; a session that
    /// does not answer is dropped (the message then gets 451 4.4.1 and is retried).
    async fn keep_upstream_alive(&mut self) {
        self.message_noop_sent();
        if let Some(up) = self.upstream.as_mut()
            && let Err(e) = up.noop().await
        {
            self.upstream_fault("data", &format!("lost while the client was sending: {e}"));
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The deadline for the next read of message content: each read gets the command
/// timeout, and the whole transfer must keep up the minimum rate (Postfix
/// `smtpd_min_data_rate`): every byte received buys `1/min_rate` seconds beyond the
/// first timeout.
pub(super) fn data_deadline(
    started: Instant,
    bytes: u64,
    timeout: Duration,
    min_rate: u64,
) -> Instant {
    let per_read = Instant::now() + timeout;
    if min_rate == 0 {
        return per_read;
    }
    let overall = started + timeout + Duration::from_secs_f64(bytes as f64 / min_rate as f64);
    per_read.min(overall)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);

    /// The deadline `data_deadline` gives at `elapsed` into a transfer that has brought
    /// `bytes` so far, as an offset from the transfer's start.
    async fn deadline_after(elapsed: u64, bytes: u64, min_rate: u64) -> Duration {
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(elapsed)).await;
        data_deadline(started, bytes, TIMEOUT, min_rate) - started
    }

    #[tokio::test(start_paused = true)]
    async fn data_deadline_is_the_nearer_of_the_read_and_the_rate_bound() {
        let s = Duration::from_secs;
        // (seconds since the transfer started, bytes received, min rate) → deadline
        for (elapsed, bytes, rate, want) in [
            // At the start both bounds are one timeout away.
            (0, 0, 500, s(300)),
            // Nothing received for 200 s: the rate bound is still 300 s from the start,
            // nearer than a fresh timeout from now (500 s).
            (200, 0, 500, s(300)),
            // 50,000 bytes at 500 B/s bought 100 s: 400 s, nearer than 500 s.
            (200, 50_000, 500, s(400)),
            // A fast client bought 1,000 s: the per-read timeout (200 + 300 s) wins.
            (200, 500_000, 500, s(500)),
            // Half a second of credit is kept exactly.
            (10, 250, 500, Duration::from_millis(300_500)),
            (0, 250, 500, s(300)),
            // No minimum rate: only the per-read timeout applies.
            (200, 0, 0, s(500)),
            (0, 0, 0, s(300)),
        ] {
            assert_eq!(
                deadline_after(elapsed, bytes, rate).await,
                want,
                "{elapsed} s in, {bytes} bytes, {rate} B/s"
            );
        }
    }
}
