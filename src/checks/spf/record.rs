//! The SPF record (RFC 7208 §4.5, §12 ABNF), parsed strictly and without I/O.
//!
//! Every syntax error anywhere in the record is a `permerror` (§4.6), found before any
//! term is evaluated: bad CIDR lengths, invalid networks, domain-specs that do not end
//! in a macro or a valid top label, unknown mechanisms, malformed modifier names,
//! `redirect=`/`exp=` twice, and any character that is not printable ASCII or a space.
//! [`Record`]'s `Display` renders a record that parses back to the same record.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::macros::{Context, MacroError, MacroString, Token};

/// A parsed `v=spf1` record: its terms in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Directive(Directive),
    /// `redirect=` (§6.1).
    Redirect(DomainSpec),
    /// `exp=` (§6.2).
    Explanation(DomainSpec),
    /// Any other modifier: checked for syntax, otherwise ignored (§6).
    Unknown {
        name: String,
        value: MacroString,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
}

/// The result a matching directive gives (§4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(DomainSpec),
    A {
        domain: Option<DomainSpec>,
        cidr: DualCidr,
    },
    Mx {
        domain: Option<DomainSpec>,
        cidr: DualCidr,
    },
    Ptr(Option<DomainSpec>),
    Ip4 {
        network: Ipv4Addr,
        prefix: u8,
    },
    Ip6 {
        network: Ipv6Addr,
        prefix: u8,
    },
    Exists(DomainSpec),
}

/// The prefix lengths of `a` and `mx` (`/24//64`); 32 and 128 when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualCidr {
    pub v4: u8,
    pub v6: u8,
}

impl Default for DualCidr {
    fn default() -> Self {
        DualCidr { v4: 32, v6: 128 }
    }
}

/// A domain-spec: a macro string that ends in a macro or in `.toplabel` (§7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec(pub MacroString);

/// Why a record is not a valid SPF record (its `permerror` reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}{}", term_suffix(.term))]
pub struct RecordError {
    /// The offending term, as written (empty for record-wide problems).
    pub term: String,
    pub problem: Problem,
}

fn term_suffix(term: &str) -> String {
    if term.is_empty() {
        String::new()
    } else {
        format!(" in {term:?}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not an SPF record (no \"v=spf1\")")]
    NotSpf,
    #[error("character {0:?} is not printable ASCII")]
    BadCharacter(char),
    #[error("unknown mechanism")]
    UnknownMechanism,
    #[error("invalid modifier name")]
    BadModifierName,
    #[error("{0} takes no argument here")]
    UnexpectedArgument(&'static str),
    #[error("{0} needs \":\" and a domain-spec")]
    MissingDomain(&'static str),
    #[error("empty domain-spec")]
    EmptyDomain,
    #[error("domain-spec must end in a macro or a valid top-level label")]
    BadDomainEnd,
    #[error("invalid CIDR prefix length")]
    BadCidr,
    #[error("invalid IPv4 network")]
    BadIp4,
    #[error("invalid IPv6 network")]
    BadIp6,
    #[error("{0}= appears more than once")]
    Duplicate(&'static str),
    #[error("macro: {0}")]
    Macro(#[from] MacroError),
}

/// True if a TXT record's text is an SPF record: `v=spf1` (any case) followed by a
/// space or the end (§4.5). Other TXT records at the name are none of SPF's business.
pub fn is_spf_record(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && (txt.len() == 6 || txt[6] == b' ')
}

impl Record {
    /// Parses a whole record, `v=spf1` included.
    pub fn parse(text: &str) -> Result<Record, RecordError> {
        let whole = |problem| RecordError {
            term: String::new(),
            problem,
        };
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
            return Err(whole(Problem::BadCharacter(c)));
        }
        if !is_spf_record(text.as_bytes()) {
            return Err(whole(Problem::NotSpf));
        }
        let mut terms = Vec::new();
        let (mut redirect, mut exp) = (false, false);
        for word in text[6..].split(' ').filter(|w| !w.is_empty()) {
            let term = parse_term(word).map_err(|problem| RecordError {
                term: word.to_owned(),
                problem,
            })?;
            let seen = match &term {
                Term::Redirect(_) => Some((&mut redirect, "redirect")),
                Term::Explanation(_) => Some((&mut exp, "exp")),
                _ => None,
            };
            if let Some((seen, name)) = seen {
                if *seen {
                    return Err(RecordError {
                        term: word.to_owned(),
                        problem: Problem::Duplicate(name),
                    });
                }
                *seen = true;
            }
            terms.push(term);
        }
        Ok(Record { terms })
    }

    pub fn directives(&self) -> impl Iterator<Item = &Directive> {
        self.terms.iter().filter_map(|t| match t {
            Term::Directive(d) => Some(d),
            _ => None,
        })
    }

    pub fn redirect(&self) -> Option<&DomainSpec> {
        self.terms.iter().find_map(|t| match t {
            Term::Redirect(d) => Some(d),
            _ => None,
        })
    }

    pub fn explanation(&self) -> Option<&DomainSpec> {
        self.terms.iter().find_map(|t| match t {
            Term::Explanation(d) => Some(d),
            _ => None,
        })
    }

    /// A record with an `all` anywhere ignores its `redirect=` (§6.1).
    pub fn has_all(&self) -> bool {
        self.directives().any(|d| d.mechanism == Mechanism::All)
    }
}

fn parse_term(word: &str) -> Result<Term, Problem> {
    if let Some((name, value)) = modifier_parts(word) {
        return parse_modifier(name, value);
    }
    let (qualifier, rest) = match word.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &word[1..]),
        b'-' => (Qualifier::Fail, &word[1..]),
        b'~' => (Qualifier::SoftFail, &word[1..]),
        b'?' => (Qualifier::Neutral, &word[1..]),
        _ => (Qualifier::Pass, word),
    };
    let split = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let (name, arg) = rest.split_at(split);
    let mechanism = parse_mechanism(&name.to_ascii_lowercase(), arg)?;
    Ok(Term::Directive(Directive {
        qualifier,
        mechanism,
    }))
}

/// `name=value` when `word` starts with a modifier name (§12: `name = ALPHA *( ALPHA /
/// DIGIT / "-" / "_" / "." )`) directly followed by `=`.
fn modifier_parts(word: &str) -> Option<(&str, &str)> {
    let end = word
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(word.len());
    let (name, rest) = word.split_at(end);
    let value = rest.strip_prefix('=')?;
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some((name, value))
}

fn parse_modifier(name: &str, value: &str) -> Result<Term, Problem> {
    if name.eq_ignore_ascii_case("redirect") {
        Ok(Term::Redirect(DomainSpec::parse(value)?))
    } else if name.eq_ignore_ascii_case("exp") {
        Ok(Term::Explanation(DomainSpec::parse(value)?))
    } else {
        Ok(Term::Unknown {
            name: name.to_owned(),
            value: MacroString::parse(value, Context::Modifier)?,
        })
    }
}

fn parse_mechanism(name: &str, arg: &str) -> Result<Mechanism, Problem> {
    let domain_arg = |label| match arg.strip_prefix(':') {
        Some(d) => DomainSpec::parse(d),
        None => Err(Problem::MissingDomain(label)),
    };
    let no_arg = |label| {
        if arg.is_empty() {
            Ok(())
        } else {
            Err(Problem::UnexpectedArgument(label))
        }
    };
    Ok(match name {
        "all" => {
            no_arg("all")?;
            Mechanism::All
        }
        "include" => Mechanism::Include(domain_arg("include")?),
        "exists" => Mechanism::Exists(domain_arg("exists")?),
        "a" => {
            let (domain, cidr) = domain_and_cidr(arg)?;
            Mechanism::A { domain, cidr }
        }
        "mx" => {
            let (domain, cidr) = domain_and_cidr(arg)?;
            Mechanism::Mx { domain, cidr }
        }
        "ptr" if arg.is_empty() => Mechanism::Ptr(None),
        "ptr" if arg.starts_with(':') => Mechanism::Ptr(Some(domain_arg("ptr")?)),
        "ptr" => return Err(Problem::UnexpectedArgument("ptr")),
        "ip4" => {
            let (net, prefix) = network_and_prefix(arg, 32)?;
            let network = net.parse().map_err(|_| Problem::BadIp4)?;
            Mechanism::Ip4 { network, prefix }
        }
        "ip6" => {
            let (net, prefix) = network_and_prefix(arg, 128)?;
            let network = net.parse().map_err(|_| Problem::BadIp6)?;
            Mechanism::Ip6 { network, prefix }
        }
        _ => return Err(Problem::UnknownMechanism),
    })
}

/// `:network[/prefix]` of `ip4`/`ip6`; the address itself is parsed by the caller.
fn network_and_prefix(arg: &str, max: u8) -> Result<(&str, u8), Problem> {
    let Some(value) = arg.strip_prefix(':') else {
        return Err(if max == 32 {
            Problem::BadIp4
        } else {
            Problem::BadIp6
        });
    };
    match value.split_once('/') {
        Some((net, len)) => Ok((net, cidr_length(len, max).ok_or(Problem::BadCidr)?)),
        None => Ok((value, max)),
    }
}

/// `[":" domain-spec] [dual-cidr-length]` of `a` and `mx`. The CIDR suffix is taken
/// from the end, so a domain-spec may itself hold `/` (`a:foo:bar/baz.example.com`).
fn domain_and_cidr(arg: &str) -> Result<(Option<DomainSpec>, DualCidr), Problem> {
    let mut rest = arg;
    let mut cidr = DualCidr::default();
    if let Some((head, len)) = rest.rsplit_once("//")
        && is_digits(len)
    {
        cidr.v6 = cidr_length(len, 128).ok_or(Problem::BadCidr)?;
        rest = head;
    }
    if let Some((head, len)) = rest.rsplit_once('/')
        && is_digits(len)
    {
        cidr.v4 = cidr_length(len, 32).ok_or(Problem::BadCidr)?;
        rest = head;
    }
    match rest.strip_prefix(':') {
        Some(d) => Ok((Some(DomainSpec::parse(d)?), cidr)),
        None if rest.is_empty() => Ok((None, cidr)),
        None => Err(Problem::BadCidr),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A prefix length: decimal without leading zeros (like the ip4-network octets), at
/// most `max` (§5.6: "/33" is a permerror, so is "/032").
fn cidr_length(s: &str, max: u8) -> Option<u8> {
    if !is_digits(s) || s.len() > 3 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse::<u8>().ok().filter(|n| *n <= max)
}

impl DomainSpec {
    pub fn parse(s: &str) -> Result<DomainSpec, Problem> {
        let m = MacroString::parse(s, Context::Domain)?;
        match m.0.last() {
            None => return Err(Problem::EmptyDomain),
            Some(Token::Literal(lit)) => check_domain_end(lit, m.0.len() > 1)?,
            Some(_) => {}
        }
        Ok(DomainSpec(m))
    }
}

/// The end of a domain-spec whose last token is the literal `lit` (§7.1: `"." toplabel
/// ["."]`). A lone `.` right after a macro (`%{d}.`) is taken as the root's trailing dot,
/// as published records use it.
fn check_domain_end(lit: &str, after_macro: bool) -> Result<(), Problem> {
    if lit == "." && after_macro {
        return Ok(());
    }
    let lit = lit.strip_suffix('.').unwrap_or(lit);
    match lit.rsplit_once('.') {
        Some((_, top)) if is_toplabel(top) => Ok(()),
        _ => Err(Problem::BadDomainEnd),
    }
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" )
/// alphanum )`: not all-numeric unless it has an inner dash, never starting or ending
/// with a dash.
fn is_toplabel(t: &str) -> bool {
    let b = t.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("v=spf1")?;
        for t in &self.terms {
            write!(f, " {t}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Directive(d) => write!(f, "{d}"),
            Term::Redirect(d) => write!(f, "redirect={d}"),
            Term::Explanation(d) => write!(f, "exp={d}"),
            Term::Unknown { name, value } => write!(f, "{name}={value}"),
        }
    }
}

impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = match self.qualifier {
            Qualifier::Pass => "",
            Qualifier::Fail => "-",
            Qualifier::SoftFail => "~",
            Qualifier::Neutral => "?",
        };
        write!(f, "{q}{}", self.mechanism)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_domain = |f: &mut fmt::Formatter<'_>, name, d: &Option<DomainSpec>| {
            f.write_str(name)?;
            match d {
                Some(d) => write!(f, ":{d}"),
                None => Ok(()),
            }
        };
        match self {
            Mechanism::All => f.write_str("all"),
            Mechanism::Include(d) => write!(f, "include:{d}"),
            Mechanism::Exists(d) => write!(f, "exists:{d}"),
            Mechanism::A { domain, cidr } => {
                with_domain(f, "a", domain)?;
                write!(f, "{cidr}")
            }
            Mechanism::Mx { domain, cidr } => {
                with_domain(f, "mx", domain)?;
                write!(f, "{cidr}")
            }
            Mechanism::Ptr(d) => with_domain(f, "ptr", d),
            Mechanism::Ip4 { network, prefix } if *prefix == 32 => write!(f, "ip4:{network}"),
            Mechanism::Ip4 { network, prefix } => write!(f, "ip4:{network}/{prefix}"),
            Mechanism::Ip6 { network, prefix } if *prefix == 128 => write!(f, "ip6:{network}"),
            Mechanism::Ip6 { network, prefix } => write!(f, "ip6:{network}/{prefix}"),
        }
    }
}

impl fmt::Display for DualCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 != 32 {
            write!(f, "/{}", self.v4)?;
        }
        if self.v6 != 128 {
            write!(f, "//{}", self.v6)?;
        }
        Ok(())
    }
}

impl fmt::Display for DomainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(record: &str) -> Problem {
        match Record::parse(record) {
            Ok(r) => panic!("{record:?} parsed as {r:?}"),
            Err(e) => e.problem,
        }
    }

    #[test]
    fn valid_records_parse_and_render_back() {
        let table = [
            "v=spf1",
            "v=spf1 -all",
            "V=SpF1 ~all",
            "v=spf1 a  -all ",
            "v=spf1 +all ?all ~all -all",
            "v=spf1 a mx ptr a:example.com mx:example.com ptr:example.com",
            "v=spf1 a/24 a//64 a/24//64 mx/0 mx//0 a:example.com/24//64",
            "v=spf1 a:foo:bar/baz.example.com mx:foo:bar/baz.example.com/24",
            "v=spf1 a:foo.example.xn--zckzah a:x.123-4 a:example.com.",
            "v=spf1 ip4:1.2.3.4 ip4:0.0.0.0/0 ip4:10.0.0.0/8 ip6:::1 ip6:::/0 ip6:Cafe:Babe:8000::/33",
            "v=spf1 ip6:::FFFF:1.2.3.4 ip6:::1.1.1.1/0",
            "v=spf1 include:_spf.example.com exists:%{i}.%{l2r-}.user.%{d2}",
            "v=spf1 redirect=%{d}.d.spf.example.com. exp=msg.example.com.",
            "v=spf1 exists:%{ir}.%{v}.arpa.",
            "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",
            "v=spf1 default=pass foo= x=%{c}%{r}%{t} a=b",
            "v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all",
            "v=spf1 -include:_spfh.%{d2} ip4:1.2.3.0/24 -all",
            "v=spf1 a:%{H} exists:%{p}.should.example.com",
        ];
        for text in table {
            let r = Record::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let shown = r.to_string();
            let again = Record::parse(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
            assert_eq!(r, again, "{text:?} rendered as {shown:?}");
        }
    }

    #[test]
    fn the_parts_are_what_was_written() {
        let r = Record::parse(
            "v=spf1 -a:foo.example.com/24//64 ip6:cafe::/33 redirect=x.example exp=e.example",
        )
        .unwrap();
        assert_eq!(r.terms.len(), 4);
        let Term::Directive(d) = &r.terms[0] else {
            panic!()
        };
        assert_eq!(d.qualifier, Qualifier::Fail);
        let Mechanism::A { domain, cidr } = &d.mechanism else {
            panic!()
        };
        assert_eq!(domain.as_ref().unwrap().to_string(), "foo.example.com");
        assert_eq!(*cidr, DualCidr { v4: 24, v6: 64 });
        assert_eq!(r.redirect().unwrap().to_string(), "x.example");
        assert_eq!(r.explanation().unwrap().to_string(), "e.example");
        assert!(!r.has_all());
        // A colon-domain keeps its slash: no CIDR here.
        let r = Record::parse("v=spf1 a:foo:bar/baz.example.com").unwrap();
        assert_eq!(r.to_string(), "v=spf1 a:foo:bar/baz.example.com");
    }

    #[test]
    fn invalid_records_are_permerrors() {
        use Problem::*;
        let table = [
            ("v=spf10", NotSpf),
            ("v=spf1mx", NotSpf),
            ("spf1 -all", NotSpf),
            (
                "v=spf1 a:\u{ef}\u{bb}\u{bf}garbage.example.net -all",
                BadCharacter('\u{ef}'),
            ),
            ("v=spf1 \u{80}a:example.net -all", BadCharacter('\u{80}')),
            ("v=spf1 a:ctrl.example.com\rptr -all", BadCharacter('\r')),
            (
                "v=spf1 ip4:192.0.2.5\n include:x.example ~all",
                BadCharacter('\n'),
            ),
            ("v=spf1 a:foo.example.com\0", BadCharacter('\0')),
            ("v=spf1\t-all", BadCharacter('\t')),
            ("v=spf1 ip4:1.2.3.4 -all moo", UnknownMechanism),
            ("v=spf1 moo.cow/far_out=man:dog/cat", UnknownMechanism),
            ("v=spf1 moo.cow:far_out=man:dog/cat", UnknownMechanism),
            ("v=spf1 redirect:t2.example.com", UnknownMechanism),
            ("v=spf1 1up=foo", UnknownMechanism),
            ("v=spf1 =all", UnknownMechanism),
            ("v=spf1 +", UnknownMechanism),
            ("v=spf1 -all.", UnexpectedArgument("all")),
            ("v=spf1 -all:foobar", UnexpectedArgument("all")),
            ("v=spf1 -all/8", UnexpectedArgument("all")),
            ("v=spf1 ptr/0 -all", UnexpectedArgument("ptr")),
            ("v=spf1 include", MissingDomain("include")),
            ("v=spf1 exists", MissingDomain("exists")),
            ("v=spf1 include: -all", EmptyDomain),
            ("v=spf1 a:", EmptyDomain),
            ("v=spf1 mx: -all", EmptyDomain),
            ("v=spf1 ptr:", EmptyDomain),
            ("v=spf1 exists:", EmptyDomain),
            ("v=spf1 exp= -all", EmptyDomain),
            ("v=spf1 ?all redirect=", EmptyDomain),
            ("v=spf1 a:foo-bar -all", BadDomainEnd),
            ("v=spf1 a:example.com:8080", BadDomainEnd),
            ("v=spf1 a:111.222.33.44", BadDomainEnd),
            ("v=spf1 a:abc.123", BadDomainEnd),
            ("v=spf1 mx:abc.123", BadDomainEnd),
            ("v=spf1 a:museum", BadDomainEnd),
            ("v=spf1 a:museum.", BadDomainEnd),
            ("v=spf1 a:example.-com", BadDomainEnd),
            ("v=spf1 a:example.com-", BadDomainEnd),
            ("v=spf1 include:ip5.example.com/24 -all", BadDomainEnd),
            ("v=spf1 exists:mail.example.com/24", BadDomainEnd),
            ("v=spf1 exp=-all", BadDomainEnd),
            ("v=spf1 redirect=-all ?all", BadDomainEnd),
            ("v=spf1 a//129 -all", BadCidr),
            ("v=spf1 a/33 -all", BadCidr),
            ("v=spf1 mx/33 -all", BadCidr),
            ("v=spf1 a/24/64 -all", BadCidr),
            ("v=spf1 a/032", BadCidr),
            ("v=spf1 ip4:1.2.3.4/33 -all", BadCidr),
            ("v=spf1 ip4:1.2.3.4/032 -all", BadCidr),
            ("v=spf1 ip4:1.2.3.4//32", BadCidr),
            ("v=spf1 ip4:1.2.3.4/", BadCidr),
            ("v=spf1 ip6:::1.1.1.1/129", BadCidr),
            ("v=spf1 ip6:::1.1.1.1//33", BadCidr),
            ("v=spf1 ip4", BadIp4),
            ("v=spf1 ip4:1.2.3", BadIp4),
            ("v=spf1 ip4:1.2.3.4:8080", BadIp4),
            ("v=spf1 ip4:01.2.3.4", BadIp4),
            ("v=spf1 ip4:::1", BadIp4),
            ("v=spf1 -all ip6", BadIp6),
            ("v=spf1 ip6::CAFE::BABE", BadIp6),
            ("v=spf1 ip6:1.2.3.4", BadIp6),
            ("v=spf1 exp=a.example exp=b.example", Duplicate("exp")),
            (
                "v=spf1 redirect=a.example -all redirect=a.example",
                Duplicate("redirect"),
            ),
            ("v=spf1 -all foo=%abc", Macro(MacroError::BadPercent)),
            (
                "v=spf1 -exists:%(ir).sbl.example.com",
                Macro(MacroError::BadPercent),
            ),
            (
                "v=spf1 exists:foo%.sbl.example.com",
                Macro(MacroError::BadPercent),
            ),
            (
                "v=spf1 a:%{a}.example.com",
                Macro(MacroError::UnknownLetter('a')),
            ),
            (
                "v=spf1 -all exp=%{r}.example.com",
                Macro(MacroError::ExplanationOnly('r')),
            ),
            ("v=spf1 a:%{d0}.example.com", Macro(MacroError::ZeroDigits)),
        ];
        for (text, want) in table {
            assert_eq!(problem(text), want, "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_term() {
        let e = Record::parse("v=spf1 a mx:abc.123 -all").unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain-spec must end in a macro or a valid top-level label in \"mx:abc.123\""
        );
    }

    #[test]
    fn spf_records_are_told_from_other_txt_records() {
        for yes in ["v=spf1", "v=spf1 -all", "V=SPF1 a"] {
            assert!(is_spf_record(yes.as_bytes()), "{yes}");
        }
        for no in ["v=spf10", "v=spf1-all", "spf2.0/pra", "", "\u{96}", "v=spf"] {
            assert!(!is_spf_record(no.as_bytes()), "{no}");
        }
    }
}
