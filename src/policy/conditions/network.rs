//! `client_ip` / `client_net`: the client's address against networks.
//!
//! ```yaml
//! client_ip: 192.0.2.0/24              # one network or address
//! client_ip: trusted_nets              # a named list
//! client_ip: [10.0.0.0/8, 2001:db8::/32]
//! client_ip: { in: trusted_nets }      # or { in: [inline items] }
//! ```

use std::sync::Arc;

use serde_yaml_ng::Value;

use super::Condition;
use crate::policy::lists::NetSet;
use crate::policy::load::Decoder;
use crate::policy::subject::Subject;
use crate::policy::yaml::{KeyPath, kind_of};

#[derive(Debug)]
struct ClientIp {
    set: Arc<NetSet>,
    label: String,
}

impl Condition for ClientIp {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.set.contains(s.client_ip)
    }
    fn describe(&self) -> String {
        format!("client_ip in {}", self.label)
    }
    fn observed(&self, s: &Subject<'_>) -> String {
        format!("client_ip={}", s.client_ip)
    }
}

pub(super) fn parse(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<Box<dyn Condition>> {
    let (set, label) = match v {
        Value::Mapping(_) => {
            let entries = d.mapping(v, path, &["in"])?;
            let Some((_, inner)) = entries.first() else {
                d.error(path, "expected `in: LIST` or a network");
                return None;
            };
            d.nets_from(inner, &path.key("in"))?
        }
        Value::String(_) | Value::Sequence(_) => d.nets_from(v, path)?,
        other => {
            d.error(
                path,
                format!(
                    "expected a network, a list name or `in:`, found {}",
                    kind_of(other)
                ),
            );
            return None;
        }
    };
    Some(Box::new(ClientIp { set, label }))
}
