//! `size` and `recipient_count`: numeric comparisons.
//!
//! ```yaml
//! size: { over: 25MiB }               # SIZE= at mail, the real byte count at data
//! recipient_count: { over: 50 }       # at rcpt, counts the recipient being decided
//! recipient_count: 1                  # same as { equals: 1 }
//! ```

use serde_yaml_ng::Value;

use super::Condition;
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of};

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Over(u64),
    Under(u64),
    Equals(u64),
}

impl Cmp {
    fn holds(self, x: u64) -> bool {
        match self {
            Cmp::Over(n) => x > n,
            Cmp::Under(n) => x < n,
            Cmp::Equals(n) => x == n,
        }
    }
}

impl std::fmt::Display for Cmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmp::Over(n) => write!(f, "over {n}"),
            Cmp::Under(n) => write!(f, "under {n}"),
            Cmp::Equals(n) => write!(f, "equals {n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Size,
    RecipientCount,
}

#[derive(Debug)]
struct Numeric {
    what: Measure,
    cmps: Vec<Cmp>,
}

impl Numeric {
    fn value(&self, s: &Subject<'_>) -> Option<u64> {
        match self.what {
            Measure::Size => s.size(),
            Measure::RecipientCount => Some(s.recipient_count()),
        }
    }
    fn name(&self) -> &'static str {
        match self.what {
            Measure::Size => "size",
            Measure::RecipientCount => "recipient_count",
        }
    }
}

impl Condition for Numeric {
    /// An unknown size (no `SIZE=` given at MAIL) matches no comparison.
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.value(s)
            .is_some_and(|x| self.cmps.iter().all(|c| c.holds(x)))
    }
    fn describe(&self) -> String {
        let c: Vec<String> = self.cmps.iter().map(ToString::to_string).collect();
        format!("{} {}", self.name(), c.join(" and "))
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        match self.value(s) {
            Some(x) => format!("{}={x}", self.name()),
            None => format!("{} unknown", self.name()),
        }
    }
}

fn parse_cmps(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
    num: fn(&mut Decoder<'_>, &Value, &KeyPath) -> Option<u64>,
) -> Option<Vec<Cmp>> {
    let entries = d.mapping(v, path, &["over", "under", "equals"])?;
    if entries.is_empty() {
        d.error(path, "expected at least one of `over`, `under`, `equals`");
        return None;
    }
    let mut cmps = Vec::new();
    let mut ok = true;
    for (k, val) in entries {
        match num(d, val, &path.key(k)) {
            Some(n) => cmps.push(match k {
                "over" => Cmp::Over(n),
                "under" => Cmp::Under(n),
                _ => Cmp::Equals(n),
            }),
            None => ok = false,
        }
    }
    ok.then_some(cmps)
}

pub(super) fn parse_size(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let cmps = parse_cmps(d, v, path, size_value)?;
    Some(Box::new(Numeric {
        what: Measure::Size,
        cmps,
    }))
}

pub(super) fn parse_recipient_count(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let cmps = if let Value::Number(_) = v {
        vec![Cmp::Equals(d.u64(v, path)?)]
    } else {
        parse_cmps(d, v, path, |d, v, p| d.u64(v, p))?
    };
    Some(Box::new(Numeric {
        what: Measure::RecipientCount,
        cmps,
    }))
}

fn size_value(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<u64> {
    match v {
        Value::Number(_) => d.u64(v, path),
        Value::String(s) => match parse_size_literal(s) {
            Ok(n) => Some(n),
            Err(e) => {
                d.error(path, e);
                None
            }
        },
        other => {
            d.error(
                path,
                format!("expected a size like 25MiB, found {}", kind_of(other)),
            );
            None
        }
    }
}

/// Parses `1048576`, `512KiB`, `25MiB`, `1GiB` (powers of 1024) or `10KB`, `25MB`,
/// `1GB` (powers of 1000); units ignore case, `B` means bytes.
pub(crate) fn parse_size_literal(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size {s:?}: expected a number with an optional unit B, KB, MB, GB, KiB, MiB or GiB"
        )
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size_literal;

    #[test]
    fn size_literals() {
        assert_eq!(parse_size_literal("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size_literal("10 kb"), Ok(10_000));
        assert_eq!(parse_size_literal("7"), Ok(7));
        assert_eq!(parse_size_literal("3B"), Ok(3));
        assert!(parse_size_literal("25 MeB").is_err());
        assert!(parse_size_literal("MiB").is_err());
        assert!(parse_size_literal("-1").is_err());
        assert!(parse_size_literal("99999999999999GiB").is_err());
    }
}
