//! MAIL FROM and RCPT TO as typed commands: the path (see [`super::address`]) and every
//! ESMTP parameter mxguard knows, validated, so nothing is dropped or reshaped between
//! the client and the upstream.
//!
//! Grammar (RFC 5321 §4.1.1.2, §4.1.1.3, §4.1.2): `MAIL FROM:<path> [SP param *(SP param)]`
//! with `param = keyword ["=" value]`. Spaces after the colon are tolerated (as Postfix
//! does); anything glued to the closing `>` is a syntax error. Parameters: SIZE (RFC
//! 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461),
//! AUTH (RFC 4954, never relayed), NOTIFY and ORCPT (RFC 3461).

use std::fmt;

use super::address::{AddressError, ForwardPath, ReversePath};

/// What is wrong with a command; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Not `MAIL FROM:<…>` / `RCPT TO:<…>` at all (501 5.5.4).
    Syntax(&'static str),
    /// The path is not a mailbox (501 5.1.7 for a sender, 501 5.1.3 for a recipient).
    BadAddress(AddressError),
    /// A malformed or repeated parameter (501 5.5.4).
    BadParameter(String),
    /// A parameter we do not know (555 5.5.4).
    UnknownParameter(String),
    /// `SIZE=` beyond what any message can be (552 5.3.4).
    SizeTooLarge,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Syntax(s) => write!(f, "syntax: {s}"),
            CommandError::BadAddress(e) => write!(f, "bad address: {e}"),
            CommandError::BadParameter(p) => write!(f, "bad parameter {p}"),
            CommandError::UnknownParameter(p) => write!(f, "unknown parameter {p}"),
            CommandError::SizeTooLarge => f.write_str("SIZE too large"),
        }
    }
}

/// `BODY=` (RFC 6152 8BITMIME, RFC 3030 BINARYMIME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

impl Body {
    pub fn as_str(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// `RET=` (RFC 3461 §4.3): what a DSN carries back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// The parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` as declared.
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// `ENVID=`, still xtext-encoded (relayed as received).
    pub envid: Option<String>,
    /// `AUTH=`, xtext; never passed on (the upstream trusts only its own AUTH).
    pub auth: Option<String>,
}

impl MailParams {
    /// Whether any DSN parameter (RFC 3461) is present.
    pub fn has_dsn(&self) -> bool {
        self.ret.is_some() || self.envid.is_some()
    }

    /// The parameters as `KEYWORD[=value]` words, as a milter is told them (`AUTH=` is
    /// left out: it is never passed on).
    pub fn to_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = self.size {
            out.push(format!("SIZE={s}"));
        }
        if let Some(b) = self.body {
            out.push(format!("BODY={}", b.as_str()));
        }
        if self.smtputf8 {
            out.push("SMTPUTF8".into());
        }
        if let Some(r) = self.ret {
            out.push(format!("RET={}", r.as_str()));
        }
        if let Some(e) = &self.envid {
            out.push(format!("ENVID={e}"));
        }
        out
    }
}

/// `NOTIFY=` (RFC 3461 §4.1): `NEVER`, or any of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.never {
            return f.write_str("NEVER");
        }
        let parts: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&parts.join(","))
    }
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2), kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orcpt {
    pub addr_type: String,
    pub xtext: String,
}

/// The parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

impl RcptParams {
    pub fn has_dsn(&self) -> bool {
        self.notify.is_some() || self.orcpt.is_some()
    }

    /// The parameters as `KEYWORD=value` words.
    pub fn to_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = &self.notify {
            out.push(format!("NOTIFY={n}"));
        }
        if let Some(o) = &self.orcpt {
            out.push(format!("ORCPT={};{}", o.addr_type, o.xtext));
        }
        out
    }
}

/// A parsed `MAIL FROM:` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailCommand {
    pub from: ReversePath,
    pub params: MailParams,
}

/// A parsed `RCPT TO:` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptCommand {
    pub to: ForwardPath,
    pub params: RcptParams,
}

/// Parses a MAIL command line (without its CRLF).
pub fn parse_mail(line: &str) -> Result<MailCommand, CommandError> {
    let (path, params) = split_command(line, "MAIL", "FROM")?;
    let from = ReversePath::parse(path).map_err(CommandError::BadAddress)?;
    let mut p = MailParams::default();
    for (key, value) in params {
        parse_mail_param(&mut p, &key, value)?;
    }
    Ok(MailCommand { from, params: p })
}

/// Parses a RCPT command line (without its CRLF).
pub fn parse_rcpt(line: &str) -> Result<RcptCommand, CommandError> {
    let (path, params) = split_command(line, "RCPT", "TO")?;
    let to = ForwardPath::parse(path).map_err(CommandError::BadAddress)?;
    let mut p = RcptParams::default();
    for (key, value) in params {
        parse_rcpt_param(&mut p, &key, value)?;
    }
    Ok(RcptCommand { to, params: p })
}

type Params<'a> = Vec<(String, Option<&'a str>)>;

/// Splits `VERB WORD:<path> params` into the path's inner text and the parameters
/// (keyword upper-cased).
fn split_command<'a>(
    line: &'a str,
    verb: &str,
    word: &str,
) -> Result<(&'a str, Params<'a>), CommandError> {
    let syntax = if verb == "MAIL" {
        "MAIL FROM:<address> [parameters]"
    } else {
        "RCPT TO:<address> [parameters]"
    };
    let bad = || CommandError::Syntax(syntax);
    let rest = strip_prefix_ignore_case(line, verb).ok_or_else(bad)?;
    let rest = rest.strip_prefix(' ').ok_or_else(bad)?;
    let rest = strip_prefix_ignore_case(rest, word).ok_or_else(bad)?;
    let rest = rest.strip_prefix(':').ok_or_else(bad)?;
    let rest = rest.trim_start_matches(' ');
    let rest = rest.strip_prefix('<').ok_or_else(bad)?;
    let close = closing_bracket(rest).ok_or_else(bad)?;
    let path = &rest[..close];
    let after = &rest[close + 1..];
    let mut params = Vec::new();
    if !after.is_empty() {
        // Parameters are separated from the path (and each other) by spaces; anything
        // glued to `>` is not a parameter.
        let list = after.strip_prefix(' ').ok_or_else(bad)?;
        for word in list.split(' ').filter(|w| !w.is_empty()) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            if !valid_keyword(key) {
                return Err(CommandError::BadParameter(shorten(word)));
            }
            let key = key.to_ascii_uppercase();
            if params.iter().any(|(k, _): &(String, _)| *k == key) {
                return Err(CommandError::BadParameter(format!("{key} (repeated)")));
            }
            params.push((key, value));
        }
    }
    Ok((path, params))
}

/// The position of the `>` that closes the path, skipping quoted strings (where `>`
/// and `\`-escapes are content).
fn closing_bracket(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match (in_quotes, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => in_quotes = !in_quotes,
            (false, _, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// RFC 5321 `esmtp-keyword`: a letter or digit, then letters, digits and hyphens.
fn valid_keyword(k: &str) -> bool {
    let mut bytes = k.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A parameter named in a reply, cut short so a reply never echoes a huge parameter.
fn shorten(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}...", &s[..end])
    } else {
        s.to_owned()
    }
}

fn needs_value<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, CommandError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CommandError::BadParameter(key.to_owned()))
}

fn no_value(key: &str, value: Option<&str>) -> Result<(), CommandError> {
    match value {
        None => Ok(()),
        Some(_) => Err(CommandError::BadParameter(key.to_owned())),
    }
}

fn parse_mail_param(
    p: &mut MailParams,
    key: &str,
    value: Option<&str>,
) -> Result<(), CommandError> {
    let bad = || CommandError::BadParameter(format!("{key}={}", shorten(value.unwrap_or(""))));
    match key {
        "SIZE" => p.size = Some(parse_size(needs_value(key, value)?)?),
        "BODY" => {
            let v = needs_value(key, value)?;
            p.body = Some(match v.to_ascii_uppercase().as_str() {
                "7BIT" => Body::SevenBit,
                "8BITMIME" => Body::EightBitMime,
                "BINARYMIME" => Body::BinaryMime,
                _ => return Err(bad()),
            });
        }
        "SMTPUTF8" => {
            no_value(key, value)?;
            p.smtputf8 = true;
        }
        "RET" => {
            let v = needs_value(key, value)?;
            p.ret = Some(match v.to_ascii_uppercase().as_str() {
                "FULL" => Ret::Full,
                "HDRS" => Ret::Hdrs,
                _ => return Err(bad()),
            });
        }
        "ENVID" => {
            let v = needs_value(key, value)?;
            // RFC 3461 §4.4: at most 100 characters of xtext.
            if v.len() > 100 || !valid_xtext(v) {
                return Err(bad());
            }
            p.envid = Some(v.to_owned());
        }
        "AUTH" => {
            let v = needs_value(key, value)?;
            if v != "<>" && !valid_xtext(v) {
                return Err(bad());
            }
            p.auth = Some(v.to_owned());
        }
        _ => return Err(CommandError::UnknownParameter(shorten(key))),
    }
    Ok(())
}

fn parse_rcpt_param(
    p: &mut RcptParams,
    key: &str,
    value: Option<&str>,
) -> Result<(), CommandError> {
    let bad = || CommandError::BadParameter(format!("{key}={}", shorten(value.unwrap_or(""))));
    match key {
        "NOTIFY" => p.notify = Some(parse_notify(needs_value(key, value)?).ok_or_else(bad)?),
        "ORCPT" => {
            let v = needs_value(key, value)?;
            let (addr_type, xtext) = v.split_once(';').ok_or_else(bad)?;
            let type_ok = valid_keyword(addr_type);
            // RFC 3461 §4.2: at most 500 characters.
            if !type_ok || xtext.is_empty() || v.len() > 500 || !valid_xtext(xtext) {
                return Err(bad());
            }
            p.orcpt = Some(Orcpt {
                addr_type: addr_type.to_owned(),
                xtext: xtext.to_owned(),
            });
        }
        _ => return Err(CommandError::UnknownParameter(shorten(key))),
    }
    Ok(())
}

/// `SIZE=` digits; more than fits in 64 bits is "too large", never a wrapped number.
fn parse_size(v: &str) -> Result<u64, CommandError> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::BadParameter(format!("SIZE={}", shorten(v))));
    }
    v.parse::<u64>().map_err(|_| CommandError::SizeTooLarge)
}

fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for word in v.split(',') {
        match word.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return None,
        }
    }
    let some = n.success || n.failure || n.delay;
    // NEVER stands alone (RFC 3461 §4.1).
    (n.never != some).then_some(n)
}

/// RFC 3461 §4 xtext: printable ASCII except `+` and `=`, or `+XX` (upper-case hex).
pub fn valid_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(b.get(i + 1).copied().is_some_and(hex)
                    && b.get(i + 2).copied().is_some_and(hex))
                {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if b[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_keeps_every_parameter_typed() {
        let m = parse_mail(
            "MAIL FROM:<a@b.test> SIZE=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=<>",
        )
        .unwrap();
        assert_eq!(m.from.to_string(), "a@b.test");
        assert_eq!(
            m.params,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ314159".into()),
                auth: Some("<>".into()),
            }
        );
        let m = parse_mail("mail from: <>").unwrap();
        assert_eq!(m.from, ReversePath::Null);
    }

    #[test]
    fn quoting_cannot_restructure_the_command() {
        let m = parse_mail("MAIL FROM:<\"a> SIZE=1\"@x.test>").unwrap();
        assert_eq!(m.from.to_string(), "\"a> SIZE=1\"@x.test");
        assert_eq!(m.params.size, None);
        let r = parse_rcpt("RCPT TO:<\"evil@outside.test>\"@d.test>").unwrap();
        assert_eq!(
            r.to.mailbox().unwrap().domain().to_string(),
            "d.test",
            "the rules must see the real domain"
        );
        assert_eq!(r.to.to_string(), "\"evil@outside.test>\"@d.test");
        let r = parse_rcpt("RCPT TO:<\"john smith\"@d.test>").unwrap();
        assert_eq!(r.to.to_string(), "\"john smith\"@d.test");
    }

    #[test]
    fn syntax_errors_and_limits() {
        assert_eq!(
            parse_mail("MAIL FROM:<a@b>SIZE=3"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
        assert_eq!(
            parse_mail("MAIL FROM:<a@b.test> SIZE=99999999999999999999999"),
            Err(CommandError::SizeTooLarge)
        );
        assert!(matches!(
            parse_mail("MAIL FROM:<a@b.test> SIZE=12x"),
            Err(CommandError::BadParameter(_))
        ));
        assert!(matches!(
            parse_mail("MAIL FROM:<a@b.test> SIZE=1 SIZE=2"),
            Err(CommandError::BadParameter(_))
        ));
        assert_eq!(
            parse_mail("MAIL FROM:<a@b.test> XFOO=1"),
            Err(CommandError::UnknownParameter("XFOO".into()))
        );
        assert!(matches!(
            parse_mail("MAIL FROM:<a b@c.test>"),
            Err(CommandError::BadAddress(_))
        ));
        assert!(parse_mail("MAIL FROM:a@b.test").is_err());
        assert!(parse_mail("MAIL FROM <a@b.test>").is_err());
        assert!(parse_mail("MAIL FROM:<a@b.test").is_err());
        assert!(parse_mail("MAILFROM:<a@b.test>").is_err());
        assert!(matches!(
            parse_mail("MAIL FROM:<a@b.test> SMTPUTF8=yes"),
            Err(CommandError::BadParameter(_))
        ));
        let long = format!("MAIL FROM:<a@b.test> X{}=1", "Y".repeat(2000));
        match parse_mail(&long) {
            Err(CommandError::UnknownParameter(p)) => assert!(p.len() < 80, "{p}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rcpt_dsn_parameters() {
        let r =
            parse_rcpt("RCPT TO:<b@c.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40c.test").unwrap();
        let n = r.params.notify.unwrap();
        assert!(n.success && n.delay && !n.failure && !n.never);
        assert_eq!(n.to_string(), "SUCCESS,DELAY");
        assert_eq!(r.params.orcpt.unwrap().xtext, "b+40c.test");
        assert!(parse_rcpt("RCPT TO:<b@c.test> NOTIFY=NEVER,SUCCESS").is_err());
        assert!(parse_rcpt("RCPT TO:<b@c.test> NOTIFY=SOMETIMES").is_err());
        assert!(parse_rcpt("RCPT TO:<b@c.test> ORCPT=rfc822").is_err());
        assert!(parse_rcpt("RCPT TO:<b@c.test> ORCPT=rfc822;a+zz").is_err());
        let p = parse_rcpt("RCPT TO:<Postmaster>").unwrap();
        assert_eq!(p.to, ForwardPath::Postmaster("Postmaster".into()));
        assert!(parse_rcpt("RCPT TO:<>").is_err());
    }

    #[test]
    fn xtext() {
        assert!(valid_xtext("abc+2B+3Dx"));
        assert!(!valid_xtext("a=b"));
        assert!(!valid_xtext("a+2"));
        assert!(!valid_xtext("a+2b"));
        assert!(!valid_xtext("a b"));
        assert!(valid_xtext(""));
    }
}
