//! Option negotiation (`SMFIC_OPTNEG`): what mxguard offers, what the milter answers, and
//! what is then allowed.
//!
//! # What mxguard offers, and why not the envelope actions
//!
//! Version 6; the actions `ADDHDRS | CHGHDRS | CHGBODY | QUARANTINE | SETSYMLIST`; and every
//! protocol flag version 6 defines (what Postfix offers with `milter_protocol = 6`).
//!
//! Not offered: `ADDRCPT`, `DELRCPT`, `CHGFROM`, `ADDRCPT_PAR`. A milter asks for envelope
//! changes at end of message, but mxguard relays in lockstep: by then MAIL FROM and every
//! RCPT TO were already sent to the upstream and its answers relayed to the client. Applying
//! them would mean resetting the upstream transaction and replaying an envelope the client
//! never sent — and an added recipient the upstream refuses could no longer be reported to
//! anyone. So they are not offered, and a request for one at end of message is a protocol
//! error (the milter's `default_action` applies), never silently ignored.
//!
//! # What is checked
//!
//! As Postfix does: a milter version above ours is refused; a lower one (2–5) is accepted
//! and the events it lacks are not sent; a milter asking for actions we did not offer is
//! refused — unless the filter is configured to tolerate that, because rspamd 3.4 answers
//! with its whole action mask whatever the offer (its proxy ORs `CHGFROM|ADDRCPT|…` into
//! the reply). Tolerated or not, a request for an unoffered action is a protocol error when
//! it arrives. The protocol flags the milter returns are used as they are (a `NR_*` flag we
//! did not offer is still honoured, so we never wait for a reply that will not come).
//! Macro lists after the 12 fixed bytes replace ours stage by stage.

use super::codec::{self, CodecError, Frame};
use super::macros::{MacroLists, MacroStage};
use super::protocol::{Actions, ProtocolFlags, command};

/// What the MTA side proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub version: u32,
    pub actions: Actions,
    pub protocol: ProtocolFlags,
}

impl Offer {
    /// mxguard's offer (see the module documentation).
    pub fn mxguard() -> Offer {
        Offer {
            version: 6,
            actions: Actions::ADDHDRS
                | Actions::CHGHDRS
                | Actions::CHGBODY
                | Actions::QUARANTINE
                | Actions::SETSYMLIST,
            protocol: ProtocolFlags::V6_ALL,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        codec::encode(
            out,
            command::OPTNEG,
            &[
                &self.version.to_be_bytes(),
                &self.actions.0.to_be_bytes(),
                &self.protocol.0.to_be_bytes(),
            ],
        )
    }
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The milter's protocol version (≤ ours).
    pub version: u32,
    /// What the milter may do: its request, limited to what we offered.
    pub actions: Actions,
    /// Actions the milter asked for that we did not offer (only when tolerated).
    pub unoffered_actions: Actions,
    /// The milter's protocol flags, as it sent them.
    pub protocol: ProtocolFlags,
    /// `NO*` events its version does not have: never sent.
    pub not_in_version: ProtocolFlags,
    /// Macro lists per stage: ours, with the milter's replacements.
    pub macros: MacroLists,
    /// Macro list entries that were not understood (unknown stage numbers).
    pub warnings: Vec<String>,
}

impl Negotiated {
    /// Whether the event whose `NO*` flag is `no_flag` is sent at all.
    pub fn sends(&self, no_flag: ProtocolFlags) -> bool {
        !self.protocol.intersects(no_flag) && !self.not_in_version.intersects(no_flag)
    }

    /// Whether the event whose `NO*` flag is `no_flag` exists in the milter's version
    /// (its macros are sent even when the milter declined the event itself).
    pub fn in_version(&self, no_flag: ProtocolFlags) -> bool {
        !self.not_in_version.intersects(no_flag)
    }

    /// Whether the milter answers the event whose `NR_*` flag is `nr_flag`.
    pub fn replies(&self, nr_flag: ProtocolFlags) -> bool {
        !self.protocol.intersects(nr_flag)
    }

    pub fn leading_space(&self) -> bool {
        self.protocol.contains(ProtocolFlags::HDR_LEADSPC)
    }

    /// Whether the milter wants refused recipients too (`SMFIP_RCPT_REJ`).
    pub fn wants_rejected_recipients(&self) -> bool {
        self.protocol.contains(ProtocolFlags::RCPT_REJ)
    }
}

/// Why a milter's negotiation answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("unexpected reply {0:?} to option negotiation")]
    UnexpectedReply(char),
    #[error("option negotiation reply of {0} bytes (at least 12)")]
    TooShort(usize),
    #[error("milter protocol version {milter} is newer than ours ({ours})")]
    VersionTooNew { milter: u32, ours: u32 },
    #[error("milter protocol version {0} is not supported (2 to 6 are)")]
    VersionTooOld(u32),
    #[error(
        "milter asks for actions mxguard did not offer: {unoffered} (offered: {offered}); \
         rspamd asks for every action whatever it is offered: set \
         `tolerate_unoffered_actions: true` for it"
    )]
    UnofferedActions {
        unoffered: Actions,
        offered: Actions,
    },
    #[error("malformed macro list in option negotiation: {0}")]
    MacroList(String),
}

/// Checks the milter's `SMFIC_OPTNEG` answer against `offer`.
pub fn negotiate(
    offer: &Offer,
    reply: &Frame,
    tolerate_unoffered_actions: bool,
) -> Result<Negotiated, NegotiationError> {
    if reply.code != command::OPTNEG {
        return Err(NegotiationError::UnexpectedReply(reply.code as char));
    }
    let data = &reply.data;
    if data.len() < 12 {
        return Err(NegotiationError::TooShort(data.len()));
    }
    let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let (version, requested, protocol) = (word(0), Actions(word(4)), ProtocolFlags(word(8)));
    if version > offer.version {
        return Err(NegotiationError::VersionTooNew {
            milter: version,
            ours: offer.version,
        });
    }
    if version < 2 {
        return Err(NegotiationError::VersionTooOld(version));
    }
    let unoffered = requested.without(offer.actions);
    if !unoffered.is_empty() && !tolerate_unoffered_actions {
        return Err(NegotiationError::UnofferedActions {
            unoffered,
            offered: offer.actions,
        });
    }
    let (macros, warnings) = parse_macro_lists(&data[12..])?;
    Ok(Negotiated {
        version,
        actions: requested & offer.actions,
        unoffered_actions: unoffered,
        protocol,
        not_in_version: events_missing_in(version),
        macros,
        warnings,
    })
}

/// The `NO*` events that a milter of `version` does not know.
fn events_missing_in(version: u32) -> ProtocolFlags {
    let known = match version {
        6.. => ProtocolFlags::NOSEND,
        4 | 5 => ProtocolFlags::V4_EVENTS,
        3 => ProtocolFlags::V3_EVENTS,
        _ => ProtocolFlags::V2_EVENTS,
    };
    ProtocolFlags(ProtocolFlags::NOSEND.0 & !known.0)
}

/// The optional `(u32 stage, "names\0")*` tail of the negotiation reply.
fn parse_macro_lists(mut rest: &[u8]) -> Result<(MacroLists, Vec<String>), NegotiationError> {
    let mut lists = MacroLists::default();
    let mut warnings = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(NegotiationError::MacroList(format!(
                "{} stray bytes",
                rest.len()
            )));
        }
        let stage = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let names = &rest[4..];
        let nul = names
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| NegotiationError::MacroList("names without NUL terminator".into()))?;
        let text = String::from_utf8_lossy(&names[..nul]);
        match MacroStage::from_index(stage) {
            Some(s) => lists.set(s, &text),
            None => warnings.push(format!(
                "ignored macro list for unknown stage {stage}: {text:?}"
            )),
        }
        rest = &names[nul + 1..];
    }
    Ok((lists, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(version: u32, actions: u32, protocol: u32, tail: &[u8]) -> Frame {
        let mut data = Vec::new();
        data.extend_from_slice(&version.to_be_bytes());
        data.extend_from_slice(&actions.to_be_bytes());
        data.extend_from_slice(&protocol.to_be_bytes());
        data.extend_from_slice(tail);
        Frame { code: b'O', data }
    }

    #[test]
    fn our_offer_on_the_wire() {
        let mut out = Vec::new();
        Offer::mxguard().encode(&mut out).unwrap();
        // len 13, 'O', version 6, actions 0x133, protocol 0x1FFFFF
        assert_eq!(
            out,
            [
                0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0x33, 0, 0x1f, 0xff, 0xff
            ]
        );
    }

    #[test]
    fn clamav_milter_answer() {
        // ADDHDRS|CHGHDRS|QUARANTINE; NOHELO|NODATA|NOEOH|NOUNKNOWN
        let n = negotiate(&Offer::mxguard(), &reply(6, 0x31, 0x342, b""), false).unwrap();
        assert_eq!(
            n.actions,
            Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE
        );
        assert!(!n.sends(ProtocolFlags::NOHELO));
        assert!(n.sends(ProtocolFlags::NOMAIL));
        assert!(n.replies(ProtocolFlags::NR_RCPT));
        assert!(!n.leading_space());
        assert_eq!(n.macros, MacroLists::default());
    }

    #[test]
    fn version_above_ours_is_refused_below_is_accepted() {
        assert_eq!(
            negotiate(&Offer::mxguard(), &reply(7, 1, 0, b""), false),
            Err(NegotiationError::VersionTooNew { milter: 7, ours: 6 })
        );
        let n = negotiate(&Offer::mxguard(), &reply(2, 1, 0, b""), false).unwrap();
        assert!(!n.sends(ProtocolFlags::NODATA), "DATA does not exist in v2");
        assert!(!n.in_version(ProtocolFlags::NODATA));
        assert!(n.sends(ProtocolFlags::NOEOH));
        let n = negotiate(&Offer::mxguard(), &reply(4, 1, 0, b""), false).unwrap();
        assert!(n.sends(ProtocolFlags::NODATA));
        assert!(negotiate(&Offer::mxguard(), &reply(1, 1, 0, b""), false).is_err());
    }

    #[test]
    fn unoffered_actions_are_refused_unless_tolerated() {
        // rspamd 3.4: all nine actions, NR_* on every stage.
        let r = reply(6, 0x1ff, 0x000f_f080, b"");
        let err = negotiate(&Offer::mxguard(), &r, false).unwrap_err();
        assert!(matches!(err, NegotiationError::UnofferedActions { .. }));
        assert!(
            err.to_string()
                .contains("did not offer: ADDRCPT|DELRCPT|CHGFROM|ADDRCPT_PAR ("),
            "{err}"
        );
        let n = negotiate(&Offer::mxguard(), &r, true).unwrap();
        assert_eq!(n.actions, Offer::mxguard().actions);
        assert_eq!(n.unoffered_actions, Actions::ENVELOPE);
        assert!(!n.replies(ProtocolFlags::NR_CONN));
        assert!(!n.replies(ProtocolFlags::NR_HDR));
    }

    #[test]
    fn macro_lists_override_ours() {
        let mut tail = Vec::new();
        tail.extend_from_slice(&5u32.to_be_bytes());
        tail.extend_from_slice(b"{auth_authen} i\0");
        tail.extend_from_slice(&9u32.to_be_bytes());
        tail.extend_from_slice(b"j\0");
        tail.extend_from_slice(&0u32.to_be_bytes());
        tail.extend_from_slice(b"\0");
        let n = negotiate(&Offer::mxguard(), &reply(6, 0x111, 0, &tail), false).unwrap();
        assert_eq!(n.macros.get(MacroStage::Eom), ["{auth_authen}", "i"]);
        assert!(n.macros.get(MacroStage::Connect).is_empty());
        assert_eq!(
            n.macros.get(MacroStage::Rcpt),
            MacroLists::default().get(MacroStage::Rcpt)
        );
        assert_eq!(n.warnings.len(), 1);
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"i");
        assert!(matches!(
            negotiate(&Offer::mxguard(), &reply(6, 1, 0, &bad), false),
            Err(NegotiationError::MacroList(_))
        ));
    }

    #[test]
    fn short_or_wrong_replies() {
        assert_eq!(
            negotiate(
                &Offer::mxguard(),
                &Frame {
                    code: b'O',
                    data: vec![0; 8]
                },
                false
            ),
            Err(NegotiationError::TooShort(8))
        );
        assert_eq!(
            negotiate(
                &Offer::mxguard(),
                &Frame {
                    code: b'c',
                    data: vec![]
                },
                false
            ),
            Err(NegotiationError::UnexpectedReply('c'))
        );
    }
}
