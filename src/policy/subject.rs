//! The facts of one decision, prepared once for every rule of the stage: addresses
//! lower-cased and domains split off a single time instead of once per rule.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::envelope::{Facts, Stage};

/// A text value as sent and in ASCII lower case (borrowed when already lower case).
#[derive(Debug, Clone)]
pub(crate) struct Text<'a> {
    pub orig: &'a str,
    pub lower: Cow<'a, str>,
}

impl<'a> Text<'a> {
    pub fn new(orig: &'a str) -> Self {
        let lower = if orig.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(orig.to_ascii_lowercase())
        } else {
            Cow::Borrowed(orig)
        };
        Text { orig, lower }
    }
}

/// The domain of an address: what follows the last `@`; `None` for the null sender or
/// an address without `@`.
pub(crate) fn domain_of(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

pub(crate) struct Subject<'a> {
    pub facts: &'a Facts<'a>,
    pub stage: Stage,
    pub client_ip: IpAddr,
    pub helo: Option<Text<'a>>,
    pub sender: Option<Text<'a>>,
    pub sender_domain: Option<Text<'a>>,
    pub auth_user: Option<Text<'a>>,
    /// At `rcpt`: the recipient being decided. At `data`: every recipient.
    pub recipients: Vec<Text<'a>>,
    pub recipient_domains: Vec<Text<'a>>,
}

impl<'a> Subject<'a> {
    pub fn new(facts: &'a Facts<'a>) -> Self {
        let tx = facts.transaction;
        let sender = tx.map(|t| t.sender_text.as_str());
        let rcpts: Vec<&'a str> = match facts.stage {
            Stage::Rcpt => facts
                .recipient
                .map(|r| r.text.as_str())
                .into_iter()
                .collect(),
            Stage::Data => tx
                .map(|t| t.recipients.iter().map(|r| r.text.as_str()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Subject {
            facts,
            stage: facts.stage,
            client_ip: facts.client.ip.to_canonical(),
            helo: facts.helo.map(Text::new),
            sender: sender.map(Text::new),
            sender_domain: sender.and_then(domain_of).map(Text::new),
            auth_user: facts.client.auth_user.as_deref().map(Text::new),
            recipient_domains: rcpts
                .iter()
                .filter_map(|r| domain_of(r))
                .map(Text::new)
                .collect(),
            recipients: rcpts.into_iter().map(Text::new).collect(),
        }
    }

    /// How many recipients the transaction has, counting the one being decided at
    /// `rcpt` (so `over: 50` refuses the 51st).
    pub fn recipient_count(&self) -> u64 {
        let current = u64::from(self.stage == Stage::Rcpt && self.facts.recipient.is_some());
        self.facts
            .transaction
            .map_or(0, |t| t.recipient_count() as u64)
            + current
    }

    /// The size a size rule tests: `SIZE=` at `mail`, the real byte count at `data`.
    pub fn size(&self) -> Option<u64> {
        match self.stage {
            Stage::Data => self.facts.message.map(|m| m.size),
            _ => self
                .facts
                .transaction
                .and_then(|t| t.params.size)
                .filter(|s| *s > 0),
        }
    }
}
