//! The session's side of the content filters: making the chain at the first MAIL,
//! what it learns about the client, what a filter's verdict does to the reply, and the
//! log lines and metrics of each call.

use tracing::{debug, info};

use super::{Flow, Session};
use crate::envelope::FilterResult;
use crate::filters::FilterConfig;
use crate::filters::chain::{
    ClientFacts, FilterAction, FilterCall, FilterChain, MessageOutcome, Verdict,
};
use crate::reply::Reply;
use crate::stream::Transport;

/// What a filter's verdict at a command does.
pub(super) enum FilterStop {
    /// Refuse the command with this reply.
    Refuse(Reply),
    /// Send this reply and close.
    Close(Reply),
}

impl<S: Transport> Session<S> {
    /// The filters that apply to this client, made at the first MAIL after the client
    /// last changed (EHLO, AUTH).
    pub(super) fn filter_chain(&mut self) -> Option<&mut FilterChain> {
        if !self.filters_made {
            self.filters_made = true;
            self.filters = FilterChain::for_session(
                &self.rt.config.filters,
                &self.listener.name,
                self.client.ip,
                self.client.auth_user.is_some(),
                || self.filter_client_facts(),
            )
            .map(Box::new);
        }
        self.filters.as_deref_mut()
    }

    /// The client changed (a new EHLO, or it authenticated): the next MAIL makes the
    /// chain again, so milters see the new HELO, TLS and login and `skip_authenticated`
    /// is decided anew.
    pub(super) async fn filters_client_changed(&mut self) {
        self.filters_made = false;
        if let Some(chain) = self.filters.take() {
            chain.quit().await;
        }
    }

    /// The session ends.
    pub(super) async fn filters_quit(&mut self) {
        if let Some(chain) = self.filters.take() {
            chain.quit().await;
        }
    }

    fn filter_client_facts(&self) -> ClientFacts {
        let rdns = self.client_auth.rdns.as_ref();
        let verified = rdns
            .filter(|r| r.status == crate::envelope::RdnsStatus::Pass)
            .and_then(|r| r.name.clone());
        let (tls_version, tls_cipher) = match self.conn.stream.tls_description() {
            Some(d) => match d.split_once(" with cipher ") {
                Some((v, c)) => (Some(v.to_owned()), Some(c.to_owned())),
                None => (Some(d), None),
            },
            None => (None, None),
        };
        ClientFacts {
            session_id: self.id.clone(),
            hostname: self.rt.config.hostname.clone(),
            listener: self.listener.name.clone(),
            daemon_name: self
                .listener
                .milter_daemon_name
                .clone()
                .unwrap_or_else(|| self.rt.config.hostname.clone()),
            addr: Some(std::net::SocketAddr::new(self.client.ip, self.client.port)),
            verified_name: verified,
            ptr_name: rdns.and_then(|r| r.name.clone()),
            helo: self.helo.clone().unwrap_or_default(),
            tls_version,
            tls_cipher,
            auth_mechanism: self.auth_mechanism.clone(),
            auth_user: self.client.auth_user.clone(),
        }
    }

    /// Logs and counts the calls the chain made since last asked.
    pub(super) fn note_filter_calls(&mut self) {
        let Some(chain) = self.filters.as_mut() else {
            return;
        };
        for call in chain.take_calls() {
            if call.error.is_some() {
                self.rt
                    .metrics
                    .session
                    .fault(crate::telemetry::FaultSource::Ours);
            }
            self.rt
                .metrics
                .filters
                .call(&crate::telemetry::FilterCallMetric {
                    filter: &call.filter,
                    stage: call.stage,
                    took: call.elapsed,
                    verdict: call.result,
                    error: call.error,
                    default_action: call.default_action,
                });
            log_call(&self.id, &call);
        }
    }

    /// The reply a filter's verdict at MAIL, RCPT or DATA gives.
    pub(super) fn filter_stop(&mut self, v: Verdict, stage: &str) -> FilterStop {
        info!(session = %self.id, client = %self.client.ip, filter = v.filter, stage, action = ?v.action, "filter refused");
        match v.action {
            FilterAction::Refuse(r) => FilterStop::Refuse(r),
            FilterAction::Close(r) => FilterStop::Close(r),
            // A drop at a command is recorded by the chain and applied after the message.
            FilterAction::Drop => FilterStop::Refuse(Reply::new(
                550,
                crate::reply::StatusCode(5, 7, 1),
                "Error: message refused by content filter",
            )),
        }
    }

    /// The end of the message through the filters: their facts go to the transaction
    /// (for the `data` rules), their edits to `edits`.
    pub(super) async fn filter_message(
        &mut self,
        spool: &mut crate::spool::Spool,
        index: &crate::message::HeaderIndex,
        edits: &mut crate::message::Edits,
    ) -> std::io::Result<MessageOutcome> {
        let bdat = self
            .tx
            .as_ref()
            .is_some_and(|t| t.transfer == crate::transaction::Transfer::Bdat);
        let rules = self.rules.clone();
        let Some(chain) = self.filters.as_mut() else {
            return Ok(MessageOutcome::default());
        };
        if bdat && let Some(v) = chain.data().await {
            // BDAT has no DATA command: the milters hear of it now.
            self.note_filter_calls();
            return Ok(MessageOutcome {
                verdict: Some(v),
                ..MessageOutcome::default()
            });
        }
        let raw = spool.read_all().await?;
        let outcome = chain
            .end_of_message(&raw, index, edits, |f| {
                rules.tests_filter(f.name(), matches!(f.kind, FilterConfig::Rspamd(_)))
            })
            .await;
        let dropped = chain.discarded_by().map(str::to_owned);
        self.note_filter_calls();
        if let Some(tx) = self.tx.as_mut() {
            tx.filters = outcome.facts.clone();
        }
        Ok(match (outcome.verdict.is_none(), dropped) {
            (true, Some(filter)) => MessageOutcome {
                verdict: Some(Verdict {
                    filter,
                    action: FilterAction::Drop,
                }),
                ..outcome
            },
            _ => outcome,
        })
    }

    /// A filter's own verdict on the message, after the rules let it pass: `Err` is the
    /// reply when the message is not relayed.
    pub(super) async fn apply_filter_verdict(&mut self, v: Option<Verdict>) -> Result<(), Reply> {
        let Some(v) = v else {
            return Ok(());
        };
        info!(session = %self.id, client = %self.client.ip, filter = v.filter, action = ?v.action, "filter verdict on the message");
        match v.action {
            FilterAction::Refuse(r) => Err(self.refuse_message(r).await),
            FilterAction::Close(r) => {
                self.close_after_reply = true;
                Err(self.refuse_message(r).await)
            }
            FilterAction::Drop => {
                // The explicit opt-in to a silent discard: accepted, never relayed.
                self.finish_transaction(crate::telemetry::TransactionOutcome::Discarded, None);
                self.reset_upstream().await;
                Err(Reply::new(250, crate::reply::StatusCode(2, 0, 0), "Ok"))
            }
        }
    }

    /// Answers a command a filter stopped: the reply, and whether the session closes.
    pub(super) fn answer_filter_stop(&mut self, stop: FilterStop) -> Flow {
        match stop {
            FilterStop::Refuse(r) => {
                self.error_reply(r);
                Flow::Continue
            }
            FilterStop::Close(r) => {
                self.push(&r);
                Flow::Close
            }
        }
    }
}

/// The field that marks a message a filter asked to quarantine, for the upstream to
/// hold (Postfix: `header_checks` with `/^X-Mxguard-Quarantine:/ HOLD`).
pub(super) fn quarantine_field(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    format!("X-Mxguard-Quarantine: {}\r\n", clean.trim())
}

fn log_call(session: &str, call: &FilterCall) {
    let ms = call.elapsed.as_secs_f64() * 1000.0;
    if call.result == FilterResult::Error {
        info!(
            session,
            filter = call.filter,
            stage = call.stage,
            error = call.error.unwrap_or(""),
            default_action = call.default_action.map(|a| a.as_str()).unwrap_or("none"),
            elapsed_ms = ms,
            "filter call failed"
        );
    } else {
        debug!(
            session,
            filter = call.filter,
            stage = call.stage,
            result = call.result.as_str(),
            elapsed_ms = ms,
            "filter call"
        );
    }
}
