//! Argument decoders shared by the store-backed actions (`greylist`, `rate_limit`).

use serde_yaml_ng::Value;

use super::super::load::Decoder;
use super::super::yaml::{KeyPath, kind_of};
use crate::checks::FailMode;

/// `5m`, `2d`, `300s` or a number of seconds, as microseconds (at least 1 s).
pub(super) fn duration_us(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<u64> {
    let r = match v {
        Value::String(s) => crate::config::parse_duration(s),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| *f >= 0.0)
            .map(std::time::Duration::from_secs_f64)
            .ok_or_else(|| format!("invalid duration {n}")),
        other => Err(format!(
            "expected a duration like 5m or 2d, found {}",
            kind_of(other)
        )),
    };
    match r {
        Ok(dur) if dur.as_secs() >= 1 => Some(dur.as_micros() as u64),
        Ok(_) => {
            d.error(path, "duration must be at least 1s");
            None
        }
        Err(e) => {
            d.error(path, e);
            None
        }
    }
}

pub(super) fn prefix(d: &mut Decoder<'_>, v: &Value, path: &KeyPath, max: u8) -> Option<u8> {
    let n = d.u64(v, path)?;
    if n > u64::from(max) {
        d.error(path, format!("prefix length must be at most {max}"));
        return None;
    }
    Some(n as u8)
}

pub(super) fn fail_mode(d: &mut Decoder<'_>, v: &Value, path: &KeyPath) -> Option<FailMode> {
    match d.string(v, path)? {
        "open" => Some(FailMode::Open),
        "tempfail" => Some(FailMode::Tempfail),
        other => {
            d.error(
                path,
                format!("unknown fail mode `{other}`, expected `open` or `tempfail`"),
            );
            None
        }
    }
}
