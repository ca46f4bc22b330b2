//! Mailbox addresses as RFC 5321 §4.1.2 writes them (with RFC 6531's UTF-8), parsed
//! from the client's command and rendered back for the rules and the upstream.
//!
//! smtp-proto hands back a decoded local part, and writing that back verbatim changes
//! the address: `<"a> SIZE=1"@x.test>` reached the upstream as `<a> SIZE=1@x.test>`, a
//! different command. Here the local part is kept decoded and [`Address`]'s `Display`
//! quotes it again whenever it is not a dot-atom, so what the rules see and what the
//! upstream receives parse as exactly the mailbox the client meant. A quoted local part
//! that needs no quotes is written as the atom it is (RFC 5322 §3.2.4: a quoted-string is
//! semantically identical to an atom).
//!
//! Domains are normalised the way the upstream normalises them before it acts — one
//! trailing dot removed — so that `spammer@example.net.` is the sender a deny list names.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a path could not be parsed (the caller picks the reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Not a mailbox: bad quoting, a missing `@`, an empty or invalid domain.
    Syntax(&'static str),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Syntax(why) => f.write_str(why),
        }
    }
}

/// The domain of a mailbox: a name, or an address literal (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`, or a general literal `[tag:content]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name, without a trailing dot, case as sent.
    Name(String),
    /// What stands between the brackets.
    Literal(String),
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(l) => write!(f, "[{l}]"),
        }
    }
}

/// A mailbox `local@domain`. The local part is held decoded (no quotes, no escapes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    /// Parses a mailbox written as RFC 5321 `Mailbox` (the text between the angle
    /// brackets, without a source route).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let (local, rest) = parse_local_part(text)?;
        let domain = rest
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("missing @domain"))?;
        Ok(Address {
            local,
            domain: parse_domain(domain)?,
        })
    }

    /// The decoded local part.
    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether any part is outside ASCII (RFC 6531: needs SMTPUTF8 to relay).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.to_string().is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_local_part(f, &self.local)?;
        write!(f, "@{}", self.domain)
    }
}

/// `MAIL FROM:` — the null sender `<>` or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Null,
    Mailbox(Address),
}

impl ReversePath {
    /// Parses the text between `<` and `>` of a MAIL FROM.
    pub fn parse(inner: &str) -> Result<ReversePath, AddressError> {
        if inner.is_empty() {
            return Ok(ReversePath::Null);
        }
        Address::parse(strip_source_route(inner)?).map(ReversePath::Mailbox)
    }

    pub fn mailbox(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(a) => Some(a),
        }
    }
}

impl fmt::Display for ReversePath {
    /// The address as the rules see it (`""` for the null sender); the wire form adds
    /// the angle brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(a) => a.fmt(f),
        }
    }
}

/// `RCPT TO:` — a mailbox, or the bare `<Postmaster>` every server must accept
/// (RFC 5321 §4.5.1), kept in the case the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    Postmaster(String),
    Mailbox(Address),
}

impl ForwardPath {
    /// Parses the text between `<` and `>` of a RCPT TO.
    pub fn parse(inner: &str) -> Result<ForwardPath, AddressError> {
        if inner.eq_ignore_ascii_case("postmaster") {
            return Ok(ForwardPath::Postmaster(inner.to_owned()));
        }
        if inner.is_empty() {
            return Err(AddressError::Syntax("empty recipient"));
        }
        Address::parse(strip_source_route(inner)?).map(ForwardPath::Mailbox)
    }

    pub fn mailbox(&self) -> Option<&Address> {
        match self {
            ForwardPath::Postmaster(_) => None,
            ForwardPath::Mailbox(a) => Some(a),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster(p) => f.write_str(p),
            ForwardPath::Mailbox(a) => a.fmt(f),
        }
    }
}

/// A source route (`@a.example,@b.example:user@c.example`) is accepted and ignored, as
/// RFC 5321 §4.1.2 and Appendix C ask.
fn strip_source_route(inner: &str) -> Result<&str, AddressError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let (route, mailbox) = inner
        .split_once(':')
        .ok_or(AddressError::Syntax("bad source route"))?;
    for hop in route.split(',') {
        let domain = hop
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("bad source route"))?;
        parse_domain(domain)?;
    }
    Ok(mailbox)
}

/// RFC 5322 `atext` plus RFC 6532's UTF-8: the characters of an unquoted local part.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Characters allowed in a quoted local part: printable ASCII and space (RFC 5321
/// `qtextSMTP` and `quoted-pairSMTP`) and non-ASCII UTF-8; never a control character.
fn quotable(c: char) -> bool {
    c == ' ' || c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control())
}

/// Reads a local part (dot-atom or quoted-string) from the start of `text`; returns it
/// decoded and the rest of the text (which starts with `@` for a mailbox).
fn parse_local_part(text: &str) -> Result<(String, &str), AddressError> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut local = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((local, &quoted[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, e)) if quotable(e) => local.push(e),
                    _ => return Err(AddressError::Syntax("bad escape in quoted local part")),
                },
                c if quotable(c) => local.push(c),
                _ => return Err(AddressError::Syntax("bad character in quoted local part")),
            }
        }
        return Err(AddressError::Syntax("unterminated quoted local part"));
    }
    let end = text.find('@').unwrap_or(text.len());
    let local = &text[..end];
    if !is_dot_atom(local) {
        return Err(AddressError::Syntax("bad local part"));
    }
    Ok((local.to_owned(), &text[end..]))
}

fn write_local_part(f: &mut fmt::Formatter<'_>, local: &str) -> fmt::Result {
    if is_dot_atom(local) {
        return f.write_str(local);
    }
    f.write_str("\"")?;
    for c in local.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// An address as a person types it on a command line, `<a@b>` or `a@b`: the part inside
/// the brackets (surrounding white space removed).
pub fn strip_angle_brackets(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|f| f.strip_suffix('>'))
        .unwrap_or(s)
}

/// A domain name or an address literal. One trailing dot is removed (`example.net.` is
/// `example.net`, as the upstream will treat it).
pub fn parse_domain(text: &str) -> Result<Domain, AddressError> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("unterminated address literal"))?;
        validate_literal(inner)?;
        return Ok(Domain::Literal(inner.to_owned()));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 255 {
        return Err(AddressError::Syntax("bad domain"));
    }
    if !name.split('.').all(valid_label) {
        return Err(AddressError::Syntax("bad domain"));
    }
    Ok(Domain::Name(name.to_owned()))
}

/// A label of letters, digits, hyphens (not at either end) and, leniently as Postfix is,
/// underscores; or UTF-8 (an RFC 6531 U-label).
fn valid_label(label: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii();
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| ok_char(c) && !c.is_control())
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// RFC 5321 §4.1.3: IPv4 dotted quad, `IPv6:` address, or `tag:dcontent`.
fn validate_literal(inner: &str) -> Result<(), AddressError> {
    let bad = AddressError::Syntax("bad address literal");
    if inner.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let (tag, content) = inner.split_once(':').ok_or(bad.clone())?;
    if tag.eq_ignore_ascii_case("IPv6") {
        return content.parse::<Ipv6Addr>().map(|_| ()).map_err(|_| bad);
    }
    let tag_ok = !tag.is_empty()
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !tag.ends_with('-');
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    if tag_ok && content_ok {
        Ok(())
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angle_brackets_are_stripped_once_and_only_in_pairs() {
        for (typed, want) in [
            ("<a@b.example>", "a@b.example"),
            (" a@b.example ", "a@b.example"),
            ("<>", ""),
            ("<a@b.example", "<a@b.example"),
            ("<<a@b>>", "<a@b>"),
        ] {
            assert_eq!(strip_angle_brackets(typed), want, "{typed:?}");
        }
    }

    fn rt(s: &str) -> String {
        Address::parse(s).unwrap().to_string()
    }

    #[test]
    fn quoted_local_parts_keep_their_quotes_where_needed() {
        assert_eq!(rt("\"a> SIZE=1\"@x.test"), "\"a> SIZE=1\"@x.test");
        assert_eq!(
            rt("\"evil@outside.test>\"@d.test"),
            "\"evil@outside.test>\"@d.test"
        );
        assert_eq!(rt("\"john smith\"@d.test"), "\"john smith\"@d.test");
        assert_eq!(rt("\"a\\\"b\\\\c\"@d.test"), "\"a\\\"b\\\\c\"@d.test");
        // A quoted atom is the atom.
        assert_eq!(rt("\"john\"@d.test"), "john@d.test");
        assert_eq!(rt("\"\\j\"@d.test"), "j@d.test");
        // Dots that do not make a dot-atom need quoting.
        assert_eq!(rt("\"a..b\"@d.test"), "\"a..b\"@d.test");
        assert_eq!(rt("\".a\"@d.test"), "\".a\"@d.test");
        let a = Address::parse("\"evil@outside.test>\"@d.test").unwrap();
        assert_eq!(a.local(), "evil@outside.test>");
        assert_eq!(a.domain(), &Domain::Name("d.test".into()));
    }

    #[test]
    fn bad_local_parts_are_refused() {
        for bad in [
            "a b@d.test",
            "a..b@d.test",
            ".a@d.test",
            "a.@d.test",
            "\"unterminated@d.test",
            "\"ctl\u{1}\"@d.test",
            "\"bad\\\u{7}\"@d.test",
            "a\"b\"@d.test",
            "@d.test",
            "a(b)@d.test",
            "nodomain",
            "a@",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn domains_lose_one_trailing_dot_and_literals_parse() {
        assert_eq!(rt("spammer@example.net."), "spammer@example.net");
        assert!(Address::parse("a@example.net..").is_err());
        assert_eq!(rt("a@[127.0.0.1]"), "a@[127.0.0.1]");
        assert_eq!(rt("a@[IPv6:::1]"), "a@[IPv6:::1]");
        assert_eq!(rt("a@[IPv6:2001:db8::1]"), "a@[IPv6:2001:db8::1]");
        assert_eq!(rt("a@[x-tag:foo]"), "a@[x-tag:foo]");
        assert!(Address::parse("a@[999.0.0.1]").is_err());
        assert!(Address::parse("a@[IPv6:zz]").is_err());
        assert!(Address::parse("a@[127.0.0.1").is_err());
        assert!(Address::parse("a@-bad.test").is_err());
        assert!(Address::parse("a@bad-.test").is_err());
        assert!(Address::parse("a@a..test").is_err());
        assert!(Address::parse("a@a b.test").is_err());
        assert_eq!(rt("Ab@Mixed_Case.Example"), "Ab@Mixed_Case.Example");
        assert_eq!(rt("zoë@exämple.test"), "zoë@exämple.test");
    }

    #[test]
    fn postmaster_null_sender_and_source_routes() {
        assert_eq!(
            ForwardPath::parse("Postmaster").unwrap(),
            ForwardPath::Postmaster("Postmaster".into())
        );
        assert_eq!(
            ForwardPath::parse("Postmaster").unwrap().to_string(),
            "Postmaster"
        );
        assert!(ForwardPath::parse("").is_err());
        assert!(ForwardPath::parse("bob").is_err());
        assert_eq!(ReversePath::parse("").unwrap(), ReversePath::Null);
        assert_eq!(
            ReversePath::parse("@a.test,@b.test:u@c.test")
                .unwrap()
                .to_string(),
            "u@c.test"
        );
        assert!(ReversePath::parse("@a.test:").is_err());
        assert!(ReversePath::parse("@a..test:u@c.test").is_err());
    }

    #[test]
    fn every_rendering_parses_back_to_the_same_address() {
        let locals = [
            "a",
            "a.b",
            "john smith",
            "a\"b",
            "a\\b",
            "x>y",
            "a@b",
            " ",
            "a..b",
            "é",
            "(c)",
        ];
        for l in locals {
            let a = Address {
                local: l.to_owned(),
                domain: Domain::Name("d.test".into()),
            };
            let text = a.to_string();
            assert_eq!(
                Address::parse(&text).unwrap(),
                a,
                "{l:?} rendered as {text:?}"
            );
        }
    }
}
