//! The content filters of one SMTP session, driven in the configured order.
//!
//! Which filters run is decided once, at the session's first MAIL (listener, client
//! network, whether the client authenticated). A milter's connection is opened then —
//! not at connect, so a client refused by the rules or one that never sends mail costs
//! no milter connection — and the connect and HELO events are replayed first. The
//! connection lasts the session; a failed one is dropped and opened again at the next
//! MAIL (Postfix would give up on it for the rest of the session, which with
//! `default_action: tempfail` refuses every later message of a long-lived connection).
//! A later EHLO (a client's second EHLO, the one after STARTTLS) closes the connections
//! so the next MAIL replays the new HELO with the TLS facts.
//!
//! Milters answer at MAIL, RCPT and DATA (after the rules passed the command, before the
//! upstream sees it) and at the end of the message; rspamd answers at the end of the
//! message. At the end, each filter sees the message as the filters before it left it
//! (as Postfix's cleanup applies milter edits between milters); their edits are
//! recorded in the one [`Edits`] list the session writes the message through.
//!
//! A filter's verdict becomes a [`FilterFact`] for the `data` rules. Its own verdict (a
//! refusal, a discard, a shutdown, or its `default_action` after a failure) applies by
//! itself only when the filter is in `enforce` mode and no enforcing rule tests it; a
//! rule that tests it takes the decision over. At MAIL, RCPT and DATA, where rules see no
//! filter facts, a milter's answer applies directly (`enforce` mode).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Filter, FilterConfig, FilterMode, OnDiscard, RspamdClient};
use crate::envelope::{FilterFact, FilterResult};
use crate::filters::rspamd::{RspamdAction, RspamdRequest, RspamdVerdict};
use crate::message::{EditError, Edits, HeaderIndex, rewrite};
use crate::milter::{
    DefaultAction, EomOutcome, MacroValues, MilterClient, MilterEdit, MilterError, MilterReply,
};
use crate::reply::{Reply, StatusCode};

/// What the filters learn about the client, from the session.
#[derive(Debug, Clone, Default)]
pub struct ClientFacts {
    pub session_id: String,
    /// Our host name (macro `j`, rspamd's `MTA-Name`).
    pub hostname: String,
    pub listener: String,
    /// `{daemon_name}`: the listener's `milter_daemon_name`, else our host name.
    pub daemon_name: String,
    pub addr: Option<SocketAddr>,
    /// The forward-confirmed client name, when a reverse DNS check confirmed one.
    pub verified_name: Option<String>,
    /// The PTR name, confirmed or not.
    pub ptr_name: Option<String>,
    pub helo: String,
    /// `TLSv1.3`, `TLS13_AES_256_GCM_SHA384`, when the client uses TLS.
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    /// SASL mechanism and user, once authenticated.
    pub auth_mechanism: Option<String>,
    pub auth_user: Option<String>,
}

impl ClientFacts {
    fn macros(&self) -> MacroValues {
        let ip = self.addr.map(|a| a.ip().to_string());
        MacroValues {
            hostname: Some(self.hostname.clone()),
            daemon_name: Some(self.daemon_name.clone()),
            version: Some(format!("mxguard {}", env!("CARGO_PKG_VERSION"))),
            client_addr: ip,
            client_port: self.addr.map(|a| a.port().to_string()),
            client_name: Some(
                self.verified_name
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            ),
            client_ptr: self.ptr_name.clone(),
            tls_version: self.tls_version.clone(),
            cipher: self.tls_cipher.clone(),
            auth_type: self.auth_mechanism.clone(),
            auth_authen: self.auth_user.clone(),
            ..MacroValues::default()
        }
    }
}

/// What a filter's answer does to the command or the message.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterAction {
    /// Refuse the command, the recipient or the message with this reply.
    Refuse(Reply),
    /// Answer this `421` and close the client connection.
    Close(Reply),
    /// Accept the message without relaying it (a discard with `on_discard: drop`).
    Drop,
}

/// A filter's own verdict that applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub filter: String,
    pub action: FilterAction,
}

/// One call to a filter, for metrics and the decision log.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterCall {
    pub filter: String,
    /// `connect` (opening, connect and HELO), `mail`, `rcpt`, `data`, `message`.
    pub stage: &'static str,
    pub elapsed: Duration,
    /// The verdict class, or `error`.
    pub result: FilterResult,
    /// The failure's kind (`timeout`, `connect`, `not_a_milter`, …), on an error.
    pub error: Option<&'static str>,
    /// The default action that applied after the failure (`None`: it did not, the
    /// filter being monitored or taken over by a rule).
    pub default_action: Option<DefaultAction>,
    /// The filter is in monitor mode: its verdict was only reported.
    pub monitored: bool,
}

/// The end of a message, filtered.
#[derive(Debug, Default)]
pub struct MessageOutcome {
    /// One per filter that was asked, in order.
    pub facts: Vec<FilterFact>,
    /// The first verdict that applies; later filters were not asked.
    pub verdict: Option<Verdict>,
    /// `filter: reason` of each quarantine request: the message goes on, marked.
    pub quarantine: Vec<String>,
}

/// A milter's connection within the session.
enum Conn {
    /// Not open (yet, or again after a failure).
    Closed,
    Open(Box<MilterClient>),
}

/// One configured filter that applies to this session.
struct Slot {
    filter: Filter,
    conn: Conn,
    rspamd: Option<RspamdClient>,
    /// This transaction: the failure that set the filter aside (its fact at the end is
    /// `error`).
    failed: Option<String>,
    /// This transaction: a discard asked for earlier (with `on_discard: drop`).
    discard: bool,
}

impl Slot {
    fn name(&self) -> &str {
        self.filter.name()
    }

    fn default_action(&self) -> DefaultAction {
        self.filter.kind.default_action()
    }

    fn monitored(&self) -> bool {
        self.filter.mode == FilterMode::Monitor
    }
}

/// The content filters of one session.
pub struct FilterChain {
    slots: Vec<Slot>,
    client: ClientFacts,
    /// This transaction's envelope, for the macros and rspamd.
    sender: Option<String>,
    recipients: Vec<String>,
    transaction: u32,
    calls: Vec<FilterCall>,
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.slots.iter().map(|s| s.name()).collect();
        f.debug_struct("FilterChain")
            .field("filters", &names)
            .finish()
    }
}

impl FilterChain {
    /// The chain of the filters that apply to this client; `None` when none does. The
    /// client's facts are gathered only then (most sessions have no filter to tell).
    pub fn for_session(
        filters: &[Filter],
        listener: &str,
        ip: IpAddr,
        authenticated: bool,
        client: impl FnOnce() -> ClientFacts,
    ) -> Option<FilterChain> {
        let slots: Vec<Slot> = filters
            .iter()
            .filter(|f| f.applies(listener, ip, authenticated))
            .map(|f| Slot {
                rspamd: match &f.kind {
                    FilterConfig::Rspamd(c) => Some(RspamdClient::new(c.clone())),
                    FilterConfig::Milter(_) => None,
                },
                filter: f.clone(),
                conn: Conn::Closed,
                failed: None,
                discard: false,
            })
            .collect();
        (!slots.is_empty()).then(|| FilterChain {
            slots,
            client: client(),
            sender: None,
            recipients: Vec::new(),
            transaction: 0,
            calls: Vec::new(),
        })
    }

    /// The filters' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name()).collect()
    }

    /// The calls made since the last time they were taken.
    pub fn take_calls(&mut self) -> Vec<FilterCall> {
        std::mem::take(&mut self.calls)
    }

    /// The client said EHLO again (a second EHLO, or after STARTTLS): the next MAIL
    /// opens fresh milter connections that see the new HELO and the TLS facts.
    pub async fn client_changed(&mut self, client: ClientFacts) {
        self.client = client;
        for slot in &mut self.slots {
            if let Conn::Open(m) = std::mem::replace(&mut slot.conn, Conn::Closed) {
                m.quit().await;
            }
        }
    }

    /// The authenticated user, learnt after the chain was made.
    pub fn set_auth(&mut self, mechanism: Option<String>, user: Option<String>) {
        self.client.auth_mechanism = mechanism;
        self.client.auth_user = user;
    }

    fn queue_id(&self) -> String {
        format!("{}.{}", self.client.session_id, self.transaction)
    }

    fn macros(&self) -> MacroValues {
        let mut m = self.client.macros();
        m.queue_id = Some(self.queue_id());
        if let Some(s) = &self.sender {
            m.mail_addr = Some(s.clone());
            m.mail_host = domain_of(s).map(str::to_owned);
            m.mail_mailer = Some("smtp".into());
        }
        m
    }

    /// MAIL FROM, after the rules passed it: a new transaction for every filter; each
    /// milter is asked in order (opened first when it is not open).
    pub async fn mail(&mut self, sender: &str, params: &[String]) -> Option<Verdict> {
        self.transaction += 1;
        self.sender = Some(sender.to_owned());
        self.recipients.clear();
        for slot in &mut self.slots {
            slot.failed = None;
            slot.discard = false;
        }
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let macros = self.macros();
        for i in 0..self.slots.len() {
            if self.slots[i].rspamd.is_some() {
                continue;
            }
            if let Some(v) = self.open(i, &macros).await {
                return Some(v);
            }
            let answer = self
                .milter_event(i, Envelope::Mail(sender, &params), &macros)
                .await;
            if let Some(v) = self.stage_answer(i, "mail", answer) {
                return Some(v);
            }
        }
        None
    }

    /// One recipient, after the rules passed it; `Some` refuses it (or more).
    pub async fn rcpt(&mut self, recipient: &str, params: &[String]) -> Option<Verdict> {
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let mut macros = self.macros();
        macros.rcpt_addr = Some(recipient.to_owned());
        macros.rcpt_host = domain_of(recipient).map(str::to_owned);
        macros.rcpt_mailer = Some("smtp".into());
        for i in 0..self.slots.len() {
            let answer = self
                .milter_event(i, Envelope::Rcpt(recipient, &params), &macros)
                .await;
            if let Some(v) = self.stage_answer(i, "rcpt", answer) {
                return Some(v);
            }
        }
        self.recipients.push(recipient.to_owned());
        None
    }

    /// The DATA command, after the rules passed it.
    pub async fn data(&mut self) -> Option<Verdict> {
        let macros = self.macros();
        for i in 0..self.slots.len() {
            let answer = self.milter_event(i, Envelope::Data, &macros).await;
            if let Some(v) = self.stage_answer(i, "data", answer) {
                return Some(v);
            }
        }
        None
    }

    /// The transaction ended (RSET, a refusal, after the message): milters forget it.
    pub async fn abort(&mut self) {
        for slot in &mut self.slots {
            if let Conn::Open(m) = &mut slot.conn
                && let Err(e) = m.abort().await
            {
                warn!(session = %self.client.session_id, filter = slot.filter.name(), error = %e, "milter abort failed; its connection is closed");
                slot.conn = Conn::Closed;
            }
        }
        self.sender = None;
        self.recipients.clear();
    }

    /// Ends the session: QUIT to every open milter.
    pub async fn quit(self) {
        for slot in self.slots {
            if let Conn::Open(m) = slot.conn {
                m.quit().await;
            }
        }
    }

    /// The end of the message: every filter in order sees it as the ones before it left
    /// it. `original` is the whole message as received; `index` its header index; edits
    /// already in `edits` (the removal of forged fields) are what the first filter sees.
    /// `taken_over` says which filters a rule decides for.
    pub async fn end_of_message(
        &mut self,
        original: &[u8],
        index: &HeaderIndex,
        edits: &mut Edits,
        taken_over: impl Fn(&Filter) -> bool,
    ) -> MessageOutcome {
        let mut outcome = MessageOutcome::default();
        let mut current: Option<Vec<u8>> = None;
        let mut stale = !edits.is_empty();
        for i in 0..self.slots.len() {
            if stale || current.is_none() {
                current = Some(materialise(original, index, edits));
                stale = false;
            }
            let message = current.as_deref().unwrap_or(original);
            let decides = !taken_over(&self.slots[i].filter) && !self.slots[i].monitored();
            let Some(asked) = self.ask(i, message, decides).await else {
                continue;
            };
            let fact = asked.fact.clone();
            let applies = decides.then(|| self.verdict_of(i, &asked)).flatten();
            if applies.is_none() {
                let n = edits.len();
                record_edits(
                    &self.client.session_id,
                    self.slots[i].name(),
                    message,
                    asked.edits,
                    edits,
                );
                stale |= edits.len() != n;
                if fact.result == FilterResult::Quarantine {
                    outcome.quarantine.push(format!(
                        "{}: {}",
                        fact.name,
                        fact.reason.as_deref().unwrap_or("quarantined")
                    ));
                }
            }
            self.report_would_have(i, &fact, decides);
            outcome.facts.push(fact);
            if applies.is_some() {
                outcome.verdict = applies;
                break;
            }
        }
        outcome
    }

    /// Asks filter `i` about the message; `None` when it has nothing to say (a milter
    /// that is not open: it accepted the connection, or failed and was set aside with
    /// `accept`). `decides`: its own verdict applies (for the log and the metric of a
    /// failure's default action).
    async fn ask(&mut self, i: usize, message: &[u8], decides: bool) -> Option<Asked> {
        let started = Instant::now();
        let slot = &self.slots[i];
        if let Some(why) = &slot.failed {
            return Some(Asked::error(slot, why.clone(), None));
        }
        let asked = match self.slots[i].rspamd.clone() {
            Some(client) => self.ask_rspamd(i, &client, message).await,
            None => self.ask_milter(i, message).await?,
        };
        let slot = &self.slots[i];
        let default_action = (asked.error.is_some() && decides).then(|| slot.default_action());
        if let Some(kind) = asked.error {
            warn!(
                session = %self.client.session_id,
                filter = slot.name(),
                stage = "message",
                error = asked.fact.reason.as_deref().unwrap_or(kind),
                default_action = default_action.map_or("none (not enforced)", |a| a.as_str()),
                "filter unavailable"
            );
        }
        self.calls.push(FilterCall {
            filter: slot.name().to_owned(),
            stage: "message",
            elapsed: started.elapsed(),
            result: asked.fact.result,
            error: asked.error,
            default_action,
            monitored: slot.monitored(),
        });
        Some(asked)
    }

    async fn ask_rspamd(&mut self, i: usize, client: &RspamdClient, message: &[u8]) -> Asked {
        let c = &self.client;
        let rcpts: Vec<&str> = self.recipients.iter().map(String::as_str).collect();
        let queue_id = self.queue_id();
        let req = RspamdRequest {
            ip: c.addr.map(|a| a.ip()),
            helo: Some(c.helo.as_str()).filter(|h| !h.is_empty()),
            hostname: c.verified_name.as_deref(),
            from: self.sender.as_deref(),
            rcpts: &rcpts,
            queue_id: Some(&queue_id),
            user: c.auth_user.as_deref(),
            tls_cipher: c.tls_cipher.as_deref(),
            tls_version: c.tls_version.as_deref(),
            mta_name: Some(c.hostname.as_str()),
        };
        match client.check(&req, message.to_vec()).await {
            Ok(v) => rspamd_asked(&self.slots[i], v, message),
            Err(e) => Asked::error(&self.slots[i], e.to_string(), Some(e.label())),
        }
    }

    async fn ask_milter(&mut self, i: usize, message: &[u8]) -> Option<Asked> {
        let macros = self.macros();
        let Conn::Open(m) = &mut self.slots[i].conn else {
            return None;
        };
        match m.message(message, &macros).await {
            Ok(out) => Some(milter_asked(&self.slots[i], out)),
            Err(e) => {
                self.slots[i].conn = Conn::Closed;
                Some(Asked::error(&self.slots[i], e.to_string(), Some(e.label())))
            }
        }
    }

    /// The verdict of a filter whose own verdict applies.
    fn verdict_of(&self, i: usize, asked: &Asked) -> Option<Verdict> {
        let slot = &self.slots[i];
        let action = match asked.fact.result {
            FilterResult::Pass | FilterResult::Quarantine => return None,
            FilterResult::Error => {
                let r = slot.default_action().reply()?;
                if slot.default_action() == DefaultAction::Shutdown {
                    FilterAction::Close(r)
                } else {
                    FilterAction::Refuse(r)
                }
            }
            FilterResult::Discard => match slot.filter.on_discard {
                OnDiscard::Drop => FilterAction::Drop,
                OnDiscard::Reject => FilterAction::Refuse(discard_refusal()),
            },
            FilterResult::Shutdown => {
                FilterAction::Close(asked.fact.reply.clone().unwrap_or_else(shutdown_reply))
            }
            FilterResult::Reject | FilterResult::Tempfail => {
                FilterAction::Refuse(asked.fact.reply.clone()?)
            }
        };
        Some(Verdict {
            filter: slot.name().to_owned(),
            action,
        })
    }

    /// The decision log line of a verdict that did not act by itself.
    fn report_would_have(&self, i: usize, fact: &FilterFact, decides: bool) {
        let slot = &self.slots[i];
        if decides || fact.result == FilterResult::Pass {
            return;
        }
        let why = if slot.monitored() {
            "monitor mode"
        } else {
            "a rule decides"
        };
        info!(
            session = %self.client.session_id,
            filter = slot.name(),
            result = fact.result.as_str(),
            reply = %fact.reply.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            reason = fact.reason.as_deref().unwrap_or(""),
            "filter verdict not applied ({why})"
        );
    }

    /// Opens milter `i` and replays connect and HELO; a failure is answered with its
    /// default action.
    async fn open(&mut self, i: usize, macros: &MacroValues) -> Option<Verdict> {
        let FilterConfig::Milter(cfg) = &self.slots[i].filter.kind else {
            return None;
        };
        if matches!(self.slots[i].conn, Conn::Open(_)) {
            return None;
        }
        let started = Instant::now();
        let opened = async {
            let mut m = MilterClient::open(cfg).await?;
            let hostname = self.client.verified_name.as_deref();
            m.connect(hostname, self.client.addr, macros).await?;
            m.helo(&self.client.helo, macros).await?;
            Ok::<_, MilterError>(m)
        }
        .await;
        match opened {
            Ok(m) => {
                self.slots[i].conn = Conn::Open(Box::new(m));
                None
            }
            Err(e) => self.failure(i, "connect", started, e.to_string(), e.label()),
        }
    }

    /// Sends one envelope event to milter `i` when it is open and in this transaction.
    async fn milter_event(
        &mut self,
        i: usize,
        event: Envelope<'_>,
        macros: &MacroValues,
    ) -> Option<(Instant, Result<MilterReply, MilterError>)> {
        let slot = &mut self.slots[i];
        if slot.failed.is_some() {
            return None;
        }
        let Conn::Open(m) = &mut slot.conn else {
            return None;
        };
        let started = Instant::now();
        let r = match event {
            Envelope::Mail(sender, params) => m.mail(sender, params, macros).await,
            Envelope::Rcpt(rcpt, params) => m.rcpt(rcpt, params, macros).await,
            Envelope::Data => m.data(macros).await,
        };
        Some((started, r))
    }

    /// What a milter's answer at MAIL, RCPT or DATA does.
    fn stage_answer(
        &mut self,
        i: usize,
        stage: &'static str,
        answer: Option<(Instant, Result<MilterReply, MilterError>)>,
    ) -> Option<Verdict> {
        let (started, answer) = answer?;
        let reply = match answer {
            Ok(r) => r,
            Err(e) => {
                warn!(session = %self.client.session_id, filter = self.slots[i].name(), error = %e, "milter failed at {stage}");
                self.slots[i].conn = Conn::Closed;
                return self.failure(i, stage, started, e.to_string(), e.label());
            }
        };
        let slot = &mut self.slots[i];
        let result = result_of(&reply);
        let monitored = slot.monitored();
        self.calls.push(FilterCall {
            filter: slot.filter.name().to_owned(),
            stage,
            elapsed: started.elapsed(),
            result,
            error: None,
            default_action: None,
            monitored,
        });
        let action = match reply {
            MilterReply::Discard => match slot.filter.on_discard {
                OnDiscard::Drop => {
                    slot.discard = true;
                    None
                }
                OnDiscard::Reject => Some(FilterAction::Refuse(discard_refusal())),
            },
            MilterReply::Shutdown => Some(FilterAction::Close(shutdown_reply())),
            ref r => r.smtp_reply().map(FilterAction::Refuse),
        };
        let action = action?;
        let name = slot.filter.name().to_owned();
        if monitored {
            info!(session = %self.client.session_id, filter = name, stage, result = result.as_str(), "filter verdict not applied (monitor mode)");
            return None;
        }
        Some(Verdict {
            filter: name,
            action,
        })
    }

    /// A failure of filter `i`: counted, and answered with its default action (none in
    /// monitor mode; `accept` sets the filter aside for the rest of the transaction).
    fn failure(
        &mut self,
        i: usize,
        stage: &'static str,
        started: Instant,
        why: String,
        label: &'static str,
    ) -> Option<Verdict> {
        let slot = &mut self.slots[i];
        let monitored = slot.monitored();
        let action = slot.default_action();
        warn!(session = %self.client.session_id, filter = slot.filter.name(), stage, error = %why, default_action = action.as_str(), "filter unavailable");
        slot.failed = Some(why);
        self.calls.push(FilterCall {
            filter: slot.filter.name().to_owned(),
            stage,
            elapsed: started.elapsed(),
            result: FilterResult::Error,
            error: Some(label),
            default_action: (!monitored).then_some(action),
            monitored,
        });
        if monitored {
            return None;
        }
        let reply = action.reply()?;
        let action = if action == DefaultAction::Shutdown {
            FilterAction::Close(reply)
        } else {
            FilterAction::Refuse(reply)
        };
        Some(Verdict {
            filter: slot.filter.name().to_owned(),
            action,
        })
    }

    /// A discard asked for at MAIL, RCPT or DATA (with `on_discard: drop`): the message
    /// is accepted and not relayed. Checked at the end of the message, after the rules.
    pub fn discarded_by(&self) -> Option<&str> {
        self.slots
            .iter()
            .find(|s| s.discard && !s.monitored())
            .map(|s| s.name())
    }
}

/// An envelope event for the milters.
#[derive(Clone, Copy)]
enum Envelope<'a> {
    Mail(&'a str, &'a [&'a str]),
    Rcpt(&'a str, &'a [&'a str]),
    Data,
}

/// A filter's answer about the message: the fact, the edits it asks for.
struct Asked {
    fact: FilterFact,
    edits: Vec<MilterEdit>,
    error: Option<&'static str>,
}

impl Asked {
    fn error(slot: &Slot, why: String, label: Option<&'static str>) -> Asked {
        Asked {
            fact: FilterFact {
                name: slot.name().to_owned(),
                result: FilterResult::Error,
                action: None,
                score: None,
                symbols: Vec::new(),
                reply: slot.default_action().reply(),
                reason: Some(why),
            },
            edits: Vec::new(),
            error: label,
        }
    }
}

fn result_of(reply: &MilterReply) -> FilterResult {
    match reply {
        MilterReply::Continue | MilterReply::Accept | MilterReply::Skip => FilterResult::Pass,
        MilterReply::Reject => FilterResult::Reject,
        MilterReply::Tempfail => FilterResult::Tempfail,
        MilterReply::ReplyCode(rc) if rc.code >= 500 => FilterResult::Reject,
        MilterReply::ReplyCode(_) => FilterResult::Tempfail,
        MilterReply::Discard => FilterResult::Discard,
        MilterReply::Shutdown => FilterResult::Shutdown,
    }
}

fn milter_asked(slot: &Slot, out: EomOutcome) -> Asked {
    let mut result = result_of(&out.reply);
    if result == FilterResult::Pass && out.quarantine.is_some() {
        result = FilterResult::Quarantine;
    }
    let reply = match &out.reply {
        MilterReply::Shutdown => Some(shutdown_reply()),
        r => r.smtp_reply(),
    };
    Asked {
        fact: FilterFact {
            name: slot.name().to_owned(),
            result,
            action: None,
            score: None,
            symbols: Vec::new(),
            reply,
            reason: out.quarantine,
        },
        edits: out.edits,
        error: None,
    }
}

/// Rspamd's action as a verdict class, and the reply a refusal gets: `554 5.7.1` for
/// `reject` and `451 4.7.1` for `soft reject` and `greylist`, with rspamd's
/// `smtp_message` when it gives one (as its own milter mode answers). `add header`
/// marks the message with `X-Spam: Yes`, as rspamd's milter mode does by default.
fn rspamd_asked(slot: &Slot, v: RspamdVerdict, message: &[u8]) -> Asked {
    let (result, reply) = match &v.action {
        RspamdAction::Reject => (
            FilterResult::Reject,
            Some(rspamd_reply(554, (5, 7, 1), &v, "Spam message rejected")),
        ),
        RspamdAction::SoftReject | RspamdAction::Greylist => (
            FilterResult::Tempfail,
            Some(rspamd_reply(451, (4, 7, 1), &v, "Try again later")),
        ),
        RspamdAction::Other(a) if a == "discard" => (FilterResult::Discard, None),
        RspamdAction::Other(a) if a == "quarantine" => (FilterResult::Quarantine, None),
        _ => (FilterResult::Pass, None),
    };
    let mut edits = Vec::new();
    if result == FilterResult::Pass {
        let index = HeaderIndex::build(message);
        let names: Vec<String> = index
            .fields()
            .filter(|f| !f.is_malformed())
            .map(|f| f.name().into_owned())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        edits = v.header_edits(&names);
        if v.action == RspamdAction::RewriteSubject {
            edits.extend(v.subject_edit());
        }
        if v.action == RspamdAction::AddHeader && v.add_headers.is_empty() {
            edits.push(MilterEdit::AddHeader {
                name: "X-Spam".into(),
                value: " Yes".into(),
            });
        }
    }
    Asked {
        fact: FilterFact {
            name: slot.name().to_owned(),
            result,
            action: Some(v.action.as_str().to_owned()),
            score: Some(v.score),
            symbols: v.symbols.iter().map(|s| s.name.clone()).collect(),
            reply,
            reason: (result == FilterResult::Quarantine).then(|| v.action.as_str().to_owned()),
        },
        edits,
        error: None,
    }
}

fn rspamd_reply(code: u16, status: (u8, u16, u16), v: &RspamdVerdict, default: &str) -> Reply {
    let text = v
        .smtp_message
        .as_deref()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty() && m.chars().all(|c| !c.is_control()))
        .unwrap_or(default);
    crate::reply::reply(code, status, text.to_owned())
}

fn discard_refusal() -> Reply {
    Reply::new(
        550,
        StatusCode(5, 7, 1),
        "Error: message refused by content filter",
    )
}

fn shutdown_reply() -> Reply {
    Reply::new(421, StatusCode(4, 7, 0), "Server closing connection")
}

/// The message as the filters so far left it: the header rewritten by `edits`, the
/// body replaced if one was.
fn materialise(original: &[u8], index: &HeaderIndex, edits: &Edits) -> Vec<u8> {
    if edits.is_empty() {
        return original.to_vec();
    }
    rewrite(index, edits.clone())
        .to_vec(original)
        .unwrap_or_else(|_| original.to_vec())
}

/// Records a filter's edits. Milter insert positions count the fields the filter saw
/// (the well-formed ones) and become positions in the working list; an edit that would
/// break the header is refused, logged and left out — never relayed.
fn record_edits(
    session: &str,
    filter: &str,
    message: &[u8],
    list: Vec<MilterEdit>,
    edits: &mut Edits,
) {
    if list.is_empty() {
        return;
    }
    let index = HeaderIndex::build(message);
    for e in list {
        if let Err(err) = record_edit(&index, e, edits) {
            warn!(session, filter, error = %err, "filter edit refused");
        }
    }
}

fn record_edit(index: &HeaderIndex, e: MilterEdit, edits: &mut Edits) -> Result<(), EditError> {
    match e {
        MilterEdit::AddHeader { name, value } => edits.append(&name, &value),
        MilterEdit::InsertHeader {
            index: n,
            name,
            value,
        } => edits.insert(position_after_named(index, n as usize), &name, &value),
        MilterEdit::ChangeHeader {
            index: n,
            name,
            value,
        } => edits.change(&name, (n as usize).max(1), &value),
        MilterEdit::DeleteHeader { index: n, name } => edits.delete(&name, (n as usize).max(1)),
        MilterEdit::ReplaceBody(body) => {
            edits.replace_body(body);
            Ok(())
        }
    }
}

/// The position in the working list after `n` well-formed fields (malformed ones were
/// never sent to the filter, so they do not count).
fn position_after_named(index: &HeaderIndex, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    index
        .fields()
        .filter(|f| !f.is_malformed())
        .nth(n - 1)
        .map_or(index.len(), |f| f.index() + 1)
}

fn domain_of(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(m: &[u8]) -> HeaderIndex {
        HeaderIndex::build(m)
    }

    #[test]
    fn insert_positions_skip_malformed_fields() {
        let m = b"A: 1\r\nnot a field\r\nB: 2\r\n\r\nbody\r\n";
        let ix = index(m);
        assert_eq!(position_after_named(&ix, 0), 0);
        assert_eq!(position_after_named(&ix, 1), 1);
        // The filter saw A and B: after its second field is after B, position 3.
        assert_eq!(position_after_named(&ix, 2), 3);
        assert_eq!(position_after_named(&ix, 9), 3);
    }

    #[test]
    fn edits_apply_in_order_and_bad_ones_are_refused() {
        let m = b"Subject: hi\r\nTo: b@example.org\r\n\r\nbody\r\n";
        let ix = index(m);
        let mut edits = Edits::new();
        record_edits(
            "s",
            "f",
            m,
            vec![
                MilterEdit::InsertHeader {
                    index: 1,
                    name: "X-A".into(),
                    value: " 1".into(),
                },
                MilterEdit::AddHeader {
                    name: "X-Bad".into(),
                    value: " a\r\nInjected: yes".into(),
                },
                MilterEdit::ChangeHeader {
                    index: 1,
                    name: "Subject".into(),
                    value: " [SPAM] hi".into(),
                },
            ],
            &mut edits,
        );
        assert_eq!(edits.len(), 2, "the unfolded value is refused");
        let out = materialise(m, &ix, &edits);
        assert_eq!(
            out,
            b"Subject: [SPAM] hi\r\nX-A: 1\r\nTo: b@example.org\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn rspamd_actions_map_to_results() {
        let slot = Slot {
            filter: Filter {
                kind: FilterConfig::Rspamd(crate::filters::RspamdConfig::new(
                    "rspamd",
                    "http://127.0.0.1:11333".parse().unwrap(),
                )),
                listeners: vec![],
                skip_networks: vec![],
                skip_authenticated: false,
                mode: FilterMode::Enforce,
                on_discard: OnDiscard::Reject,
            },
            conn: Conn::Closed,
            rspamd: None,
            failed: None,
            discard: false,
        };
        let verdict = |action: RspamdAction, msg: Option<&str>| RspamdVerdict {
            action,
            score: 7.5,
            required_score: 15.0,
            is_skipped: false,
            symbols: vec![],
            smtp_message: msg.map(str::to_owned),
            subject: None,
            add_headers: vec![],
            remove_headers: vec![],
            message_id: None,
        };
        let m = b"Subject: x\r\n\r\nbody\r\n";
        let a = rspamd_asked(
            &slot,
            verdict(RspamdAction::Reject, Some("Gtube pattern")),
            m,
        );
        assert_eq!(a.fact.result, FilterResult::Reject);
        assert_eq!(a.fact.reply.unwrap().to_string(), "554 5.7.1 Gtube pattern");
        let a = rspamd_asked(&slot, verdict(RspamdAction::SoftReject, None), m);
        assert_eq!(a.fact.result, FilterResult::Tempfail);
        assert_eq!(a.fact.reply.unwrap().code, 451);
        let a = rspamd_asked(&slot, verdict(RspamdAction::AddHeader, None), m);
        assert_eq!(a.fact.result, FilterResult::Pass);
        assert_eq!(a.fact.score, Some(7.5));
        assert_eq!(
            a.edits,
            vec![MilterEdit::AddHeader {
                name: "X-Spam".into(),
                value: " Yes".into()
            }]
        );
        let a = rspamd_asked(
            &slot,
            verdict(RspamdAction::Other("discard".into()), None),
            m,
        );
        assert_eq!(a.fact.result, FilterResult::Discard);
        let a = rspamd_asked(&slot, verdict(RspamdAction::Reject, Some("bad\r\ntext")), m);
        assert_eq!(a.fact.reply.unwrap().text(), "Spam message rejected");
    }

    #[test]
    fn milter_replies_map_to_results() {
        use crate::milter::ReplyCode;
        assert_eq!(result_of(&MilterReply::Accept), FilterResult::Pass);
        assert_eq!(result_of(&MilterReply::Tempfail), FilterResult::Tempfail);
        let rc = |code| {
            MilterReply::ReplyCode(ReplyCode {
                code,
                status: None,
                lines: vec!["x".into()],
            })
        };
        assert_eq!(result_of(&rc(554)), FilterResult::Reject);
        assert_eq!(result_of(&rc(452)), FilterResult::Tempfail);
        assert_eq!(result_of(&MilterReply::Discard), FilterResult::Discard);
    }
}
