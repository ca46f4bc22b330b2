//! mxguard: an SMTP filtering proxy in front of Postfix or Sendmail.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`envelope`] | types every piece shares: stage, client facts, envelope, verdict |
//! | [`reply`] | SMTP replies as values and their one wire formatter |
//! | [`config`] | the YAML configuration, its defaults and command-line overrides |
//! | [`admin`] | greylist administration, offline and over the HTTP listener |
//! | [`auth_guard`] | failed AUTH attempts per network and user |
//! | [`cli`] | the `run` and `check` commands and their flags |
//! | [`log_limit`] | rate limits for per-event log lines (one summary line per kind and interval) |
//! | [`listener`] | accept loops, connection limits per client network, implicit TLS |
//! | [`proxy_protocol`] | PROXY v1/v2 headers from trusted load balancers |
//! | [`session`] | the SMTP server state machine, limits, timeouts |
//! | [`smtp`] | the command grammar we parse ourselves: addresses, MAIL/RCPT parameters |
//! | [`stream`] | a TCP connection that can become TLS, with its read buffer |
//! | [`tls`] | certificates (reloadable) and upstream TLS client settings |
//! | [`dotstream`] | the DATA wire format: end-of-data, (un)stuffing, bare CR/LF |
//! | [`spool`] | message bodies in memory, spilling to a file in the state directory |
//! | [`transaction`] | one mail transaction, typed: sender and MAIL parameters, recipients, its checks, its edits |
//! | [`message`] | the header index built once per message, the one list of edits, the rewriter |
//! | [`relay`] | the upstream client: connect, EHLO, XCLIENT/XFORWARD, lockstep replay, warm connections |
//! | [`policy`] | compiled rules, stage evaluation, verdicts |
//! | [`store`] | greylist and rate state: memory, embedded file (redb), Redis |
//! | [`dns`] | the one resolver and cache every check shares |
//! | [`checks`] | SPF, DKIM, DMARC, ARC, DNS lists, reverse DNS, Authentication-Results; the store-backed greylist and rate-limit checks the session resolves |
//! | [`milter`] | the milter protocol client (clamav-milter, opendkim, opendmarc, rspamd proxy) |
//! | [`filters`] | content filter configuration, the rspamd HTTP client, the per-session filter chain, `explain --filters` |
//! | [`telemetry`] | Prometheus metrics per area (registered into a registry passed in), /metrics /healthz /readyz, logging |
//! | [`runtime`] | the handles every session shares |
//! | [`server`] | wiring: builds the runtime, runs listeners, signals, drain |
//! | [`systemd`] | readiness/reload/watchdog notifications, socket activation |

pub mod admin;
pub mod auth_guard;
pub mod checks;
pub mod cli;
pub mod config;
pub mod dns;
pub mod dotstream;
pub mod envelope;
pub mod filters;
pub mod listener;
pub mod log_limit;
pub mod message;
pub mod milter;
pub mod policy;
pub mod proxy_protocol;
pub mod relay;
pub mod reply;
pub mod runtime;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod store;
pub mod stream;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod transaction;
