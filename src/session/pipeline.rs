//! Upstream pipelining (RFC 2920). When the upstream connection offers PIPELINING, a
//! MAIL or RCPT that passed the rules and the filters is queued instead of sent and
//! waited for; the queued group goes upstream in one write when the client's group ends
//! — its last buffered command, or before any other command (so DATA is decided only
//! after every recipient was answered) — and the replies are matched in order. One
//! upstream round trip per client group instead of one per command.
//!
//! The client's replies keep their order and grouping: while commands are pending, every
//! reply (our own refusals included) is held; resolving walks the held replies in order,
//! filling each pending command's place with the reply its upstream answer gives.
//!
//! A reused upstream connection that turns out dead at the group's MAIL (the upstream
//! closed it while idle) is replaced and the group replayed on the new one, command by
//! command, as the lockstep path does: the client never sees the upstream's stale state.

use std::collections::VecDeque;

use tokio::time::Instant;
use tracing::debug;

use super::Session;
use super::mail::MailError;
use crate::relay::RelayError;
use crate::reply::{Reply, reply};
use crate::stream::Transport;
use crate::transaction::Recipient;

/// The commands queued or sent upstream and not yet answered, and the client's replies
/// held behind them.
#[derive(Default)]
pub(super) struct Pipeline {
    /// Command lines not yet written upstream.
    queued: Vec<u8>,
    pending: VecDeque<Pending>,
    held: Vec<Held>,
}

/// A command whose upstream answer is awaited.
enum Pending {
    Mail {
        /// The connection was kept from an earlier transaction (it may have died idle).
        reused: bool,
    },
    Rcpt {
        rcpt: Recipient,
    },
}

/// A client reply in order: ready, or the place of a pending command's reply.
enum Held {
    Reply(Reply),
    Pending,
}

impl Pipeline {
    /// Whether anything awaits the upstream (client replies are then held).
    pub(super) fn is_active(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Holds a reply behind the pending commands.
    pub(super) fn hold(&mut self, r: &Reply) {
        self.held.push(Held::Reply(r.clone()));
    }

    pub(super) fn queue_mail(&mut self, line: String, reused: bool) {
        self.queued.extend_from_slice(line.as_bytes());
        self.pending.push_back(Pending::Mail { reused });
        self.held.push(Held::Pending);
    }

    /// Gives the emptied buffers of a resolved group back, so the session's next group
    /// reuses their memory instead of growing new ones.
    fn recycle(&mut self, queued: Vec<u8>, pending: VecDeque<Pending>, held: Vec<Held>) {
        if self.queued.is_empty() && queued.is_empty() {
            self.queued = queued;
        }
        if self.pending.is_empty() && pending.is_empty() {
            self.pending = pending;
        }
        if self.held.is_empty() && held.is_empty() {
            self.held = held;
        }
    }

    pub(super) fn queue_rcpt(&mut self, rcpt: Recipient) {
        self.queued
            .extend_from_slice(rcpt.upstream_line().as_bytes());
        self.pending.push_back(Pending::Rcpt { rcpt });
        self.held.push(Held::Pending);
    }
}

/// Whether a command line may join a pipelined group (anything else ends it first).
pub(super) fn joins_group(line: &[u8]) -> bool {
    let verb = &line[..line.len().min(5)];
    verb.len() >= 4
        && (verb[..4].eq_ignore_ascii_case(b"MAIL") || verb[..4].eq_ignore_ascii_case(b"RCPT"))
}

impl<S: Transport> Session<S> {
    /// Sends the queued group, reads its replies in order and answers the client's
    /// commands in their order. Nothing to do when nothing is pending.
    pub(super) async fn resolve_pipeline(&mut self) {
        if !self.pipeline.is_active() {
            return;
        }
        let mut group = std::mem::take(&mut self.pipeline.queued);
        let mut pending = std::mem::take(&mut self.pipeline.pending);
        let mut held = std::mem::take(&mut self.pipeline.held);
        let since = Instant::now();
        let mut sent = match self.upstream.as_mut() {
            Some(up) => up.send_group(&group).await,
            None => Err(lost("the upstream session was lost")),
        };
        // After a replaced connection, the rest of the group goes command by command.
        let mut lockstep = false;
        for h in held.drain(..) {
            match h {
                Held::Reply(r) => r.write_to(self.conn.out()),
                Held::Pending => match pending.pop_front() {
                    Some(Pending::Mail { reused }) => {
                        let answer = self.group_reply("mail", &sent, since).await;
                        let stale = match &answer {
                            Ok(r) => r.code == 421,
                            Err(_) => true,
                        };
                        let answer = if reused && stale {
                            debug!(session = %self.id, "reused upstream session failed at a pipelined MAIL; replaying on a new one");
                            lockstep = true;
                            sent = Ok(());
                            // Boxed (as the lockstep RCPT below): rare, and kilobytes of
                            // state every group would otherwise allocate and copy.
                            Box::pin(self.mail_on_fresh_connection()).await
                        } else {
                            answer.map_err(MailError::Relay)
                        };
                        let _ = self.mail_answered(answer);
                    }
                    Some(Pending::Rcpt { rcpt }) => {
                        let answer = if lockstep {
                            match self.upstream.as_mut() {
                                Some(up) => Box::pin(up.rcpt(&rcpt.upstream_line())).await,
                                None => Err(lost("the upstream session was lost")),
                            }
                        } else {
                            self.group_reply("rcpt", &sent, since).await
                        };
                        self.pipelined_rcpt_answered(rcpt, answer);
                    }
                    None => {}
                },
            }
        }
        group.clear();
        self.pipeline.recycle(group, pending, held);
    }

    /// The next reply of the group sent (or the reason there is none).
    async fn group_reply(
        &mut self,
        stage: &'static str,
        sent: &Result<(), RelayError>,
        since: Instant,
    ) -> Result<Reply, RelayError> {
        if let Err(e) = sent {
            return Err(lost(&e.to_string()));
        }
        match self.upstream.as_mut() {
            Some(up) => up.pipelined_reply(stage, since).await,
            None => Err(lost("the upstream session was lost")),
        }
    }

    /// A pipelined recipient's answer. Without a transaction (its MAIL was refused in
    /// the same group) the upstream's answer is read and dropped, and the client gets
    /// what it would have got in lockstep: `503 5.5.1`.
    fn pipelined_rcpt_answered(&mut self, rcpt: Recipient, answer: Result<Reply, RelayError>) {
        match self.tx.as_mut() {
            Some(tx) if !tx.upstream_failed => {
                tx.pending_rcpts = tx.pending_rcpts.saturating_sub(1);
                let _ = self.rcpt_answered(rcpt, answer);
            }
            Some(tx) => {
                tx.pending_rcpts = tx.pending_rcpts.saturating_sub(1);
                self.push(&super::fault::upstream_aborted());
            }
            None => {
                self.error_reply(reply(503, (5, 5, 1), "Error: need MAIL command"));
            }
        }
    }
}

fn lost(reason: &str) -> RelayError {
    RelayError::Lost {
        stage: "pipeline",
        reason: reason.to_owned(),
    }
}

/// What happened to a MAIL sent upstream.
pub(super) enum MailSent {
    Answered(Reply),
    /// Queued in the pipeline: answered when the group is resolved.
    Queued,
}
