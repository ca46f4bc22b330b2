//! One milter connection's protocol state, without I/O: for each event it writes what to
//! send and says whether a reply must be awaited; it then decodes the replies into typed
//! decisions and end-of-message edits.
//!
//! It follows Postfix's `milter8_event`: an event the milter's protocol version lacks is
//! not sent at all; after `SMFIR_SKIP` further events of that kind are not sent; otherwise
//! the stage's macros are sent even when the milter declined the event itself (`NO*`), so
//! that a later stage can still read them; the event goes out unless declined, and the
//! reply is awaited unless the milter said it will not answer (`NR_*`).

use std::net::SocketAddr;

use super::codec::{self, CodecError, Frame};
use super::macros::{MacroStage, MacroValues, encode_macros};
use super::negotiate::Negotiated;
use super::protocol::{
    Actions, MilterEdit, MilterReply, ProtocolFlags, ReplyCode, canonical_header_value, command,
    response, valid_header_name,
};

/// Largest body chunk per `SMFIC_BODY` (Postfix's and libmilter's `MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65_535;

/// Where in the conversation something happened (for timeouts, errors and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Connecting and option negotiation.
    Negotiate,
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
    Abort,
    Quit,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Stage::Negotiate,
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::Eoh,
        Stage::Body,
        Stage::Eom,
        Stage::Abort,
        Stage::Quit,
    ];

    /// Header, end of headers, body and end of message run under the content timeout;
    /// the others under the command timeout (negotiation under the connect timeout).
    pub fn is_content(self) -> bool {
        matches!(self, Stage::Header | Stage::Eoh | Stage::Body | Stage::Eom)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Negotiate => "negotiate",
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Header => "header",
            Stage::Eoh => "eoh",
            Stage::Body => "body",
            Stage::Eom => "eom",
            Stage::Abort => "abort",
            Stage::Quit => "quit",
        }
    }

    fn is_connection_level(self) -> bool {
        matches!(self, Stage::Connect | Stage::Helo)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event of the SMTP session, as the milter sees it.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// `hostname`: the verified client name, or `None` (sent as `[address]`).
    Connect {
        hostname: Option<&'a str>,
        addr: Option<SocketAddr>,
    },
    Helo(&'a str),
    /// `sender` without angle brackets (empty for the null sender); `params` the ESMTP
    /// parameters as sent (`SIZE=1234`, `BODY=8BITMIME`).
    Mail {
        sender: &'a str,
        params: &'a [&'a str],
    },
    Rcpt {
        recipient: &'a str,
        params: &'a [&'a str],
    },
    Data,
    /// One header field: its name, and its raw value after the colon (without the final
    /// CRLF; continuation lines folded with CRLF or LF).
    Header {
        name: &'a str,
        value: &'a [u8],
    },
    Eoh,
    /// A body chunk of at most [`BODY_CHUNK`] bytes.
    Body(&'a [u8]),
    Eom,
}

impl Event<'_> {
    pub fn stage(&self) -> Stage {
        match self {
            Event::Connect { .. } => Stage::Connect,
            Event::Helo(_) => Stage::Helo,
            Event::Mail { .. } => Stage::Mail,
            Event::Rcpt { .. } => Stage::Rcpt,
            Event::Data => Stage::Data,
            Event::Header { .. } => Stage::Header,
            Event::Eoh => Stage::Eoh,
            Event::Body(_) => Stage::Body,
            Event::Eom => Stage::Eom,
        }
    }
}

/// What to do after [`Conversation::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send the bytes, then read frames into [`Conversation::on_frame`] until it gives the
    /// final reply.
    Await,
    /// Send the bytes (possibly none); the milter will not answer: the outcome is continue.
    Sent,
    /// Nothing to send: the answer is already known (accepted, refused, skipped).
    Answered(MilterReply),
}

/// What one reply frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep reading: progress, an edit, a quarantine request.
    Wait,
    /// The milter's decision for the event.
    Final(MilterReply),
}

/// The end of a message: the decision, the edits requested before it, and a quarantine
/// request (`SMFIR_QUARANTINE`, whose reason Postfix puts the message on hold with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EomOutcome {
    pub reply: MilterReply,
    pub edits: Vec<MilterEdit>,
    pub quarantine: Option<String>,
}

/// What went wrong in the conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The milter broke the protocol; the connection cannot be used any more.
    #[error("{0}")]
    Milter(String),
    /// The caller passed something that cannot be sent (NUL in a value, a bad field name);
    /// nothing was sent and the connection is still usable.
    #[error("cannot send: {0}")]
    Input(String),
    /// The caller's calls are out of order (a bug in the caller).
    #[error("out of order: {0}")]
    Usage(String),
}

impl From<CodecError> for ProtocolError {
    fn from(e: CodecError) -> Self {
        ProtocolError::Input(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Negotiated, CONNECT not yet sent.
    Ready,
    /// Events flow.
    Open,
    /// The milter accepted the message: no more events until the next transaction.
    AcceptedMessage,
    /// The milter accepted the connection at connect/helo: no more events at all.
    AcceptedConnection,
    /// The milter refused the connection (at connect/helo) or asked for shutdown: every
    /// later event gets this answer.
    Refused(MilterReply),
    /// QUIT sent.
    Closed,
}

/// Limits on what a milter may send back in one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditLimits {
    /// Total bytes of header edits and body replacement.
    pub max_edit_bytes: usize,
}

impl Default for EditLimits {
    fn default() -> Self {
        EditLimits {
            max_edit_bytes: 64 << 20,
        }
    }
}

/// The protocol state of one negotiated milter connection.
#[derive(Debug)]
pub struct Conversation {
    negotiated: Negotiated,
    limits: EditLimits,
    state: State,
    /// The event code the milter asked to skip (`SMFIR_SKIP`).
    skip: Option<u8>,
    /// MAIL was sent and no ABORT since.
    transaction_open: bool,
    awaiting: Option<Stage>,
    edits: Vec<MilterEdit>,
    edit_bytes: usize,
    /// Index in `edits` of the body replacement being accumulated.
    body_edit: Option<usize>,
    quarantine: Option<String>,
}

impl Conversation {
    pub fn new(negotiated: Negotiated, limits: EditLimits) -> Self {
        Conversation {
            negotiated,
            limits,
            state: State::Ready,
            skip: None,
            transaction_open: false,
            awaiting: None,
            edits: Vec::new(),
            edit_bytes: 0,
            body_edit: None,
            quarantine: None,
        }
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The milter wants no more events on this connection (accepted or refused it at
    /// connect/helo, or asked for shutdown): the driver may close the socket.
    pub fn connection_done(&self) -> bool {
        matches!(self.state, State::AcceptedConnection | State::Refused(_))
    }

    /// Starts `event`: appends what to send to `out` and says what follows.
    pub fn begin(
        &mut self,
        event: &Event<'_>,
        macros: &MacroValues,
        out: &mut Vec<u8>,
    ) -> Result<Plan, ProtocolError> {
        let stage = event.stage();
        if let Some(pending) = self.awaiting {
            return Err(ProtocolError::Usage(format!(
                "{stage} while the reply to {pending} is pending"
            )));
        }
        if let Some(known) = self.known_answer(stage)? {
            return Ok(Plan::Answered(known));
        }
        let (code, no_flag, nr_flag, macro_stage) = event_traits(stage);
        let data = self.event_data(event)?;
        if stage == Stage::Mail && (self.transaction_open || self.state == State::AcceptedMessage) {
            self.encode_abort(out)?;
        }
        if stage == Stage::Connect {
            self.state = State::Open;
        }
        if !self.negotiated.in_version(no_flag) {
            return Ok(Plan::Answered(MilterReply::Continue));
        }
        match self.skip {
            Some(skipped) if skipped == code => return Ok(Plan::Answered(MilterReply::Continue)),
            Some(_) => self.skip = None,
            None => {}
        }
        encode_macros(out, code, self.negotiated.macros.get(macro_stage), macros)?;
        if stage == Stage::Mail {
            self.transaction_open = true;
        }
        if !self.negotiated.sends(no_flag) {
            return Ok(Plan::Sent);
        }
        codec::encode(out, code, &[&data])?;
        if stage != Stage::Eom && !self.negotiated.replies(nr_flag) {
            return Ok(Plan::Sent);
        }
        self.awaiting = Some(stage);
        Ok(Plan::Await)
    }

    /// The answer an event gets without asking, given what the milter decided before.
    fn known_answer(&self, stage: Stage) -> Result<Option<MilterReply>, ProtocolError> {
        Ok(match &self.state {
            State::Refused(r) => Some(r.clone()),
            State::AcceptedConnection => Some(MilterReply::Accept),
            State::Closed => return Err(ProtocolError::Usage(format!("{stage} after QUIT"))),
            State::Ready if stage != Stage::Connect => {
                return Err(ProtocolError::Usage(format!("{stage} before connect")));
            }
            State::Open | State::AcceptedMessage if stage == Stage::Connect => {
                return Err(ProtocolError::Usage("a second connect".into()));
            }
            State::AcceptedMessage if is_message_event(stage) => Some(MilterReply::Accept),
            _ => None,
        })
    }

    /// The event's data as the protocol encodes it.
    fn event_data(&self, event: &Event<'_>) -> Result<Vec<u8>, ProtocolError> {
        let mut d = Vec::new();
        match *event {
            Event::Connect { hostname, addr } => connect_data(&mut d, hostname, addr)?,
            Event::Helo(helo) => push_cstr(&mut d, helo.as_bytes(), "HELO name")?,
            Event::Mail { sender, params } => envelope_data(&mut d, sender, params)?,
            Event::Rcpt { recipient, params } => envelope_data(&mut d, recipient, params)?,
            Event::Data | Event::Eoh | Event::Eom => {}
            Event::Header { name, value } => {
                header_data(&mut d, name, value, self.negotiated.leading_space())?
            }
            Event::Body(chunk) => {
                if chunk.len() > BODY_CHUNK {
                    return Err(ProtocolError::Usage(format!(
                        "body chunk of {} bytes (at most {BODY_CHUNK})",
                        chunk.len()
                    )));
                }
                d.extend_from_slice(chunk);
            }
        }
        Ok(d)
    }

    /// Decodes one reply to the event being awaited.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, ProtocolError> {
        let Some(stage) = self.awaiting else {
            return Err(ProtocolError::Milter(format!(
                "unsolicited reply {:?}",
                frame.code as char
            )));
        };
        let step = self.decode_reply(stage, frame)?;
        if let Step::Final(reply) = &step {
            self.awaiting = None;
            self.after_final(stage, reply);
        }
        Ok(step)
    }

    fn decode_reply(&mut self, stage: Stage, frame: Frame) -> Result<Step, ProtocolError> {
        let Frame { code, data } = frame;
        let empty = |reply: MilterReply| {
            if data.is_empty() {
                Ok(Step::Final(reply))
            } else {
                Err(ProtocolError::Milter(format!(
                    "reply {:?} followed by {} data bytes",
                    code as char,
                    data.len()
                )))
            }
        };
        match code {
            response::PROGRESS if data.is_empty() => Ok(Step::Wait),
            response::CONTINUE => empty(MilterReply::Continue),
            response::ACCEPT => empty(MilterReply::Accept),
            response::REJECT => empty(MilterReply::Reject),
            response::TEMPFAIL => empty(MilterReply::Tempfail),
            response::SHUTDOWN => empty(MilterReply::Shutdown),
            response::SKIP => empty(MilterReply::Skip),
            response::DISCARD if stage.is_connection_level() => {
                tracing::warn!(stage = %stage, "milter answered DISCARD at connect/helo: treated as continue");
                empty(MilterReply::Continue)
            }
            response::DISCARD => empty(MilterReply::Discard),
            response::REPLYCODE => ReplyCode::parse(&data)
                .map(|rc| Step::Final(MilterReply::ReplyCode(rc)))
                .map_err(|e| ProtocolError::Milter(format!("malformed reply code: {e}"))),
            response::QUARANTINE => {
                self.require(Actions::QUARANTINE, "quarantine")?;
                let reason = cstrs(&data, 1, "quarantine reason")?.remove(0);
                self.quarantine = Some(String::from_utf8_lossy(reason).into_owned());
                Ok(Step::Wait)
            }
            response::ADDHEADER
            | response::INSHEADER
            | response::CHGHEADER
            | response::REPLBODY => {
                if stage != Stage::Eom {
                    return Err(ProtocolError::Milter(format!(
                        "modification request {:?} at {stage} (only allowed at end of message)",
                        code as char
                    )));
                }
                self.record_edit(code, &data)?;
                Ok(Step::Wait)
            }
            response::ADDRCPT | response::DELRCPT | response::CHGFROM | response::ADDRCPT_PAR => {
                Err(ProtocolError::Milter(format!(
                    "milter asked to {} (not offered: mxguard relays the envelope in lockstep \
                     and cannot change it at end of message)",
                    envelope_change_name(code)
                )))
            }
            other => Err(ProtocolError::Milter(format!(
                "unexpected reply {:?} ({} data bytes) at {stage}",
                other as char,
                data.len()
            ))),
        }
    }

    /// State changes a final reply makes (as Postfix: sticky at connection level).
    fn after_final(&mut self, stage: Stage, reply: &MilterReply) {
        match reply {
            MilterReply::Accept if stage.is_connection_level() => {
                self.state = State::AcceptedConnection
            }
            MilterReply::Accept | MilterReply::Discard => self.state = State::AcceptedMessage,
            MilterReply::Shutdown => self.state = State::Refused(MilterReply::Shutdown),
            MilterReply::Reject | MilterReply::Tempfail | MilterReply::ReplyCode(_)
                if stage.is_connection_level() =>
            {
                self.state = State::Refused(reply.clone())
            }
            MilterReply::Skip => {
                self.skip = Some(event_traits(stage).0);
            }
            _ => {}
        }
    }

    fn require(&self, action: Actions, what: &str) -> Result<(), ProtocolError> {
        if self.negotiated.actions.contains(action) {
            Ok(())
        } else {
            Err(ProtocolError::Milter(format!(
                "milter asked to {what} without negotiating {action}"
            )))
        }
    }

    fn record_edit(&mut self, code: u8, data: &[u8]) -> Result<(), ProtocolError> {
        self.edit_bytes += data.len();
        if self.edit_bytes > self.limits.max_edit_bytes {
            return Err(ProtocolError::Milter(format!(
                "modification requests exceed {} bytes",
                self.limits.max_edit_bytes
            )));
        }
        if code == response::REPLBODY {
            self.require(Actions::CHGBODY, "replace the body")?;
            return self.append_body(data);
        }
        let leading_space = self.negotiated.leading_space();
        let edit = match code {
            response::ADDHEADER => {
                self.require(Actions::ADDHDRS, "add a header")?;
                let f = cstrs(data, 2, "add header")?;
                let (name, value) = header_edit_fields(f[0], f[1], leading_space)?;
                MilterEdit::AddHeader { name, value }
            }
            response::INSHEADER => {
                self.require(Actions::ADDHDRS, "insert a header")?;
                let (index, rest) = split_index(data, "insert header")?;
                let f = cstrs(rest, 2, "insert header")?;
                let (name, value) = header_edit_fields(f[0], f[1], leading_space)?;
                MilterEdit::InsertHeader { index, name, value }
            }
            _ => {
                self.require(Actions::CHGHDRS, "change a header")?;
                let (index, rest) = split_index(data, "change header")?;
                // Sendmail compatibility (as Postfix): index 0 means the first.
                let index = index.max(1);
                let f = cstrs(rest, 2, "change header")?;
                if f[1].is_empty() {
                    let (name, _) = header_edit_fields(f[0], b"", true)?;
                    MilterEdit::DeleteHeader { index, name }
                } else {
                    let (name, value) = header_edit_fields(f[0], f[1], leading_space)?;
                    MilterEdit::ChangeHeader { index, name, value }
                }
            }
        };
        self.edits.push(edit);
        Ok(())
    }

    /// Appends a body replacement chunk, with line ends made CRLF.
    fn append_body(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        let i = *self.body_edit.get_or_insert_with(|| {
            self.edits.push(MilterEdit::ReplaceBody(Vec::new()));
            self.edits.len() - 1
        });
        let MilterEdit::ReplaceBody(body) = &mut self.edits[i] else {
            unreachable!("body_edit points at the body replacement");
        };
        let mut prev_cr = body.last() == Some(&b'\r');
        for &b in chunk {
            if b == b'\n' && !prev_cr {
                body.push(b'\r');
            }
            body.push(b);
            prev_cr = b == b'\r';
        }
        Ok(())
    }

    /// Ends the message after the final reply to end-of-message (or to an earlier content
    /// event that decided it): the edits and quarantine gathered.
    pub fn take_eom_outcome(&mut self, reply: MilterReply) -> EomOutcome {
        self.edit_bytes = 0;
        self.body_edit = None;
        EomOutcome {
            reply,
            edits: std::mem::take(&mut self.edits),
            quarantine: self.quarantine.take(),
        }
    }

    /// Ends the transaction (RSET, a refused MAIL, after end of message, a new HELO):
    /// appends `SMFIC_ABORT` when the milter has a transaction to forget.
    pub fn abort(&mut self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        if self.awaiting.is_some() {
            return Err(ProtocolError::Usage(
                "abort while a reply is pending".into(),
            ));
        }
        if matches!(self.state, State::Open | State::AcceptedMessage) && self.transaction_open {
            self.encode_abort(out)?;
        }
        if self.state == State::AcceptedMessage {
            self.state = State::Open;
        }
        Ok(())
    }

    fn encode_abort(&mut self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        codec::encode(out, command::ABORT, &[])?;
        self.transaction_open = false;
        self.skip = None;
        self.edits.clear();
        self.edit_bytes = 0;
        self.body_edit = None;
        self.quarantine = None;
        if self.state == State::AcceptedMessage {
            self.state = State::Open;
        }
        Ok(())
    }

    /// Ends the conversation: appends `SMFIC_QUIT` when the milter still listens.
    pub fn quit(&mut self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        if matches!(self.state, State::Open | State::AcceptedMessage) && self.awaiting.is_none() {
            codec::encode(out, command::QUIT, &[])?;
        }
        self.state = State::Closed;
        Ok(())
    }
}

fn is_message_event(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Rcpt | Stage::Data | Stage::Header | Stage::Eoh | Stage::Body | Stage::Eom
    )
}

/// (command code, `NO*` flag, `NR_*` flag, macro list) of each event.
fn event_traits(stage: Stage) -> (u8, ProtocolFlags, ProtocolFlags, MacroStage) {
    use ProtocolFlags as P;
    match stage {
        Stage::Connect => (
            command::CONNECT,
            P::NOCONNECT,
            P::NR_CONN,
            MacroStage::Connect,
        ),
        Stage::Helo => (command::HELO, P::NOHELO, P::NR_HELO, MacroStage::Helo),
        Stage::Mail => (command::MAIL, P::NOMAIL, P::NR_MAIL, MacroStage::Mail),
        Stage::Rcpt => (command::RCPT, P::NORCPT, P::NR_RCPT, MacroStage::Rcpt),
        Stage::Data => (command::DATA, P::NODATA, P::NR_DATA, MacroStage::Data),
        Stage::Header => (command::HEADER, P::NOHDRS, P::NR_HDR, MacroStage::Eoh),
        Stage::Eoh => (command::EOH, P::NOEOH, P::NR_EOH, MacroStage::Eoh),
        Stage::Body => (command::BODY, P::NOBODY, P::NR_BODY, MacroStage::Eom),
        Stage::Eom | Stage::Negotiate | Stage::Abort | Stage::Quit => (
            command::BODYEOB,
            ProtocolFlags(0),
            ProtocolFlags(0),
            MacroStage::Eom,
        ),
    }
}

fn envelope_change_name(code: u8) -> &'static str {
    match code {
        response::ADDRCPT => "add a recipient (SMFIR_ADDRCPT)",
        response::DELRCPT => "delete a recipient (SMFIR_DELRCPT)",
        response::CHGFROM => "change the sender (SMFIR_CHGFROM)",
        _ => "add a recipient with parameters (SMFIR_ADDRCPT_PAR)",
    }
}

fn push_cstr(out: &mut Vec<u8>, s: &[u8], what: &str) -> Result<(), ProtocolError> {
    if s.contains(&0) {
        return Err(ProtocolError::Input(format!("{what} contains NUL")));
    }
    out.extend_from_slice(s);
    out.push(0);
    Ok(())
}

/// `hostname\0 family port address\0` (Postfix sends `[address]` for an unknown name).
fn connect_data(
    d: &mut Vec<u8>,
    hostname: Option<&str>,
    addr: Option<SocketAddr>,
) -> Result<(), ProtocolError> {
    let name = match (hostname.filter(|h| !h.is_empty()), addr) {
        (Some(h), _) => h.to_owned(),
        (None, Some(a)) => format!("[{}]", a.ip().to_canonical()),
        (None, None) => "unknown".to_owned(),
    };
    push_cstr(d, name.as_bytes(), "client name")?;
    match addr {
        Some(a) => {
            // An IPv4 client on a dual-stack socket is an IPv4 client.
            let ip = a.ip().to_canonical();
            d.push(if ip.is_ipv4() { b'4' } else { b'6' });
            d.extend_from_slice(&a.port().to_be_bytes());
            push_cstr(d, ip.to_string().as_bytes(), "client address")?;
        }
        None => d.push(b'U'),
    }
    Ok(())
}

/// `<address>\0 param\0 …` as libmilter's `envfrom`/`envrcpt` argv.
fn envelope_data(d: &mut Vec<u8>, address: &str, params: &[&str]) -> Result<(), ProtocolError> {
    let bracketed = if address.starts_with('<') && address.ends_with('>') {
        address.to_owned()
    } else {
        format!("<{address}>")
    };
    push_cstr(d, bracketed.as_bytes(), "address")?;
    for p in params {
        push_cstr(d, p.as_bytes(), "ESMTP parameter")?;
    }
    Ok(())
}

/// `name\0 value\0`: folding made LF (as Sendmail and Postfix send it), and without
/// `HDR_LEADSPC` the one space after the colon removed.
fn header_data(
    d: &mut Vec<u8>,
    name: &str,
    value: &[u8],
    leading_space: bool,
) -> Result<(), ProtocolError> {
    let name = name.trim_end_matches([' ', '\t']);
    if !valid_header_name(name) {
        return Err(ProtocolError::Input(format!(
            "invalid header name {name:?}"
        )));
    }
    let value = if !leading_space && value.first() == Some(&b' ') {
        &value[1..]
    } else {
        value
    };
    let mut v = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        v.push(value[i]);
        i += 1;
    }
    push_cstr(d, name.as_bytes(), "header name")?;
    push_cstr(d, &v, "header value")
}

/// Splits `data` into exactly `n` NUL-terminated strings.
fn cstrs<'a>(data: &'a [u8], n: usize, what: &str) -> Result<Vec<&'a [u8]>, ProtocolError> {
    let bad = || ProtocolError::Milter(format!("malformed {what} request"));
    let body = data.strip_suffix(b"\0").ok_or_else(bad)?;
    let parts: Vec<&[u8]> = body.split(|b| *b == 0).collect();
    if parts.len() != n {
        return Err(bad());
    }
    Ok(parts)
}

fn split_index<'a>(data: &'a [u8], what: &str) -> Result<(u32, &'a [u8]), ProtocolError> {
    if data.len() < 4 {
        return Err(ProtocolError::Milter(format!("malformed {what} request")));
    }
    Ok((
        u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
        &data[4..],
    ))
}

fn header_edit_fields(
    name: &[u8],
    value: &[u8],
    leading_space: bool,
) -> Result<(String, String), ProtocolError> {
    let name = String::from_utf8_lossy(name).into_owned();
    if !valid_header_name(&name) {
        return Err(ProtocolError::Milter(format!(
            "milter sent an invalid header name {name:?}"
        )));
    }
    let value = canonical_header_value(&String::from_utf8_lossy(value), leading_space)
        .map_err(|e| ProtocolError::Milter(format!("milter header {name}: {e}")))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::codec::FrameDecoder;
    use crate::milter::negotiate::{Offer, negotiate};

    fn conv(actions: u32, protocol: u32) -> Conversation {
        let mut data = 6u32.to_be_bytes().to_vec();
        data.extend_from_slice(&actions.to_be_bytes());
        data.extend_from_slice(&protocol.to_be_bytes());
        let n = negotiate(&Offer::mxguard(), &Frame { code: b'O', data }, false).unwrap();
        let mut c = Conversation::new(n, EditLimits::default());
        let mut out = Vec::new();
        assert_eq!(
            c.begin(
                &Event::Connect {
                    hostname: None,
                    addr: Some("192.0.2.1:4567".parse().unwrap())
                },
                &MacroValues::default(),
                &mut out
            )
            .unwrap(),
            if protocol & ProtocolFlags::NR_CONN.0 != 0 || protocol & 1 != 0 {
                Plan::Sent
            } else {
                Plan::Await
            }
        );
        if c.awaiting.is_some() {
            assert_eq!(
                c.on_frame(frame(b'c', b"")).unwrap(),
                Step::Final(MilterReply::Continue)
            );
        }
        c
    }

    fn frame(code: u8, data: &[u8]) -> Frame {
        Frame {
            code,
            data: data.to_vec(),
        }
    }

    fn frames(wire: &[u8]) -> Vec<Frame> {
        let mut d = FrameDecoder::new(1 << 20);
        d.feed(wire);
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    fn begin(c: &mut Conversation, ev: Event<'_>) -> (Plan, Vec<Frame>) {
        let mut out = Vec::new();
        let plan = c.begin(&ev, &macros(), &mut out).unwrap();
        (plan, frames(&out))
    }

    fn macros() -> MacroValues {
        MacroValues {
            queue_id: Some("Q1".into()),
            ..MacroValues::default()
        }
    }

    #[test]
    fn connect_packet_layout() {
        let mut d = Vec::new();
        connect_data(&mut d, None, Some("192.0.2.1:4567".parse().unwrap())).unwrap();
        assert_eq!(d, b"[192.0.2.1]\x004\x11\xd7192.0.2.1\0");
        let mut d = Vec::new();
        connect_data(
            &mut d,
            Some("mail.example"),
            Some("[2001:db8::1]:25".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(d, b"mail.example\x006\x00\x192001:db8::1\0");
        let mut d = Vec::new();
        connect_data(
            &mut d,
            Some("h"),
            Some("[::ffff:192.0.2.1]:25".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(d, b"h\x004\x00\x19192.0.2.1\0");
    }

    #[test]
    fn declined_events_still_get_their_macros() {
        // clamav-milter: NOHELO|NOEOH|NOUNKNOWN|NODATA
        let mut c = conv(0x31, 0x342);
        let (plan, f) = begin(&mut c, Event::Helo("client.example"));
        assert_eq!(plan, Plan::Sent);
        assert!(
            f.is_empty(),
            "no helo macros have values, and HELO is declined"
        );
        let (plan, f) = begin(
            &mut c,
            Event::Mail {
                sender: "a@example.com",
                params: &["SIZE=10"],
            },
        );
        assert_eq!(plan, Plan::Await);
        assert_eq!(f[0], frame(b'D', b"Mi\0Q1\0"));
        assert_eq!(f[1], frame(b'M', b"<a@example.com>\0SIZE=10\0"));
        c.on_frame(frame(b'c', b"")).unwrap();
        let (plan, f) = begin(&mut c, Event::Data);
        assert_eq!(plan, Plan::Sent);
        assert_eq!(f, [frame(b'D', b"Ti\0Q1\0")]);
    }

    #[test]
    fn no_reply_flags_mean_no_wait() {
        // rspamd: NR_* everywhere (tolerated actions aside).
        let mut c = conv(0x133, 0x000f_f080);
        let (plan, _) = begin(&mut c, Event::Helo("h"));
        assert_eq!(plan, Plan::Sent);
        let (plan, _) = begin(
            &mut c,
            Event::Header {
                name: "Subject",
                value: b" hi",
            },
        );
        assert_eq!(plan, Plan::Sent);
        let (plan, _) = begin(&mut c, Event::Eom);
        assert_eq!(plan, Plan::Await, "end of message is always answered");
    }

    #[test]
    fn header_values_without_leadspc_lose_one_space_and_fold_with_lf() {
        let mut c = conv(0x11, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        let (_, f) = begin(
            &mut c,
            Event::Header {
                name: "Subject",
                value: b" a\r\n\tb",
            },
        );
        assert_eq!(f.last().unwrap(), &frame(b'L', b"Subject\0a\n\tb\0"));
        c.on_frame(frame(b'c', b"")).unwrap();
        let mut c = conv(0x11, ProtocolFlags::HDR_LEADSPC.0);
        let (_, f) = begin(
            &mut c,
            Event::Header {
                name: "Subject ",
                value: b" a",
            },
        );
        assert_eq!(f.last().unwrap(), &frame(b'L', b"Subject\0 a\0"));
    }

    #[test]
    fn bad_input_is_refused_without_sending() {
        let mut c = conv(0x11, 0);
        let mut out = Vec::new();
        let e = c
            .begin(
                &Event::Header {
                    name: "Bad Name",
                    value: b"x",
                },
                &macros(),
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(e, ProtocolError::Input(_)));
        let e = c
            .begin(&Event::Helo("a\0b"), &macros(), &mut out)
            .unwrap_err();
        assert!(matches!(e, ProtocolError::Input(_)));
        assert!(out.is_empty());
    }

    #[test]
    fn eom_edits_are_typed_and_canonical() {
        // opendkim: ADDHDRS|CHGHDRS|SETSYMLIST, HDR_LEADSPC|SKIP
        let mut c = conv(0x111, 0x0010_0400);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@example.com",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        let (plan, _) = begin(&mut c, Event::Body(b"hello\r\n"));
        assert_eq!(plan, Plan::Await);
        assert_eq!(
            c.on_frame(frame(b's', b"")).unwrap(),
            Step::Final(MilterReply::Skip)
        );
        let (plan, f) = begin(&mut c, Event::Body(b"more\r\n"));
        assert_eq!((plan, f.len()), (Plan::Answered(MilterReply::Continue), 0));
        begin(&mut c, Event::Eom);
        let mut ins = 0u32.to_be_bytes().to_vec();
        ins.extend_from_slice(b"DKIM-Signature\0 v=1; a=rsa-sha256;\n\td=example.com\0");
        assert_eq!(c.on_frame(frame(b'i', &ins)).unwrap(), Step::Wait);
        let mut del = 2u32.to_be_bytes().to_vec();
        del.extend_from_slice(b"X-Old\0\0");
        c.on_frame(frame(b'm', &del)).unwrap();
        assert_eq!(
            c.on_frame(frame(b'a', b"")).unwrap(),
            Step::Final(MilterReply::Accept)
        );
        let out = c.take_eom_outcome(MilterReply::Accept);
        assert_eq!(
            out.edits,
            [
                MilterEdit::InsertHeader {
                    index: 0,
                    name: "DKIM-Signature".into(),
                    value: " v=1; a=rsa-sha256;\r\n\td=example.com".into()
                },
                MilterEdit::DeleteHeader {
                    index: 2,
                    name: "X-Old".into()
                },
            ]
        );
        assert_eq!(
            out.edits[0].header_line().unwrap(),
            "DKIM-Signature: v=1; a=rsa-sha256;\r\n\td=example.com\r\n"
        );
    }

    #[test]
    fn header_values_without_leadspc_get_their_space_back() {
        let mut c = conv(0x33, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        begin(&mut c, Event::Eom);
        c.on_frame(frame(b'h', b"X-Virus-Status\0Clean\0")).unwrap();
        c.on_frame(frame(b'b', b"new\nbody\r\n")).unwrap();
        c.on_frame(frame(b'b', b"second\n")).unwrap();
        c.on_frame(frame(b'q', b"held for review\0")).unwrap();
        c.on_frame(frame(b'c', b"")).unwrap();
        let out = c.take_eom_outcome(MilterReply::Continue);
        assert_eq!(
            out.edits,
            [
                MilterEdit::AddHeader {
                    name: "X-Virus-Status".into(),
                    value: " Clean".into()
                },
                MilterEdit::ReplaceBody(b"new\r\nbody\r\nsecond\r\n".to_vec()),
            ]
        );
        assert_eq!(out.quarantine.as_deref(), Some("held for review"));
    }

    #[test]
    fn envelope_changes_and_misplaced_edits_are_protocol_errors() {
        let mut c = conv(0x33, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        let e = c.on_frame(frame(b'h', b"X\0y\0")).unwrap_err();
        assert!(
            e.to_string().contains("only allowed at end of message"),
            "{e}"
        );
        let mut c = conv(0x33, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        begin(&mut c, Event::Eom);
        let e = c.on_frame(frame(b'+', b"<x@y>\0")).unwrap_err();
        assert!(e.to_string().contains("add a recipient"), "{e}");
        let mut c = conv(0x01, 0); // ADDHDRS only
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        begin(&mut c, Event::Eom);
        let e = c.on_frame(frame(b'b', b"x")).unwrap_err();
        assert!(e.to_string().contains("without negotiating CHGBODY"), "{e}");
    }

    #[test]
    fn header_injection_from_a_milter_is_refused() {
        let mut c = conv(0x33, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        begin(&mut c, Event::Eom);
        assert!(
            c.on_frame(frame(b'h', b"X-A\0v\nBcc: victim@example\0"))
                .is_err()
        );
    }

    #[test]
    fn accept_at_connect_ends_the_connection_reject_is_sticky() {
        let mut data = 6u32.to_be_bytes().to_vec();
        data.extend_from_slice(&0x11u32.to_be_bytes());
        data.extend_from_slice(&0u32.to_be_bytes());
        let n = negotiate(&Offer::mxguard(), &Frame { code: b'O', data }, false).unwrap();
        let ev = Event::Connect {
            hostname: Some("h"),
            addr: None,
        };
        let mut c = Conversation::new(n.clone(), EditLimits::default());
        assert_eq!(begin(&mut c, ev).0, Plan::Await);
        c.on_frame(frame(b'a', b"")).unwrap();
        assert!(c.connection_done());
        assert_eq!(
            begin(&mut c, Event::Helo("x")).0,
            Plan::Answered(MilterReply::Accept)
        );
        let mut c = Conversation::new(n, EditLimits::default());
        begin(&mut c, ev);
        c.on_frame(frame(b'y', b"421 4.7.0 go away\0")).unwrap();
        match begin(
            &mut c,
            Event::Mail {
                sender: "",
                params: &[],
            },
        )
        .0
        {
            Plan::Answered(MilterReply::ReplyCode(rc)) => assert_eq!(rc.code, 421),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accept_ends_the_message_and_a_new_mail_aborts_first() {
        let mut c = conv(0x11, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        c.on_frame(frame(b'a', b"")).unwrap();
        assert_eq!(
            begin(
                &mut c,
                Event::Rcpt {
                    recipient: "c@d",
                    params: &[]
                }
            )
            .0,
            Plan::Answered(MilterReply::Accept)
        );
        assert_eq!(
            begin(&mut c, Event::Eom).0,
            Plan::Answered(MilterReply::Accept)
        );
        let (plan, f) = begin(
            &mut c,
            Event::Mail {
                sender: "e@f",
                params: &[],
            },
        );
        assert_eq!(plan, Plan::Await);
        assert_eq!(f[0], frame(b'A', b""));
        assert_eq!(f.last().unwrap().code, b'M');
    }

    #[test]
    fn progress_waits_and_stray_data_is_an_error() {
        let mut c = conv(0x11, 0);
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        assert_eq!(c.on_frame(frame(b'p', b"")).unwrap(), Step::Wait);
        assert!(c.on_frame(frame(b'c', b"x")).is_err());
        assert!(c.on_frame(frame(b'?', b"")).is_err());
    }

    #[test]
    fn discard_at_helo_is_continue() {
        let mut c = conv(0x11, 0);
        begin(&mut c, Event::Helo("h"));
        assert_eq!(
            c.on_frame(frame(b'd', b"")).unwrap(),
            Step::Final(MilterReply::Continue)
        );
    }

    #[test]
    fn order_is_checked() {
        let mut data = 6u32.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 8]);
        let n = negotiate(&Offer::mxguard(), &Frame { code: b'O', data }, false).unwrap();
        let mut c = Conversation::new(n, EditLimits::default());
        let mut out = Vec::new();
        assert!(matches!(
            c.begin(&Event::Helo("x"), &macros(), &mut out),
            Err(ProtocolError::Usage(_))
        ));
        let mut c = conv(0x11, 0);
        begin(&mut c, Event::Helo("h"));
        assert!(matches!(
            c.begin(&Event::Helo("again"), &macros(), &mut out),
            Err(ProtocolError::Usage(_))
        ));
    }

    #[test]
    fn abort_and_quit_frames() {
        let mut c = conv(0x11, 0);
        let mut out = Vec::new();
        c.abort(&mut out).unwrap();
        assert!(out.is_empty(), "nothing to abort before MAIL");
        begin(
            &mut c,
            Event::Mail {
                sender: "a@b",
                params: &[],
            },
        );
        c.on_frame(frame(b'c', b"")).unwrap();
        c.abort(&mut out).unwrap();
        assert_eq!(frames(&out), [frame(b'A', b"")]);
        out.clear();
        c.quit(&mut out).unwrap();
        assert_eq!(frames(&out), [frame(b'Q', b"")]);
    }
}
