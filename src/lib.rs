//! mxguard: an SMTP filtering proxy in front of Postfix or Sendmail.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`envelope`] | types every piece shares: stage, client facts, envelope, verdict |
//! | [`reply`] | SMTP replies as values and their one wire formatter |
//! | [`config`] | the YAML configuration, its defaults and command-line overrides |
//! | [`listener`] | accept loops, TLS, connection limits per client network |
//! | [`session`] | the SMTP server state machine, limits, timeouts |
//! | [`dotstream`] | the DATA wire format: end-of-data, (un)stuffing, bare CR/LF |
//! | [`spool`] | message bodies in memory, spilling to a file in the state directory |
//! | [`relay`] | the upstream client: connect, EHLO, XCLIENT/XFORWARD, lockstep replay |
//! | [`policy`] | compiled rules, stage evaluation, verdicts |
//! | [`telemetry`] | Prometheus metrics, /metrics /healthz /readyz, logging |
//! | [`server`] | wiring: builds the runtime, runs listeners, signals, drain |

pub mod envelope;
pub mod policy;
pub mod reply;
