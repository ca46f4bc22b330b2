//! The Sendmail milter protocol's vocabulary (v6, as Postfix's `milter8.c` speaks it) and
//! the typed values a milter's replies decode into.
//!
//! Codes and bit values are the protocol's; names follow libmilter (`SMFIC_*` commands
//! from the MTA, `SMFIR_*` replies, `SMFIF_*` actions, `SMFIP_*` protocol flags).

use std::fmt;

use crate::reply::{Reply, StatusCode};

/// Command codes the MTA sends (`SMFIC_*`).
pub mod command {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// Reply codes a milter sends (`SMFIR_*`).
pub mod response {
    pub const ADDRCPT: u8 = b'+';
    pub const DELRCPT: u8 = b'-';
    pub const ACCEPT: u8 = b'a';
    pub const REPLBODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CONN_FAIL: u8 = b'f';
    pub const CHGHEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const REJECT: u8 = b'r';
    pub const TEMPFAIL: u8 = b't';
    pub const SHUTDOWN: u8 = b'4';
    pub const ADDHEADER: u8 = b'h';
    pub const INSHEADER: u8 = b'i';
    pub const REPLYCODE: u8 = b'y';
    pub const QUARANTINE: u8 = b'q';
    pub const SKIP: u8 = b's';
    pub const CHGFROM: u8 = b'e';
    pub const ADDRCPT_PAR: u8 = b'2';
    pub const SETSYMLIST: u8 = b'l';
}

/// Names bits of a mask for log lines: `ADDHDRS|CHGHDRS|0x400`.
fn mask_names(mask: u32, table: &[(u32, &str)], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut rest = mask;
    let mut first = true;
    for (bit, name) in table {
        if mask & bit != 0 {
            write!(f, "{}{name}", if first { "" } else { "|" })?;
            first = false;
            rest &= !bit;
        }
    }
    if rest != 0 {
        write!(f, "{}{rest:#x}", if first { "" } else { "|" })?;
    } else if first {
        f.write_str("none")?;
    }
    Ok(())
}

/// What a milter may do to a message (`SMFIF_*`), offered by the MTA and requested by the
/// milter during negotiation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(pub u32);

impl Actions {
    pub const ADDHDRS: Actions = Actions(1 << 0);
    pub const CHGBODY: Actions = Actions(1 << 1);
    pub const ADDRCPT: Actions = Actions(1 << 2);
    pub const DELRCPT: Actions = Actions(1 << 3);
    pub const CHGHDRS: Actions = Actions(1 << 4);
    pub const QUARANTINE: Actions = Actions(1 << 5);
    pub const CHGFROM: Actions = Actions(1 << 6);
    pub const ADDRCPT_PAR: Actions = Actions(1 << 7);
    pub const SETSYMLIST: Actions = Actions(1 << 8);

    /// The envelope changes: they arrive at end of message, after MAIL and RCPT were relayed
    /// and answered in lockstep, so mxguard cannot apply them (see [`super::negotiate`]).
    pub const ENVELOPE: Actions =
        Actions(Self::ADDRCPT.0 | Self::DELRCPT.0 | Self::CHGFROM.0 | Self::ADDRCPT_PAR.0);

    const NAMES: [(u32, &'static str); 9] = [
        (1 << 0, "ADDHDRS"),
        (1 << 1, "CHGBODY"),
        (1 << 2, "ADDRCPT"),
        (1 << 3, "DELRCPT"),
        (1 << 4, "CHGHDRS"),
        (1 << 5, "QUARANTINE"),
        (1 << 6, "CHGFROM"),
        (1 << 7, "ADDRCPT_PAR"),
        (1 << 8, "SETSYMLIST"),
    ];

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of `self` not in `other`.
    pub fn without(self, other: Actions) -> Actions {
        Actions(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Actions {
    type Output = Actions;
    fn bitor(self, rhs: Actions) -> Actions {
        Actions(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for Actions {
    type Output = Actions;
    fn bitand(self, rhs: Actions) -> Actions {
        Actions(self.0 & rhs.0)
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        mask_names(self.0, &Self::NAMES, f)
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Protocol flags (`SMFIP_*`): events a milter does not want (`NO*`), events it will not
/// answer (`NR_*`), and protocol extensions (`SKIP`, `RCPT_REJ`, `HDR_LEADSPC`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProtocolFlags(pub u32);

impl ProtocolFlags {
    pub const NOCONNECT: ProtocolFlags = ProtocolFlags(1 << 0);
    pub const NOHELO: ProtocolFlags = ProtocolFlags(1 << 1);
    pub const NOMAIL: ProtocolFlags = ProtocolFlags(1 << 2);
    pub const NORCPT: ProtocolFlags = ProtocolFlags(1 << 3);
    pub const NOBODY: ProtocolFlags = ProtocolFlags(1 << 4);
    pub const NOHDRS: ProtocolFlags = ProtocolFlags(1 << 5);
    pub const NOEOH: ProtocolFlags = ProtocolFlags(1 << 6);
    pub const NR_HDR: ProtocolFlags = ProtocolFlags(1 << 7);
    pub const NOUNKNOWN: ProtocolFlags = ProtocolFlags(1 << 8);
    pub const NODATA: ProtocolFlags = ProtocolFlags(1 << 9);
    pub const SKIP: ProtocolFlags = ProtocolFlags(1 << 10);
    pub const RCPT_REJ: ProtocolFlags = ProtocolFlags(1 << 11);
    pub const NR_CONN: ProtocolFlags = ProtocolFlags(1 << 12);
    pub const NR_HELO: ProtocolFlags = ProtocolFlags(1 << 13);
    pub const NR_MAIL: ProtocolFlags = ProtocolFlags(1 << 14);
    pub const NR_RCPT: ProtocolFlags = ProtocolFlags(1 << 15);
    pub const NR_DATA: ProtocolFlags = ProtocolFlags(1 << 16);
    pub const NR_UNKN: ProtocolFlags = ProtocolFlags(1 << 17);
    pub const NR_EOH: ProtocolFlags = ProtocolFlags(1 << 18);
    pub const NR_BODY: ProtocolFlags = ProtocolFlags(1 << 19);
    pub const HDR_LEADSPC: ProtocolFlags = ProtocolFlags(1 << 20);

    /// Events a version-2 milter knows how to decline.
    pub const V2_EVENTS: ProtocolFlags = ProtocolFlags(0x7f);
    /// Version 3 adds UNKNOWN, version 4 DATA.
    pub const V3_EVENTS: ProtocolFlags = ProtocolFlags(0x7f | 1 << 8);
    pub const V4_EVENTS: ProtocolFlags = ProtocolFlags(0x7f | 1 << 8 | 1 << 9);
    /// Everything version 6 defines: what Postfix offers with `milter_protocol = 6`.
    pub const V6_ALL: ProtocolFlags = ProtocolFlags((1 << 21) - 1);
    /// The `NO*` flags: events that exist in some protocol version.
    pub const NOSEND: ProtocolFlags = ProtocolFlags(0x7f | 1 << 8 | 1 << 9);

    const NAMES: [(u32, &'static str); 21] = [
        (1 << 0, "NOCONNECT"),
        (1 << 1, "NOHELO"),
        (1 << 2, "NOMAIL"),
        (1 << 3, "NORCPT"),
        (1 << 4, "NOBODY"),
        (1 << 5, "NOHDRS"),
        (1 << 6, "NOEOH"),
        (1 << 7, "NR_HDR"),
        (1 << 8, "NOUNKNOWN"),
        (1 << 9, "NODATA"),
        (1 << 10, "SKIP"),
        (1 << 11, "RCPT_REJ"),
        (1 << 12, "NR_CONN"),
        (1 << 13, "NR_HELO"),
        (1 << 14, "NR_MAIL"),
        (1 << 15, "NR_RCPT"),
        (1 << 16, "NR_DATA"),
        (1 << 17, "NR_UNKN"),
        (1 << 18, "NR_EOH"),
        (1 << 19, "NR_BODY"),
        (1 << 20, "HDR_LEADSPC"),
    ];

    pub fn contains(self, other: ProtocolFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: ProtocolFlags) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for ProtocolFlags {
    type Output = ProtocolFlags;
    fn bitor(self, rhs: ProtocolFlags) -> ProtocolFlags {
        ProtocolFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for ProtocolFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        mask_names(self.0, &Self::NAMES, f)
    }
}

impl fmt::Display for ProtocolFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A milter's decision for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterReply {
    /// Go on with the next event.
    Continue,
    /// No more events for this message — or, at connect/helo, for the whole connection.
    /// At end of message: the message is accepted (with its edits).
    Accept,
    /// Refuse the command (Postfix: `550 5.7.1 Command rejected`). At connect/helo it
    /// refuses every later command of the connection.
    Reject,
    /// Postfix: `451 4.7.1 Service unavailable - try again later`; sticky like `Reject`.
    Tempfail,
    /// The milter's own SMTP reply (validated: 4xx/5xx, possibly multi-line).
    ReplyCode(ReplyCode),
    /// Accept and silently drop the message. Never sent for connect/helo (Postfix treats
    /// that as continue, and so does this client).
    Discard,
    /// Answer `421` and close the client connection (`SMFIR_SHUTDOWN`).
    Shutdown,
    /// No more events of this kind (body chunks, usually) for this message.
    Skip,
}

impl MilterReply {
    /// The reply Postfix gives the SMTP client for this decision; `None` when the decision
    /// is not a refusal (continue, accept, skip) or is the caller's to map (discard).
    pub fn smtp_reply(&self) -> Option<Reply> {
        match self {
            MilterReply::Reject => Some(Reply::new(550, StatusCode(5, 7, 1), "Command rejected")),
            MilterReply::Tempfail => Some(Reply::new(
                451,
                StatusCode(4, 7, 1),
                "Service unavailable - try again later",
            )),
            MilterReply::Shutdown => Some(Reply::new(
                421,
                StatusCode(4, 7, 0),
                "Server closing connection",
            )),
            MilterReply::ReplyCode(rc) => Some(rc.to_reply()),
            MilterReply::Continue
            | MilterReply::Accept
            | MilterReply::Skip
            | MilterReply::Discard => None,
        }
    }
}

/// A validated `SMFIR_REPLYCODE`: one code for all lines, the enhanced status code when the
/// milter gave one, and each line's text after the codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCode {
    pub code: u16,
    pub status: Option<StatusCode>,
    pub lines: Vec<String>,
}

impl ReplyCode {
    pub fn to_reply(&self) -> Reply {
        let status = self
            .status
            .unwrap_or_else(|| StatusCode::generic_for(self.code));
        Reply::multiline(self.code, status, self.lines.clone())
    }

    /// Validates the reply text as Postfix does (`milter8_valid_smtp_reply`): every line
    /// `[45]dd` then `-` (non-final, ending in CRLF) or ` ` (final, no line end); an
    /// enhanced code, when present, of the same class. Additionally every line must carry
    /// the same code. Sendmail treats the text as a format string, so `%%` means `%` and a
    /// lone `%` is dropped.
    pub fn parse(data: &[u8]) -> Result<ReplyCode, String> {
        let data = data.strip_suffix(b"\0").unwrap_or(data);
        if data.contains(&0) {
            return Err("reply text contains NUL".into());
        }
        let text = String::from_utf8_lossy(data);
        let text = unescape_percent(&text);
        let mut code = None;
        let mut status = None;
        let mut lines = Vec::new();
        let mut rest = text.as_str();
        loop {
            let (line, next) = match rest.find(['\r', '\n']) {
                None => (rest, None),
                Some(i) => {
                    if !rest[i..].starts_with("\r\n") {
                        return Err("reply line ends without CRLF".into());
                    }
                    (&rest[..i], Some(&rest[i + 2..]))
                }
            };
            let last = next.is_none();
            let (line_code, line_status, line_text) = parse_reply_line(line, last)?;
            match code {
                None => code = Some(line_code),
                Some(c) if c != line_code => {
                    return Err(format!(
                        "reply lines carry different codes ({c}, {line_code})"
                    ));
                }
                Some(_) => {}
            }
            if status.is_none() {
                status = line_status;
            }
            lines.push(line_text.to_owned());
            match next {
                None => break,
                Some(n) => rest = n,
            }
        }
        Ok(ReplyCode {
            code: code.unwrap_or(0),
            status,
            lines,
        })
    }
}

/// `550-5.7.1 text` → (550, Some(5.7.1), "text").
fn parse_reply_line(line: &str, last: bool) -> Result<(u16, Option<StatusCode>, &str), String> {
    let b = line.as_bytes();
    let sep = if last { b' ' } else { b'-' };
    if b.len() < 4
        || !matches!(b[0], b'4' | b'5')
        || !b[1].is_ascii_digit()
        || !b[2].is_ascii_digit()
        || b[3] != sep
    {
        return Err(format!("malformed reply line {line:?}"));
    }
    let code: u16 = line[..3]
        .parse()
        .map_err(|_| format!("bad code in {line:?}"))?;
    let after = &line[4..];
    if after.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        let (esc, text) = after.split_once(' ').unwrap_or((after, ""));
        let status =
            parse_status(esc).ok_or_else(|| format!("malformed enhanced code in {line:?}"))?;
        if !status.fits(code) {
            return Err(format!(
                "enhanced code class differs from the reply code in {line:?}"
            ));
        }
        return Ok((code, Some(status), text));
    }
    Ok((code, None, after))
}

fn parse_status(esc: &str) -> Option<StatusCode> {
    let mut it = esc.split('.');
    let class: u8 = it.next()?.parse().ok()?;
    let subject: u16 = it.next()?.parse().ok()?;
    let detail: u16 = it.next()?.parse().ok()?;
    (it.next().is_none() && matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000)
        .then_some(StatusCode(class, subject, detail))
}

/// `%%` → `%`, a lone `%` dropped (Sendmail's format-string convention).
fn unescape_percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A change a milter asks for at end of message, in the order it asked (later indexes
/// count the fields as earlier edits left them).
///
/// `value` is the field body exactly as it is to be written after `Name:` — leading
/// space included, continuation lines folded with CRLF — so `Name:` + `value` + CRLF is
/// the header line ([`MilterEdit::header_line`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterEdit {
    /// Append a field at the end of the header section (`SMFIR_ADDHEADER`).
    AddHeader { name: String, value: String },
    /// Insert a field so that `index` fields precede it (0 = at the top;
    /// `SMFIR_INSHEADER`). Indexes count the fields as the milter saw them: exactly the
    /// ones the caller sent.
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Replace the `index`-th field called `name` (1-based, case-insensitive; a missing
    /// one is added, as Sendmail does; `SMFIR_CHGHEADER`).
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Remove the `index`-th field called `name` (`SMFIR_CHGHEADER` with an empty value).
    DeleteHeader { index: u32, name: String },
    /// The new body (all `SMFIR_REPLBODY` chunks, concatenated; CRLF line ends).
    ReplaceBody(Vec<u8>),
}

impl MilterEdit {
    /// `Name:value\r\n` for the edits that carry a field.
    pub fn header_line(&self) -> Option<String> {
        match self {
            MilterEdit::AddHeader { name, value }
            | MilterEdit::InsertHeader { name, value, .. }
            | MilterEdit::ChangeHeader { name, value, .. } => Some(format!("{name}:{value}\r\n")),
            MilterEdit::DeleteHeader { .. } | MilterEdit::ReplaceBody(_) => None,
        }
    }
}

/// Checks a field name from a filter: printable ASCII without `:` (RFC 5322 ftext).
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Turns a field body from a filter into the form written after `Name:`: a leading space
/// added unless `has_leading_space` (milters without `HDR_LEADSPC` send the value without
/// the space after the colon), line ends — bare LF from milters, CRLF from rspamd's HTTP
/// replies — made CRLF, trailing line ends dropped. Refused: a bare CR, and a line end not
/// followed by space or tab (it would start a header field of its own).
pub fn canonical_header_value(raw: &str, has_leading_space: bool) -> Result<String, String> {
    let trimmed = raw.trim_end_matches(['\r', '\n']);
    let mut out = String::with_capacity(trimmed.len() + 8);
    if !has_leading_space {
        out.push(' ');
    }
    let mut chars = trimmed.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' => return Err("header value with a bare CR".into()),
            '\n' => {
                if !matches!(chars.peek(), Some(' ') | Some('\t')) {
                    return Err(
                        "header value with a line that does not start with space or tab".into(),
                    );
                }
                out.push_str("\r\n");
            }
            '\0' => return Err("header value with NUL".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_print_their_names() {
        let a = Actions::ADDHDRS | Actions::CHGHDRS | Actions(1 << 12);
        assert_eq!(a.to_string(), "ADDHDRS|CHGHDRS|0x1000");
        assert_eq!(Actions(0).to_string(), "none");
        assert_eq!(
            (ProtocolFlags::NOHELO | ProtocolFlags::HDR_LEADSPC).to_string(),
            "NOHELO|HDR_LEADSPC"
        );
        assert_eq!(ProtocolFlags::V6_ALL.0, 0x1F_FFFF);
    }

    #[test]
    fn replycode_single_line_with_enhanced_code() {
        let rc = ReplyCode::parse(b"554 5.7.1 Gtube pattern\0").unwrap();
        assert_eq!(rc.code, 554);
        assert_eq!(rc.status, Some(StatusCode(5, 7, 1)));
        assert_eq!(rc.lines, ["Gtube pattern"]);
        let mut wire = Vec::new();
        rc.to_reply().write_to(&mut wire);
        assert_eq!(wire, b"554 5.7.1 Gtube pattern\r\n");
    }

    #[test]
    fn replycode_multi_line_and_percent() {
        let rc =
            ReplyCode::parse(b"450-4.2.0 first 100%% sure\r\n450 4.2.0 second %line\0").unwrap();
        assert_eq!(rc.code, 450);
        assert_eq!(rc.lines, ["first 100% sure", "second line"]);
    }

    #[test]
    fn replycode_without_enhanced_code() {
        let rc = ReplyCode::parse(b"451 try later").unwrap();
        assert_eq!((rc.code, rc.status), (451, None));
        assert_eq!(rc.to_reply().status, StatusCode(4, 0, 0));
    }

    #[test]
    fn replycode_refusals() {
        for bad in [
            &b"250 2.0.0 ok"[..],          // not 4xx/5xx
            b"55 short",                   // too short
            b"550-5.7.1 no final line",    // last line must use ' '
            b"550 5.7.1 a\r\n550 5.7.1 b", // non-final line must use '-'
            b"550-5.7.1 a\n550 5.7.1 b",   // bare LF
            b"550-5.7.1 a\r\n450 4.7.1 b", // two codes
            b"550 4.7.1 class mismatch",   // enhanced class differs
            b"550 5.7 incomplete code",    // malformed enhanced code
            b"550 5.7.1 trailing\r\n",     // final line with a terminator
            b"550 5.7.1 nul\0inside",
        ] {
            assert!(
                ReplyCode::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn header_values_get_crlf_folding_and_their_space() {
        assert_eq!(
            canonical_header_value("v=1; a=rsa-sha256;\n\td=example.com", false).unwrap(),
            " v=1; a=rsa-sha256;\r\n\td=example.com"
        );
        assert_eq!(canonical_header_value(" Clean", true).unwrap(), " Clean");
        assert_eq!(
            canonical_header_value("a;\r\n\tb\r\n", false).unwrap(),
            " a;\r\n\tb"
        );
        assert!(canonical_header_value("a\nX-Injected: 1", false).is_err());
        assert!(canonical_header_value("a\rb", false).is_err());
    }

    #[test]
    fn header_names_are_ftext() {
        assert!(valid_header_name("X-Virus-Status"));
        assert!(!valid_header_name(""));
        assert!(!valid_header_name("Bad Name"));
        assert!(!valid_header_name("Bad:Name"));
    }
}
