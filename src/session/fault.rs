//! Who caused a failure decides what the client is told, what is logged and what is
//! counted — never a 5xx for what was not the client's doing:
//!
//! | source | reply | the client's error limit | log (`source=`) | metric |
//! |---|---|---|---|---|
//! | client | its 5xx (a limit's 4xx/421) | counts | `refused client input`, `kind=` | `mxguard_protocol_errors_total{kind}` |
//! | upstream | `451 4.4.1`, `454 4.7.0` at AUTH; its connection dropped | no | `upstream failed`, `stage=` | `mxguard_faults_total{source="upstream"}` |
//! | ours | `451 4.3.0`, `452 4.3.1` for a full disk; the upstream kept | no | `local failure`, `what=` | `mxguard_faults_total{source="ours"}` |
//!
//! Every fault also counts in `mxguard_faults_total{source}` (client faults through
//! [`crate::telemetry::SessionMetrics::protocol_error`]). A content filter's failure is
//! ours (its `default_action` is the reply, see [`super::filters`]).

use std::fmt::Display;

use tracing::warn;

use super::Session;
use crate::reply::{Reply, reply};
use crate::stream::Transport;
use crate::telemetry::FaultSource;

impl<S: Transport> Session<S> {
    /// The upstream failed (unreachable, out of step, gone, or closing with its own
    /// `421`) at `stage`: logged and counted as its fault; the connection is dropped. The
    /// caller answers with the stage's 4xx ([`upstream_unavailable`], [`upstream_aborted`],
    /// [`message_not_accepted`]).
    pub(super) fn upstream_fault(&mut self, stage: &'static str, detail: &dyn Display) {
        warn!(session = %self.id, client = %self.client.ip, source = "upstream", stage, error = %detail, "upstream failed");
        self.rt.metrics.session.fault(FaultSource::Upstream);
        self.upstream = None;
        self.upstream_in_transaction = false;
    }

    /// mxguard's own failure (`what`: the spool read or write): logged and counted as
    /// ours. The reply is [`local_error`].
    pub(super) fn our_fault(&self, what: &str, detail: &dyn Display) {
        warn!(session = %self.id, client = %self.client.ip, source = "ours", what, error = %detail, "local failure");
        self.rt.metrics.session.fault(FaultSource::Ours);
    }
}

/// MAIL when no upstream can take the transaction.
pub(super) fn upstream_unavailable() -> Reply {
    reply(
        451,
        (4, 4, 1),
        "Error: upstream unavailable, try again later",
    )
}

/// Every RCPT, DATA and BDAT of a transaction whose upstream side was lost.
pub(super) fn upstream_aborted() -> Reply {
    reply(
        451,
        (4, 4, 1),
        "Error: upstream unavailable, transaction aborted, try again later",
    )
}

/// A message the upstream failed to take (or answered with no usable reply).
pub(super) fn message_not_accepted() -> Reply {
    reply(
        451,
        (4, 4, 1),
        "Error: upstream failure, message not accepted, try again later",
    )
}

/// AUTH when the upstream failed during the exchange.
pub(super) fn auth_unavailable() -> Reply {
    reply(
        454,
        (4, 7, 0),
        "Temporary authentication failure, try again later",
    )
}

/// Our own failure: a full disk says so (`452 4.3.1`, RFC 3463), anything else is
/// `451 4.3.0`; both make the sender retry.
pub(super) fn local_error(e: &std::io::Error) -> Reply {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    if matches!(e.kind(), StorageFull | QuotaExceeded) {
        return reply(
            452,
            (4, 3, 1),
            "Error: insufficient system storage, try again later",
        );
    }
    reply(451, (4, 3, 0), "Error: local error, try again later")
}
