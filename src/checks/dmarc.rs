//! DMARC (RFC 7489): evaluated by mail-auth in [`super::mailauth`] from the DKIM and
//! SPF results. mail-auth 0.13.3 follows DMARCbis: the organisational domain comes
//! from the DNS tree walk, and `t=y` (testing) replaces `pct` — mail-auth lowers the
//! policy of a record in testing mode one step (`reject` → `quarantine` → `none`).

use crate::envelope::{AuthFacts, AuthStatus};

/// Whether a DMARC failure may be our DNS trouble rather than the sender's: DMARC,
/// or one of the results it rests on, is a temporary error.
pub fn maybe_dns_trouble(f: &AuthFacts) -> bool {
    let dmarc_temp = f
        .dmarc
        .as_ref()
        .is_some_and(|d| d.status == AuthStatus::TempError);
    let inputs_temp = f
        .dmarc
        .as_ref()
        .is_some_and(|d| d.status == AuthStatus::Fail)
        && (f
            .spf
            .as_ref()
            .is_some_and(|s| s.status == AuthStatus::TempError)
            || f.dkim
                .as_ref()
                .is_some_and(|v| v.iter().any(|s| s.status == AuthStatus::TempError)));
    dmarc_temp || inputs_temp
}
