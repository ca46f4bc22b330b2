//! The types every piece shares: the stage, what is known about the client and the
//! transaction (the facts a rule can test), and the verdict a policy returns.
//!
//! Pieces talk to each other only through these types, so the session never reaches
//! into the policy's compiled rules and the policy never sees a socket.

use std::net::IpAddr;

use crate::reply::Reply;

/// The SMTP command stage at which rules run, in session order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// After accept, before the banner.
    Connect,
    /// After HELO/EHLO syntax checks.
    Helo,
    /// After MAIL FROM syntax and size checks, before the upstream sees it.
    Mail,
    /// For each RCPT TO, before the upstream sees it.
    Rcpt,
    /// After the final dot, with the whole message, before it is relayed.
    Data,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about the connected client for the whole session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (from PROXY protocol when the listener trusts it).
    pub ip: IpAddr,
    pub port: u16,
    /// The listener's configured name (e.g. "mx", "submission").
    pub listener: String,
    /// Whether the session is (now) under TLS.
    pub tls: bool,
    /// The SASL user once authenticated.
    pub auth_user: Option<String>,
}

/// The envelope of the current transaction plus the session's HELO name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The HELO/EHLO argument, once given.
    pub helo: Option<String>,
    /// MAIL FROM address; `Some("")` is the null sender `<>`; `None` before MAIL.
    pub sender: Option<String>,
    /// `SIZE=` from MAIL FROM, if any.
    pub declared_size: Option<u64>,
    /// Recipients accepted so far (by the policy and by the upstream).
    pub recipients: Vec<String>,
    /// The recipient being decided at the `rcpt` stage.
    pub current_recipient: Option<String>,
}

impl Envelope {
    /// Clears the transaction (MAIL, RCPT, DATA) but keeps the HELO name, as RSET does.
    pub fn reset_transaction(&mut self) {
        let helo = self.helo.take();
        *self = Envelope {
            helo,
            ..Envelope::default()
        };
    }
}

/// The received message at the `data` stage: enough for header and body rules without
/// handing the policy the spool itself.
#[derive(Debug, Clone, Default)]
pub struct MessageView {
    /// Header fields in order as (name, unfolded value).
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body (the configured body scan limit).
    pub body_prefix: Vec<u8>,
    /// The real size of the message in octets (CRLF line ends, un-stuffed).
    pub size: u64,
}

/// Everything a policy may look at for one decision.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub stage: Stage,
    pub client: &'a ClientInfo,
    pub envelope: &'a Envelope,
    pub message: Option<&'a MessageView>,
}

/// The decisive part of a policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No decisive rule matched: go on to the upstream.
    Continue,
    /// Skip every later rule for the session (connect/helo) or transaction.
    Accept,
    /// Permanent refusal with this reply (5xx).
    Reject(Reply),
    /// Temporary refusal with this reply (4xx).
    Tempfail(Reply),
    /// A `greylist` or `rate_limit` rule matched: the session asks the state store
    /// (one async call) and then refuses, or resumes the stage's later rules.
    Check(Box<crate::checks::Pending>),
}

/// The full outcome of evaluating one stage: the decision, and any headers that
/// matching rules asked to add (relayed above the message at the `data` stage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The rule that made the decision, if any (for logs and metrics).
    pub rule: Option<String>,
    /// `Name: value` header lines to prepend to the message.
    pub add_headers: Vec<String>,
}

impl Verdict {
    pub fn continue_() -> Self {
        Verdict {
            decision: Decision::Continue,
            rule: None,
            add_headers: Vec::new(),
        }
    }
}
