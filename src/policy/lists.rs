//! Compiled matchers: address ranges and text patterns.
//!
//! Matching is compiled once at load, never interpreted per call: networks become
//! sorted, merged ranges searched by bisection (O(log n) for a 100,000-entry list, no
//! per-node allocation as a trie would need), exact strings a hash set, and every glob
//! and regex of one list a single [`RegexSet`], so a list costs one pass whatever its
//! length.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::{RegexSet, RegexSetBuilder};

use crate::config::IpNet;

/// A set of IPv4 and IPv6 networks.
#[derive(Debug, Default, Clone)]
pub struct NetSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Whether an invalid item was probably meant as an address (so "invalid network"
/// is a better message than "unknown list").
pub(crate) fn looks_like_net(s: &str) -> bool {
    s.contains('/') || s.contains(':') || s.starts_with(|c: char| c.is_ascii_digit())
}

impl NetSet {
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in nets {
            match n.addr {
                IpAddr::V4(a) => {
                    let a = u32::from(a);
                    let host = if n.prefix == 0 {
                        u32::MAX
                    } else {
                        (1u32 << (32 - u32::from(n.prefix))).wrapping_sub(1)
                    };
                    let lo = a & !host;
                    v4.push((lo, lo | host));
                }
                IpAddr::V6(a) => {
                    let a = u128::from(a);
                    let host = if n.prefix == 0 {
                        u128::MAX
                    } else {
                        (1u128 << (128 - u32::from(n.prefix))).wrapping_sub(1)
                    };
                    let lo = a & !host;
                    v6.push((lo, lo | host));
                }
            }
        }
        NetSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Whether `ip` lies in any network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
    /// as a dual-stack socket reports IPv4 clients) are tested as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }
}

fn merge<T: Copy + Ord + num_like::Succ>(mut v: Vec<(T, T)>) -> Vec<(T, T)> {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        if let Some(last) = out.last_mut()
            && (lo <= last.1 || last.1.succ() == Some(lo))
        {
            if hi > last.1 {
                last.1 = hi;
            }
            continue;
        }
        out.push((lo, hi));
    }
    out
}

fn find<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && ranges[i - 1].1 >= x
}

mod num_like {
    pub trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

/// One text pattern as written: exact, `*`/`?` glob, or `/regex/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    Glob(String),
    Regex(String),
}

impl Pattern {
    /// Classifies an item: `/.../` is a regex, anything with `*` or `?` a glob, the rest
    /// exact. `""` is exact (it matches the null sender).
    pub fn classify(s: &str) -> Pattern {
        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
            Pattern::Regex(s[1..s.len() - 1].to_owned())
        } else if s.contains('*') || s.contains('?') {
            Pattern::Glob(s.to_owned())
        } else {
            Pattern::Exact(s.to_owned())
        }
    }

    /// The regex source this pattern compiles to, if it is not exact. Globs match the
    /// whole value and ignore case; regexes are used as written.
    pub fn regex_source(&self) -> Option<String> {
        match self {
            Pattern::Exact(_) => None,
            Pattern::Glob(g) => {
                let mut re = String::from("(?is)^");
                for c in g.chars() {
                    match c {
                        '*' => re.push_str(".*"),
                        '?' => re.push('.'),
                        c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
                    }
                }
                re.push('$');
                Some(re)
            }
            Pattern::Regex(r) => Some(r.clone()),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(s) | Pattern::Glob(s) => write!(f, "{s:?}"),
            Pattern::Regex(r) => write!(f, "/{r}/"),
        }
    }
}

/// Checks a regex alone, so a bad one can be reported at its own item.
pub(crate) fn check_regex(src: &str) -> Result<(), String> {
    regex::RegexBuilder::new(src)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| format!("invalid regex: {}", one_line(&e.to_string())))
}

/// Collapses a multi-line message (regex errors draw a caret diagram) into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A compiled set of text patterns. Exact items compare ignoring ASCII case.
#[derive(Debug, Clone)]
pub struct TextSet {
    exact: HashSet<Box<str>>,
    set: Option<RegexSet>,
    patterns: Vec<Pattern>,
    /// Index in `patterns` of each regex in `set`.
    regex_items: Vec<usize>,
}

impl TextSet {
    /// Compiles patterns that were each checked with [`check_regex`] already.
    pub(crate) fn new(patterns: Vec<Pattern>) -> Result<Self, String> {
        let mut exact = HashSet::new();
        let mut sources = Vec::new();
        let mut regex_items = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            match p {
                Pattern::Exact(s) => {
                    exact.insert(s.to_ascii_lowercase().into_boxed_str());
                }
                other => {
                    sources.push(other.regex_source().unwrap_or_default());
                    regex_items.push(i);
                }
            }
        }
        let set = if sources.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(&sources)
                    .size_limit(64 << 20)
                    .build()
                    .map_err(|e| format!("invalid pattern set: {}", one_line(&e.to_string())))?,
            )
        };
        Ok(TextSet {
            exact,
            set,
            patterns,
            regex_items,
        })
    }

    /// Whether `value` matches; `lower` is `value` in ASCII lower case.
    pub fn is_match(&self, value: &str, lower: &str) -> bool {
        self.exact.contains(lower) || self.set.as_ref().is_some_and(|s| s.is_match(value))
    }

    /// The first pattern that matches, for explanations.
    pub(crate) fn find(&self, value: &str, lower: &str) -> Option<&Pattern> {
        if self.exact.contains(lower) {
            return self
                .patterns
                .iter()
                .find(|p| matches!(p, Pattern::Exact(s) if s.eq_ignore_ascii_case(lower)));
        }
        let set = self.set.as_ref()?;
        let i = set.matches(value).into_iter().next()?;
        Some(&self.patterns[self.regex_items[i]])
    }
}

/// Whether `helo` is an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) or a bare
/// address, which many spam bots send.
pub(crate) fn is_ip_literal(helo: &str) -> bool {
    let inner = helo
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(helo);
    let inner = match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("ipv6:") => {
            return inner[5..].parse::<Ipv6Addr>().is_ok();
        }
        _ => inner,
    };
    inner.parse::<Ipv4Addr>().is_ok() || inner.parse::<Ipv6Addr>().is_ok()
}

/// Whether `name` is a syntactically valid fully qualified domain name: at least two
/// labels of letters, digits and inner hyphens, at most 63 octets each, 253 in all, and
/// a top-level label that is not all digits.
pub(crate) fn is_fqdn(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 || is_ip_literal(name) {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    labels.iter().all(|l| label_ok(l))
        && !labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> NetSet {
        NetSet::from_nets(items.iter().map(|s| s.parse::<IpNet>().unwrap()))
    }

    #[test]
    fn networks_parse_and_match() {
        let s = set(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.0.0/16"]);
        for (ip, want) in [
            ("10.255.1.1", true),
            ("11.0.0.0", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8:1::5", true),
            ("2001:db9::", false),
            ("::ffff:10.0.0.1", true),
        ] {
            assert_eq!(s.contains(ip.parse().unwrap()), want, "{ip}");
        }
        assert!(set(&["0.0.0.0/0"]).contains("1.2.3.4".parse().unwrap()));
        for bad in [
            "10.0.0/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "x",
            "10.0.0.0/8/8",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn adjacent_ranges_merge() {
        let s = set(&["10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24"]);
        assert_eq!(s.v4, vec![(0x0a00_0000, 0x0a00_01ff)]);
    }

    #[test]
    fn text_sets_match_exact_glob_and_regex() {
        let ps = ["Spammer@Example.net", "*.bad.example", "/^[0-9]+@/", ""]
            .iter()
            .map(|s| Pattern::classify(s))
            .collect();
        let t = TextSet::new(ps).unwrap();
        let m = |v: &str| t.is_match(v, &v.to_ascii_lowercase());
        assert!(m("spammer@example.NET"));
        assert!(m("joe@mx.BAD.example"));
        assert!(m("12345@x.org"));
        assert!(m(""));
        assert!(!m("joe@good.example"));
        assert_eq!(
            t.find("a@b.bad.example", "a@b.bad.example"),
            Some(&Pattern::Glob("*.bad.example".into()))
        );
    }

    #[test]
    fn helo_shapes() {
        for (h, lit, fqdn) in [
            ("[192.0.2.1]", true, false),
            ("192.0.2.1", true, false),
            ("[IPv6:2001:db8::1]", true, false),
            ("mail.example.org", false, true),
            ("mail.example.org.", false, true),
            ("localhost", false, false),
            ("-bad.example", false, false),
            ("host.123", false, false),
        ] {
            assert_eq!(is_ip_literal(h), lit, "{h}");
            assert_eq!(is_fqdn(h), fqdn, "{h}");
        }
    }
}
