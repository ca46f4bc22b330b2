//! `header` and `body`: the received message, only at `data`.
//!
//! ```yaml
//! header: { name: Subject, matches: "(?i)viagra" }   # any Subject field matches
//! header: { name: X-Mailer }                         # the field is present
//! body: { matches: "(?i)unsubscribe" }               # over the scanned body prefix
//! ```
//!
//! Header names compare ignoring case; values are unfolded. The body regex runs over
//! the bytes of the body prefix the session kept (its configured scan limit), not over
//! the whole message, so its cost is bounded.

use serde_yaml_ng::Value;

use super::Condition;
use super::text::strip_slashes;
use crate::policy::lists::one_line;
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::KeyPath;

#[derive(Debug)]
struct Header {
    name: String,
    re: Option<regex::Regex>,
}

impl Header {
    fn values<'a>(&'a self, s: &'a Subject<'_>) -> impl Iterator<Item = &'a str> + 'a {
        s.facts
            .message
            .into_iter()
            .flat_map(|m| m.headers.iter())
            .filter(|(n, _)| n.eq_ignore_ascii_case(&self.name))
            .map(|(_, v)| v.as_str())
    }
}

impl Condition for Header {
    fn matches(&self, s: &Subject<'_>) -> bool {
        let mut vals = self.values(s);
        match &self.re {
            Some(re) => vals.any(|v| re.is_match(v)),
            None => vals.next().is_some(),
        }
    }
    fn describe(&self) -> String {
        match &self.re {
            Some(re) => format!("header {} matches /{}/", self.name, re.as_str()),
            None => format!("header {} present", self.name),
        }
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        let vals: Vec<String> = self.values(s).map(|v| format!("{v:?}")).collect();
        if vals.is_empty() {
            format!("no {} field", self.name)
        } else {
            format!("{}: {}", self.name, vals.join(", "))
        }
    }
}

#[derive(Debug)]
struct Body {
    re: regex::bytes::Regex,
}

impl Condition for Body {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts
            .message
            .is_some_and(|m| self.re.is_match(&m.body_prefix))
    }
    fn describe(&self) -> String {
        format!("body matches /{}/", self.re.as_str())
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        let n = s.facts.message.map_or(0, |m| m.body_prefix.len());
        match s.facts.message.and_then(|m| self.re.find(&m.body_prefix)) {
            Some(hit) => format!(
                "scanned {n} bytes; found {:?}",
                String::from_utf8_lossy(&hit.as_bytes()[..hit.len().min(60)])
            ),
            None => format!("scanned {n} bytes"),
        }
    }
}

pub(super) fn parse_header(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let entries = d.mapping(v, path, &["name", "matches"])?;
    let mut name = None;
    let mut re = None;
    let mut ok = true;
    for (k, val) in entries {
        let p = path.key(k);
        let Some(s) = d.string(val, &p) else {
            ok = false;
            continue;
        };
        if k == "name" {
            if crate::policy::actions::valid_field_name(s) {
                name = Some(s.to_owned());
            } else {
                d.error(&p, format!("invalid header field name {s:?}"));
                ok = false;
            }
        } else {
            match regex::RegexBuilder::new(strip_slashes(s))
                .size_limit(1 << 20)
                .build()
            {
                Ok(r) => re = Some(r),
                Err(e) => {
                    d.error(&p, format!("invalid regex: {}", one_line(&e.to_string())));
                    ok = false;
                }
            }
        }
    }
    if name.is_none() && ok {
        d.error(path, "missing field `name`");
        return None;
    }
    if !ok {
        return None;
    }
    Some(Box::new(Header { name: name?, re }))
}

pub(super) fn parse_body(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    let entries = d.mapping(v, path, &["matches"])?;
    let Some((k, val)) = entries.first() else {
        d.error(path, "missing field `matches`");
        return None;
    };
    let p = path.key(k);
    let s = d.string(val, &p)?;
    match regex::bytes::RegexBuilder::new(strip_slashes(s))
        .size_limit(1 << 20)
        .build()
    {
        Ok(re) => Some(Box::new(Body { re })),
        Err(e) => {
            d.error(&p, format!("invalid regex: {}", one_line(&e.to_string())));
            None
        }
    }
}
