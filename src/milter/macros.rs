//! Sendmail macros: the values a milter may ask for by name (`{client_addr}`, `i`, …), the
//! lists sent at each stage, and their `SMFIC_MACRO` packets.
//!
//! The default lists are Postfix's (`milter_*_macros` in `mail_params.h`) plus the client
//! macros at connect, which rspamd and others read. A milter may replace any list during
//! negotiation (`SMFIF_SETSYMLIST`); it can then name any macro, so values are looked up by
//! name in one [`MacroValues`] the caller keeps up to date during the session.
//!
//! A packet is `D`, the code of the command it belongs to, then `name\0value\0` pairs.
//! Rspamd drops the connection on a malformed one ("invalid macro command (no name)"), so
//! a macro without a value, an empty value, or a name or value containing NUL is left out,
//! and no packet is sent when nothing is left.

use super::codec::{self, CodecError};
use super::protocol::command;

/// The stages a macro list belongs to, in the protocol's numbering (`SMFIM_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacroStage {
    Connect = 0,
    Helo = 1,
    Mail = 2,
    Rcpt = 3,
    Data = 4,
    /// End of message; Postfix also sends this list with each body chunk.
    Eom = 5,
    /// End of headers; Postfix also sends this list with each header.
    Eoh = 6,
}

impl MacroStage {
    pub const ALL: [MacroStage; 7] = [
        MacroStage::Connect,
        MacroStage::Helo,
        MacroStage::Mail,
        MacroStage::Rcpt,
        MacroStage::Data,
        MacroStage::Eom,
        MacroStage::Eoh,
    ];

    pub fn from_index(i: u32) -> Option<MacroStage> {
        MacroStage::ALL.get(i as usize).copied()
    }
}

/// The macro names sent at each stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroLists {
    lists: [Vec<String>; 7],
}

impl Default for MacroLists {
    fn default() -> Self {
        let l = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        MacroLists {
            lists: [
                l(
                    "j {daemon_name} {daemon_addr} v _ {client_addr} {client_port} {client_name} {client_ptr}",
                ),
                l("{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"),
                l(
                    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
                ),
                l("i {rcpt_addr} {rcpt_host} {rcpt_mailer}"),
                l("i"),
                l("i"),
                l("i"),
            ],
        }
    }
}

impl MacroLists {
    pub fn get(&self, stage: MacroStage) -> &[String] {
        &self.lists[stage as usize]
    }

    /// Replaces one stage's list with the milter's (space- or comma-separated names).
    pub fn set(&mut self, stage: MacroStage, names: &str) {
        self.lists[stage as usize] = names
            .split([' ', ',', '\t'])
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
    }
}

/// Everything a milter may ask for, filled by the caller as the session goes on (client
/// facts at connect, TLS after STARTTLS, sender at MAIL, the current recipient before each
/// RCPT). `None` or an empty string: not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MacroValues {
    /// `j`: this host's name.
    pub hostname: Option<String>,
    /// `{daemon_name}`: the listener's `milter_daemon_name`, else the host name (Postfix:
    /// `milter_macro_daemon_name`, default `$myhostname`).
    pub daemon_name: Option<String>,
    /// `{daemon_addr}`: the local address the client connected to.
    pub daemon_addr: Option<String>,
    /// `v`: product and version, e.g. `mxguard 0.1.0`.
    pub version: Option<String>,
    /// `{client_addr}`, `{client_port}`.
    pub client_addr: Option<String>,
    pub client_port: Option<String>,
    /// `{client_name}`: the verified (forward-confirmed) client name, else `unknown`.
    pub client_name: Option<String>,
    /// `{client_ptr}`: the PTR name, verified or not.
    pub client_ptr: Option<String>,
    /// `_`: `name [addr]`; derived from `client_name`/`client_addr` when left `None`.
    pub client_name_addr: Option<String>,
    /// `{tls_version}`, `{cipher}`, `{cipher_bits}`, `{cert_subject}`, `{cert_issuer}`.
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub cipher_bits: Option<String>,
    pub cert_subject: Option<String>,
    pub cert_issuer: Option<String>,
    /// `{auth_type}` (SASL mechanism), `{auth_authen}` (login), `{auth_author}`.
    pub auth_type: Option<String>,
    pub auth_authen: Option<String>,
    pub auth_author: Option<String>,
    /// `i`: the queue id; mxguard passes its own session/transaction id.
    pub queue_id: Option<String>,
    /// `{mail_addr}`, `{mail_host}`, `{mail_mailer}` (the sender, its domain, `smtp`).
    pub mail_addr: Option<String>,
    pub mail_host: Option<String>,
    pub mail_mailer: Option<String>,
    /// `{rcpt_addr}`, `{rcpt_host}`, `{rcpt_mailer}` of the recipient being sent.
    pub rcpt_addr: Option<String>,
    pub rcpt_host: Option<String>,
    pub rcpt_mailer: Option<String>,
    /// Any other macro, by name with or without braces (`{if_addr}` or `if_addr`).
    pub extra: Vec<(String, String)>,
}

impl MacroValues {
    /// The value of macro `name` (`j`, `{j}`, `{client_addr}`, `client_addr` all work).
    pub fn lookup(&self, name: &str) -> Option<&str> {
        let bare = name
            .strip_prefix('{')
            .and_then(|n| n.strip_suffix('}'))
            .unwrap_or(name);
        let field = match bare {
            "j" => &self.hostname,
            "daemon_name" => &self.daemon_name,
            "daemon_addr" => &self.daemon_addr,
            "v" => &self.version,
            "client_addr" => &self.client_addr,
            "client_port" => &self.client_port,
            "client_name" => &self.client_name,
            "client_ptr" => &self.client_ptr,
            "_" => &self.client_name_addr,
            "tls_version" => &self.tls_version,
            "cipher" => &self.cipher,
            "cipher_bits" => &self.cipher_bits,
            "cert_subject" => &self.cert_subject,
            "cert_issuer" => &self.cert_issuer,
            "auth_type" => &self.auth_type,
            "auth_authen" => &self.auth_authen,
            "auth_author" => &self.auth_author,
            "i" => &self.queue_id,
            "mail_addr" => &self.mail_addr,
            "mail_host" => &self.mail_host,
            "mail_mailer" => &self.mail_mailer,
            "rcpt_addr" => &self.rcpt_addr,
            "rcpt_host" => &self.rcpt_host,
            "rcpt_mailer" => &self.rcpt_mailer,
            _ => {
                return self.extra.iter().find_map(|(k, v)| {
                    let k = k
                        .strip_prefix('{')
                        .and_then(|k| k.strip_suffix('}'))
                        .unwrap_or(k);
                    (k == bare && !v.is_empty()).then_some(v.as_str())
                });
            }
        };
        field.as_deref().filter(|v| !v.is_empty())
    }

    /// `_` as Postfix builds it when the caller did not set it: `name [addr]`.
    fn derived_client_name_addr(&self) -> Option<String> {
        let addr = self.client_addr.as_deref().filter(|a| !a.is_empty())?;
        let name = self
            .client_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("unknown");
        Some(format!("{name} [{addr}]"))
    }

    fn value_of(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        if name == "_" || name == "{_}" {
            if let Some(v) = self.lookup(name) {
                return Some(v.into());
            }
            return self.derived_client_name_addr().map(Into::into);
        }
        self.lookup(name).map(Into::into)
    }
}

/// Appends the `SMFIC_MACRO` packet for `names` before the command `for_command`; nothing
/// when no name has a usable value.
pub fn encode_macros(
    out: &mut Vec<u8>,
    for_command: u8,
    names: &[String],
    values: &MacroValues,
) -> Result<(), CodecError> {
    let mut data = vec![for_command];
    for name in names {
        if name.is_empty() || name.contains('\0') {
            continue;
        }
        let Some(value) = values.value_of(name) else {
            continue;
        };
        if value.contains('\0') {
            continue;
        }
        data.extend_from_slice(name.as_bytes());
        data.push(0);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
    }
    if data.len() == 1 {
        return Ok(());
    }
    codec::encode(out, command::MACRO, &[&data])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::codec::FrameDecoder;

    fn values() -> MacroValues {
        MacroValues {
            hostname: Some("mx.test".into()),
            daemon_name: Some("mxguard".into()),
            client_addr: Some("192.0.2.1".into()),
            client_name: Some("".into()),
            queue_id: Some("S1T2".into()),
            auth_authen: Some("bad\0user".into()),
            extra: vec![("{if_addr}".into(), "127.0.0.1".into())],
            ..MacroValues::default()
        }
    }

    /// Decodes one macro packet back into its pairs, checking the structure rspamd checks.
    fn pairs(wire: &[u8]) -> (u8, Vec<(String, String)>) {
        let mut d = FrameDecoder::new(1 << 16);
        d.feed(wire);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.code, b'D');
        assert!(d.next_frame().unwrap().is_none());
        let (cmd, rest) = f.data.split_first().unwrap();
        assert_eq!(rest.last(), Some(&0), "ends with NUL");
        let parts: Vec<&[u8]> = rest[..rest.len() - 1].split(|b| *b == 0).collect();
        assert_eq!(parts.len() % 2, 0, "name/value pairs");
        let p = parts
            .chunks(2)
            .map(|c| {
                assert!(!c[0].is_empty(), "empty name");
                (
                    String::from_utf8(c[0].to_vec()).unwrap(),
                    String::from_utf8(c[1].to_vec()).unwrap(),
                )
            })
            .collect();
        (*cmd, p)
    }

    #[test]
    fn connect_macros_leave_out_missing_empty_and_nul_values() {
        let mut out = Vec::new();
        let lists = MacroLists::default();
        encode_macros(&mut out, b'C', lists.get(MacroStage::Connect), &values()).unwrap();
        let (cmd, p) = pairs(&out);
        assert_eq!(cmd, b'C');
        assert_eq!(
            p,
            [
                ("j".into(), "mx.test".into()),
                ("{daemon_name}".into(), "mxguard".into()),
                ("_".into(), "unknown [192.0.2.1]".into()),
                ("{client_addr}".into(), "192.0.2.1".into()),
            ]
        );
        let mut out = Vec::new();
        encode_macros(&mut out, b'M', lists.get(MacroStage::Mail), &values()).unwrap();
        assert_eq!(pairs(&out).1, [("i".to_string(), "S1T2".to_string())]);
    }

    #[test]
    fn nothing_to_send_sends_no_packet() {
        let mut out = Vec::new();
        encode_macros(
            &mut out,
            b'H',
            MacroLists::default().get(MacroStage::Helo),
            &values(),
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_milter_list_overrides_ours_and_may_name_anything() {
        let mut lists = MacroLists::default();
        lists.set(MacroStage::Eom, "{if_addr}, i  {unknown_macro}");
        assert_eq!(
            lists.get(MacroStage::Eom),
            ["{if_addr}", "i", "{unknown_macro}"]
        );
        let mut out = Vec::new();
        encode_macros(&mut out, b'E', lists.get(MacroStage::Eom), &values()).unwrap();
        assert_eq!(
            pairs(&out).1,
            [
                ("{if_addr}".to_string(), "127.0.0.1".to_string()),
                ("i".to_string(), "S1T2".to_string())
            ]
        );
    }

    #[test]
    fn lookup_accepts_both_spellings() {
        let v = values();
        assert_eq!(v.lookup("{j}"), Some("mx.test"));
        assert_eq!(v.lookup("client_addr"), Some("192.0.2.1"));
        assert_eq!(v.lookup("if_addr"), Some("127.0.0.1"));
        assert_eq!(v.lookup("{client_name}"), None);
    }
}
