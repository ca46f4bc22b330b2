//! Key paths into a YAML document and finding their line and column.
//!
//! Rules are decoded by hand from a [`serde_yaml_ng::Value`] so that decoding can go on
//! after the first problem and report them all. A `Value` carries no positions, so each
//! error keeps the key path where it arose (`rules[2].if.client_ip`) and, only when
//! errors are reported, [`locate`] walks the original text once more with
//! serde_yaml_ng's own deserializer and stops at that path: the deserializer stamps the
//! error it is made to raise there with the node's line and column. Positions therefore
//! come from the same parser that read the values, never from a second YAML parser.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a node, e.g. `rules[2].if.client_ip`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The marker message of the error raised on purpose at the located node.
const FOUND: &str = "\u{1}mxguard-locate\u{1}";

/// Finds the 1-based (line, column) of the node at `path` in `text` — of its key when
/// `at_key` (for "unknown field"), else of its value. If the path does not exist (the
/// error is about something missing), the nearest existing ancestor is returned.
pub(crate) fn locate(text: &str, path: &KeyPath, at_key: bool) -> (usize, usize) {
    let mut len = path.0.len();
    let mut at_key = at_key;
    loop {
        let seed = Locate {
            path: &path.0[..len],
            at_key,
        };
        match seed.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
            Err(e) if e.to_string().contains(FOUND) => {
                if let Some(loc) = e.location() {
                    return (loc.line(), loc.column());
                }
            }
            _ => {}
        }
        if len == 0 {
            return (1, 1);
        }
        len -= 1;
        at_key = false;
    }
}

struct Locate<'p> {
    path: &'p [Seg],
    at_key: bool,
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.path.is_empty() {
            d.deserialize_any(Fail)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Seg::Key(want) = &self.path[0] else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let rest = &self.path[1..];
        let fail_on_key = self.at_key && rest.is_empty();
        while let Some(hit) = map.next_key_seed(KeyProbe {
            want,
            fail: fail_on_key,
        })? {
            if hit {
                map.next_value_seed(Locate {
                    path: rest,
                    at_key: self.at_key,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Seg::Index(want) = self.path[0] else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut i = 0;
        loop {
            if i == want {
                let found = seq.next_element_seed(Locate {
                    path: &self.path[1..],
                    at_key: self.at_key,
                })?;
                if found.is_none() {
                    return Ok(());
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        skip_tagged(data)
    }
}

/// Consumes a tagged node (`!tag value`, which serde_yaml_ng hands over as an enum)
/// whole. Left unread, its value stays in the event stream, is taken for the next node,
/// and serde_yaml_ng panics when the events no longer nest ("unexpected end of mapping").
fn skip_tagged<'de, A: de::EnumAccess<'de>>(data: A) -> Result<(), A::Error> {
    let (_, variant): (IgnoredAny, _) = data.variant()?;
    de::VariantAccess::newtype_variant::<IgnoredAny>(variant)?;
    Ok(())
}

/// Deserializes a mapping key and tells whether it is `want`; raises the marker error
/// on it (so its position is recorded) when `fail` is set.
struct KeyProbe<'a> {
    want: &'a str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        if v == self.want {
            if self.fail {
                return Err(E::custom(FOUND));
            }
            return Ok(true);
        }
        Ok(false)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(if v { "true" } else { "false" })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<bool, A::Error> {
        skip_tagged(data)?;
        Ok(false)
    }
}

/// Raises the marker error on whatever node it is given.
struct Fail;

impl<'de> Visitor<'de> for Fail {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any node")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

/// A list's items with their paths, or a single value as a list of one: rule files may
/// write `[a, b]` or just `a` wherever a list of values is allowed.
pub(crate) fn one_or_many<'v>(
    v: &'v serde_yaml_ng::Value,
    path: &KeyPath,
) -> Vec<(KeyPath, &'v serde_yaml_ng::Value)> {
    match v {
        serde_yaml_ng::Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| (path.index(i), x))
            .collect(),
        other => vec![(path.clone(), other)],
    }
}

/// A short name for a node's type, for "expected X, found Y" messages.
pub(crate) fn kind_of(v: &serde_yaml_ng::Value) -> &'static str {
    use serde_yaml_ng::Value;
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
lists:
  a: [x, y]
rules:
  - name: one
    stage: connect
    if: { client_ip: \"10.0.0/8\" }
  - name: two
    stage: rcpt
    if:
      bogus: 1
";

    fn path(s: &[Seg]) -> KeyPath {
        KeyPath(s.to_vec())
    }

    #[test]
    fn locates_values_keys_and_missing_paths() {
        let k = |s: &str| Seg::Key(s.into());
        let p = path(&[k("rules"), Seg::Index(0), k("if"), k("client_ip")]);
        assert_eq!(p.to_string(), "rules[0].if.client_ip");
        assert_eq!(locate(DOC, &p, false), (6, 22));
        let p = path(&[k("rules"), Seg::Index(1), k("if"), k("bogus")]);
        assert_eq!(locate(DOC, &p, true), (10, 7));
        assert_eq!(locate(DOC, &p, false), (10, 14));
        let p = path(&[k("lists"), k("a"), Seg::Index(1)]);
        assert_eq!(locate(DOC, &p, false), (2, 10));
        // Missing: falls back to the nearest ancestor (the rule mapping).
        let p = path(&[k("rules"), Seg::Index(1), k("then")]);
        assert_eq!(locate(DOC, &p, false), (7, 5));
    }

    /// Found by the `rules_loader` fuzz target: a tagged key left its value in the event
    /// stream and serde_yaml_ng panicked (`mxguard check` crashed on this file).
    #[test]
    fn tagged_nodes_are_skipped_whole() {
        let doc = "rules:\n! u na-me: x\n    stage> [maih\n";
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(locate(doc, &path(&[k("rules")]), false), (1, 7));
        let doc = "a: !t {x: 1}\nb: [!t 1, 2]\nc: 3\n";
        assert_eq!(locate(doc, &path(&[k("c")]), false), (3, 4));
        assert_eq!(locate(doc, &path(&[k("b"), Seg::Index(1)]), false), (2, 11));
    }
}
