//! SPF macro strings (RFC 7208 §7): parsed once with the record, expanded per check.
//!
//! A macro string is a list of literals, the escapes `%%` `%_` `%-`, and macros
//! `%{letter digits r delimiters}`. Expansion needs a validated PTR name only for
//! `%{p}`; the evaluator looks it up first (see [`MacroString::uses_ptr`]), so this
//! module does no I/O.

use std::fmt;
use std::net::IpAddr;

/// Where a macro string appears decides which letters and characters it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A mechanism's or modifier's domain-spec: `c`, `r` and `t` are not allowed (§7.3).
    Domain,
    /// An unknown modifier's value: any macro letter, syntax checked only.
    Modifier,
    /// The explanation text an `exp=` record holds: every letter, and spaces.
    Explanation,
}

/// A macro letter (§7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letter {
    /// `s`: the sender, `local@domain`.
    Sender,
    /// `l`: the sender's local-part.
    Local,
    /// `o`: the sender's domain.
    SenderDomain,
    /// `d`: the domain whose record is being evaluated.
    Domain,
    /// `i`: the client address, dotted quad or dotted nibbles.
    Ip,
    /// `p`: the validated domain name of the client address.
    Ptr,
    /// `v`: `in-addr` or `ip6`.
    Version,
    /// `h`: the HELO/EHLO domain.
    Helo,
    /// `c`: the client address in its usual text form (explanations only).
    ClientText,
    /// `r`: the receiving host's domain (explanations only).
    Receiver,
    /// `t`: the current time in seconds since the epoch (explanations only).
    Timestamp,
}

impl Letter {
    fn from_char(c: char) -> Option<Letter> {
        Some(match c.to_ascii_lowercase() {
            's' => Letter::Sender,
            'l' => Letter::Local,
            'o' => Letter::SenderDomain,
            'd' => Letter::Domain,
            'i' => Letter::Ip,
            'p' => Letter::Ptr,
            'v' => Letter::Version,
            'h' => Letter::Helo,
            'c' => Letter::ClientText,
            'r' => Letter::Receiver,
            't' => Letter::Timestamp,
            _ => return None,
        })
    }

    fn as_char(self) -> char {
        match self {
            Letter::Sender => 's',
            Letter::Local => 'l',
            Letter::SenderDomain => 'o',
            Letter::Domain => 'd',
            Letter::Ip => 'i',
            Letter::Ptr => 'p',
            Letter::Version => 'v',
            Letter::Helo => 'h',
            Letter::ClientText => 'c',
            Letter::Receiver => 'r',
            Letter::Timestamp => 't',
        }
    }

    fn explanation_only(self) -> bool {
        matches!(
            self,
            Letter::ClientText | Letter::Receiver | Letter::Timestamp
        )
    }
}

/// One `%{...}` macro.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macro {
    pub letter: Letter,
    /// Written in upper case: the expansion is URL-escaped (§7.3).
    pub escape: bool,
    /// Keep only this many right-hand parts (never 0).
    pub keep: Option<u32>,
    pub reverse: bool,
    /// The characters the value is split on; empty means `.`.
    pub delimiters: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Literal(String),
    Macro(Macro),
    /// `%%`
    Percent,
    /// `%_`
    Space,
    /// `%-`, a URL-encoded space.
    UrlSpace,
}

/// Why a macro string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacroError {
    #[error("'%' must be followed by '{{', '%', '_' or '-'")]
    BadPercent,
    #[error("unterminated macro (no '}}')")]
    Unterminated,
    #[error("unknown macro letter {0:?}")]
    UnknownLetter(char),
    #[error("macro letter '{0}' is allowed only in explanation text")]
    ExplanationOnly(char),
    #[error("macro transformer digits must not be 0")]
    ZeroDigits,
    #[error("invalid character {0:?} in macro")]
    BadMacroChar(char),
    #[error("invalid character {0:?}")]
    BadChar(char),
}

/// A parsed macro string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacroString(pub Vec<Token>);

/// What the macros expand to (§7.2). `ptr` is the validated name for `%{p}`, looked up
/// by the evaluator beforehand; `None` expands to `unknown`.
#[derive(Debug, Clone, Copy)]
pub struct MacroEnv<'a> {
    pub local: &'a str,
    pub sender_domain: &'a str,
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    pub ptr: Option<&'a str>,
    pub receiver: &'a str,
    pub timestamp: u64,
}

/// The delimiters a macro may split on (§7.1).
const DELIMITERS: &str = ".-+,/_=";

impl MacroString {
    pub fn parse(s: &str, ctx: Context) -> Result<MacroString, MacroError> {
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                let visible = c.is_ascii_graphic() || (c == ' ' && ctx == Context::Explanation);
                if !visible {
                    return Err(MacroError::BadChar(c));
                }
                literal.push(c);
                continue;
            }
            let token = match chars.next() {
                Some('%') => Token::Percent,
                Some('_') => Token::Space,
                Some('-') => Token::UrlSpace,
                Some('{') => Token::Macro(parse_macro(&mut chars, ctx)?),
                _ => return Err(MacroError::BadPercent),
            };
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            }
            tokens.push(token);
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(MacroString(tokens))
    }

    /// True if expanding needs the validated PTR name (`%{p}`).
    pub fn uses_ptr(&self) -> bool {
        self.0
            .iter()
            .any(|t| matches!(t, Token::Macro(m) if m.letter == Letter::Ptr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The whole expansion.
    pub fn expand(&self, env: &MacroEnv<'_>) -> String {
        let mut out = String::new();
        self.expand_into(env, |s| out.push_str(s));
        out
    }

    /// The expansion as a name to query: only its right end matters (a longer name is
    /// cut from the left, §7.3), so at most [`KEEP`] bytes of it are held however many
    /// macros a hostile record strings together.
    pub fn expand_name(&self, env: &MacroEnv<'_>) -> String {
        let mut out = String::new();
        self.expand_into(env, |s| {
            out.push_str(s);
            if out.len() > 2 * KEEP {
                let mut cut = out.len() - KEEP;
                while !out.is_char_boundary(cut) {
                    cut += 1;
                }
                out.drain(..cut);
            }
        });
        out
    }

    /// The expansion as explanation text: its first [`KEEP`] bytes.
    pub fn expand_text(&self, env: &MacroEnv<'_>) -> String {
        let mut out = String::new();
        self.expand_into(env, |s| {
            if out.len() < KEEP {
                out.push_str(s);
            }
        });
        if out.len() > KEEP {
            let mut end = KEEP;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
        }
        out
    }

    fn expand_into(&self, env: &MacroEnv<'_>, mut push: impl FnMut(&str)) {
        for t in &self.0 {
            match t {
                Token::Literal(s) => push(s),
                Token::Percent => push("%"),
                Token::Space => push(" "),
                Token::UrlSpace => push("%20"),
                Token::Macro(m) => push(&m.expand(env)),
            }
        }
    }
}

/// The most of an expansion kept for a query name (whose last 253 characters count)
/// or an explanation.
pub const KEEP: usize = 1024;

fn parse_macro(chars: &mut std::str::Chars<'_>, ctx: Context) -> Result<Macro, MacroError> {
    let c = chars.next().ok_or(MacroError::Unterminated)?;
    let letter = Letter::from_char(c).ok_or(MacroError::UnknownLetter(c))?;
    if ctx == Context::Domain && letter.explanation_only() {
        return Err(MacroError::ExplanationOnly(letter.as_char()));
    }
    let mut m = Macro {
        letter,
        escape: c.is_ascii_uppercase(),
        keep: None,
        reverse: false,
        delimiters: String::new(),
    };
    let mut digits: Option<u32> = None;
    loop {
        let c = chars.next().ok_or(MacroError::Unterminated)?;
        match c {
            '}' => break,
            '0'..='9' if !m.reverse && m.delimiters.is_empty() => {
                let d = c as u32 - '0' as u32;
                digits = Some(digits.unwrap_or(0).saturating_mul(10).saturating_add(d));
            }
            'r' | 'R' if !m.reverse && m.delimiters.is_empty() => m.reverse = true,
            c if DELIMITERS.contains(c) => m.delimiters.push(c),
            c => return Err(MacroError::BadMacroChar(c)),
        }
    }
    if digits == Some(0) {
        return Err(MacroError::ZeroDigits);
    }
    m.keep = digits;
    Ok(m)
}

impl Macro {
    fn expand(&self, env: &MacroEnv<'_>) -> String {
        let value = self.value(env);
        let delims = if self.delimiters.is_empty() {
            "."
        } else {
            self.delimiters.as_str()
        };
        let mut parts: Vec<&str> = value.split(|c| delims.contains(c)).collect();
        if self.reverse {
            parts.reverse();
        }
        if let Some(keep) = self.keep {
            let keep = usize::try_from(keep).unwrap_or(usize::MAX);
            let skip = parts.len().saturating_sub(keep);
            parts.drain(..skip);
        }
        let joined = parts.join(".");
        if self.escape {
            url_escape(&joined)
        } else {
            joined
        }
    }

    fn value(&self, env: &MacroEnv<'_>) -> String {
        match self.letter {
            Letter::Sender => format!("{}@{}", env.local, env.sender_domain),
            Letter::Local => env.local.to_owned(),
            Letter::SenderDomain => env.sender_domain.to_owned(),
            Letter::Domain => env.domain.to_owned(),
            Letter::Ip => dotted(env.ip),
            Letter::Ptr => env.ptr.unwrap_or("unknown").to_owned(),
            Letter::Version => match env.ip {
                IpAddr::V4(_) => "in-addr".to_owned(),
                IpAddr::V6(_) => "ip6".to_owned(),
            },
            Letter::Helo => env.helo.to_owned(),
            Letter::ClientText => env.ip.to_string(),
            Letter::Receiver if env.receiver.is_empty() => "unknown".to_owned(),
            Letter::Receiver => env.receiver.to_owned(),
            Letter::Timestamp => env.timestamp.to_string(),
        }
    }
}

/// `%{i}`: a dotted quad, or for IPv6 the 32 nibbles separated by dots (§7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(63);
            for b in v6.octets() {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(&format!("{:x}.{:x}", b >> 4, b & 0xf));
            }
            s
        }
    }
}

/// RFC 3986 escaping of everything outside the unreserved set, byte by byte.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for Macro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.letter.as_char();
        let c = if self.escape {
            c.to_ascii_uppercase()
        } else {
            c
        };
        write!(f, "%{{{c}")?;
        if let Some(k) = self.keep {
            write!(f, "{k}")?;
        }
        if self.reverse {
            f.write_str("r")?;
        }
        write!(f, "{}}}", self.delimiters)
    }
}

impl fmt::Display for MacroString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.0 {
            match t {
                Token::Literal(s) => f.write_str(s)?,
                Token::Percent => f.write_str("%%")?,
                Token::Space => f.write_str("%_")?,
                Token::UrlSpace => f.write_str("%-")?,
                Token::Macro(m) => write!(f, "{m}")?,
            }
        }
        Ok(())
    }
}

/// The name to query for an expanded domain-spec (§4.8, §7.3): without its trailing
/// dot, cut from the left to at most 253 characters, every label 1 to 63 octets.
/// `None` for a name no DNS query can be made for (an empty or over-long label),
/// which the evaluator treats as a name that does not exist.
pub fn query_name(expanded: &str) -> Option<&str> {
    let mut name = expanded.strip_suffix('.').unwrap_or(expanded);
    while name.len() > 253 {
        name = name.split_once('.')?.1;
    }
    let valid = !name.is_empty() && name.split('.').all(|l| (1..=63).contains(&l.len()));
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example environment of RFC 7208 §7.4.
    fn env(ip: &str) -> MacroEnv<'static> {
        MacroEnv {
            local: "strong-bad",
            sender_domain: "email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            helo: "mx.example.org",
            ptr: None,
            receiver: "mx.example.net",
            timestamp: 1_700_000_000,
        }
    }

    fn expand(s: &str, ip: &str) -> String {
        MacroString::parse(s, Context::Explanation)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .expand(&env(ip))
    }

    #[test]
    fn rfc7208_section_7_4_examples() {
        let v4 = "192.0.2.3";
        let table = [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            (
                "%{ir}.%{v}._spf.%{d2}",
                "3.2.0.192.in-addr._spf.example.com",
            ),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
                "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
            ),
            (
                "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
                "3.2.0.192.in-addr.strong.lp._spf.example.com",
            ),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
            ("%{c}", "192.0.2.3"),
            ("%{r}", "mx.example.net"),
            ("%{t}", "1700000000"),
            ("%{p}", "unknown"),
            ("%{h}", "mx.example.org"),
            ("a%%b%_c%-d", "a%b c%20d"),
            ("%{L}", "strong-bad"),
        ];
        for (m, want) in table {
            assert_eq!(expand(m, v4), want, "{m}");
        }
        let v6 = "2001:db8::cb01";
        assert_eq!(
            expand("%{ir}.%{v}._spf.%{d2}", v6),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(expand("%{c}", v6), "2001:db8::cb01");
    }

    #[test]
    fn upper_case_letters_url_escape_the_expansion() {
        let mut e = env("192.0.2.3");
        e.local = "~jack&jill=up-a_b3.c";
        let m = MacroString::parse("%{L} %{l}", Context::Explanation).unwrap();
        assert_eq!(
            m.expand(&e),
            "~jack%26jill%3Dup-a_b3.c ~jack&jill=up-a_b3.c"
        );
        e.local = "é";
        assert_eq!(m.expand(&e), "%C3%A9 é");
    }

    #[test]
    fn several_delimiters_and_large_digits() {
        let mut e = env("192.0.2.3");
        e.local = "foo-bar+zip+quux";
        let m = MacroString::parse("%{l2r+-}|%{l99}|%{l4294967296}", Context::Domain).unwrap();
        assert_eq!(m.expand(&e), "bar.foo|foo-bar+zip+quux|foo-bar+zip+quux");
    }

    #[test]
    fn syntax_errors() {
        let table = [
            ("%(ir)", Context::Domain, MacroError::BadPercent),
            ("foo%", Context::Domain, MacroError::BadPercent),
            ("foo%.bar", Context::Domain, MacroError::BadPercent),
            ("%{", Context::Domain, MacroError::Unterminated),
            ("%{d", Context::Domain, MacroError::Unterminated),
            ("%{a}", Context::Domain, MacroError::UnknownLetter('a')),
            ("%{x}", Context::Explanation, MacroError::UnknownLetter('x')),
            ("%{r}", Context::Domain, MacroError::ExplanationOnly('r')),
            ("%{C}", Context::Domain, MacroError::ExplanationOnly('c')),
            ("%{t}", Context::Domain, MacroError::ExplanationOnly('t')),
            ("%{d0}", Context::Domain, MacroError::ZeroDigits),
            ("%{dr2}", Context::Domain, MacroError::BadMacroChar('2')),
            ("%{d.r}", Context::Domain, MacroError::BadMacroChar('r')),
            ("%{d:}", Context::Domain, MacroError::BadMacroChar(':')),
            ("a b", Context::Domain, MacroError::BadChar(' ')),
            (
                "a\u{7f}",
                Context::Explanation,
                MacroError::BadChar('\u{7f}'),
            ),
            (
                "\u{feff}x",
                Context::Explanation,
                MacroError::BadChar('\u{feff}'),
            ),
        ];
        for (s, ctx, want) in table {
            assert_eq!(MacroString::parse(s, ctx), Err(want), "{s}");
        }
        // c, r, t are fine in explanations and (syntax only) in unknown modifiers.
        assert!(MacroString::parse("%{c} %{r} %{t}", Context::Explanation).is_ok());
        assert!(MacroString::parse("%{c}%{r}%{t}", Context::Modifier).is_ok());
    }

    #[test]
    fn display_renders_what_parses_back() {
        for s in [
            "%{d2}.x",
            "%{L2r+-}",
            "a%%b%_c%-d",
            "%{i}.%{v}.arpa",
            "%{d02}",
            "%{lr}",
        ] {
            let m = MacroString::parse(s, Context::Domain).unwrap();
            let again = MacroString::parse(&m.to_string(), Context::Domain).unwrap();
            assert_eq!(m, again, "{s} -> {m}");
        }
    }

    #[test]
    fn long_expansions_are_bounded() {
        let mut e = env("192.0.2.3");
        let local = "x".repeat(60);
        e.local = &local;
        let many = format!("{}example.com", "%{l}.".repeat(5000));
        let m = MacroString::parse(&many, Context::Domain).unwrap();
        let full = m.expand(&e);
        let name = m.expand_name(&e);
        assert!(name.len() <= 2 * KEEP, "{}", name.len());
        assert!(full.ends_with(&name));
        // Cutting the left end first changes nothing once a query name is made of it.
        assert_eq!(query_name(&name), query_name(&full));
        assert_eq!(query_name(&name).unwrap().len(), 3 * 61 + 11);
        let text = MacroString::parse(&many, Context::Explanation).unwrap();
        assert_eq!(text.expand_text(&e).len(), KEEP);
        assert!(full.starts_with(&text.expand_text(&e)));
    }

    #[test]
    fn query_names_are_cut_from_the_left_and_checked() {
        assert_eq!(query_name("example.com."), Some("example.com"));
        assert_eq!(query_name("mail.example...com"), None);
        assert_eq!(query_name(""), None);
        assert_eq!(query_name(&format!("{}.com", "a".repeat(64))), None);
        let o = "somewhat.long.exp.example.com";
        let long = format!("foobar.{}example.com", format!("{o}.").repeat(8));
        let want = format!("{}example.com", format!("{o}.").repeat(8));
        assert_eq!(long.len(), 258);
        assert_eq!(query_name(&long), Some(want.as_str()));
        assert_eq!(query_name(&"a".repeat(300)), None);
    }
}
