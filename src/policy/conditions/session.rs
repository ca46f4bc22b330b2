//! `tls: true|false`: whether the session is (now) encrypted.

use serde_yaml_ng::Value;

use super::Condition;
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::KeyPath;

#[derive(Debug)]
struct Tls(bool);

impl Condition for Tls {
    fn matches(&self, s: &Subject<'_>) -> bool {
        s.facts.client.tls == self.0
    }
    fn describe(&self) -> String {
        format!("tls is {}", self.0)
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        format!("tls={}", s.facts.client.tls)
    }
}

pub(super) fn parse_tls(
    d: &mut Decoder<'_>,
    v: &Value,
    path: &KeyPath,
) -> Option<Box<dyn Condition>> {
    Some(Box::new(Tls(d.bool(v, path)?)))
}
