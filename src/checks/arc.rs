//! ARC (RFC 8617) chain validation, done by mail-auth (its `arc` feature) in
//! [`super::mailauth`]. The result (`pass`, `fail`, `none`, …) is reported in the
//! Authentication-Results header; no rule condition uses it yet, because trusting an
//! ARC chain needs a list of trusted sealers first.
