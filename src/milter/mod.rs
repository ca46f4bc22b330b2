//! A milter client: the Sendmail milter protocol, version 6, as Postfix's `milter8.c`
//! speaks it, written for mxguard.
//!
//! mxguard asks milters (clamav-milter, opendkim, opendmarc, rspamd's proxy, …) about each
//! SMTP session, one milter connection per client session. The pieces, from the wire up:
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`codec`] | frames (length, code, data) without I/O; the size cap; "peer is not a milter" |
//! | [`protocol`] | codes, action and protocol-flag masks, typed replies and edits, reply-code validation |
//! | [`negotiate`] | what mxguard offers (no envelope changes, and why), checking the milter's answer |
//! | [`macros`] | macro values, Postfix's per-stage lists, `SMFIC_MACRO` packets |
//! | [`conversation`] | per-event state machine: what to send, whether to wait, what a reply means |
//! | [`client`] | the tokio driver: TCP or unix socket, timeouts, typed errors |
//! | [`config`] | `name`, `milter`, `default_action`, timeouts (YAML) |
//!
//! # Use
//!
//! ```no_run
//! # async fn f() -> Result<(), mxguard::milter::MilterError> {
//! use mxguard::milter::{MacroValues, MilterClient, MilterConfig, MilterReply};
//! let cfg = MilterConfig::new("clamav", "127.0.0.1:7357".parse().unwrap());
//! let mut m = MilterClient::open(&cfg).await?;
//! let mut macros = MacroValues { queue_id: Some("S1T1".into()), ..Default::default() };
//! m.connect(None, Some("192.0.2.1:40000".parse().unwrap()), &macros).await?;
//! m.helo("client.example", &macros).await?;
//! macros.mail_addr = Some("a@example.com".into());
//! m.mail("a@example.com", &[], &macros).await?;
//! macros.rcpt_addr = Some("b@example.org".into());
//! m.rcpt("b@example.org", &[], &macros).await?;
//! m.data(&macros).await?;
//! let outcome = m.message(b"Subject: hi\r\n\r\nhello\r\n", &macros).await?;
//! if outcome.reply == MilterReply::Accept { /* apply outcome.edits */ }
//! m.abort().await?;
//! m.quit().await;
//! # Ok(()) }
//! ```

pub mod client;
pub mod codec;
pub mod config;
pub mod conversation;
pub mod macros;
pub mod negotiate;
pub mod protocol;

pub use client::{ErrorClass, ErrorKind, MilterClient, MilterError, MilterIo, split_message};
pub use config::{DefaultAction, MilterConfig, MilterEndpoint};
pub use conversation::{EomOutcome, Stage};
pub use macros::{MacroStage, MacroValues};
pub use negotiate::Negotiated;
pub use protocol::{MilterEdit, MilterReply, ReplyCode};
