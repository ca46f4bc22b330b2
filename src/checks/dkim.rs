//! DKIM (RFC 6376, RFC 8463): verification runs in [`super::mailauth`]; this module
//! holds what we add around it.

/// A copy of `raw` whose body no longer ends in whitespace-only lines (space/tab
/// lines: what relaxed body canonicalisation ignores, RFC 6376 §3.4.4), or `None` when
/// there are none. Empty trailing lines are left: mail-auth already ignores those.
pub fn strip_trailing_blank_lines(raw: &[u8]) -> Option<Vec<u8>> {
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut end = raw.len();
    let mut removed_ws = false;
    loop {
        let body = &raw[body_start..end];
        let Some(without_crlf) = body.strip_suffix(b"\r\n") else {
            break;
        };
        let line_start = without_crlf
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map_or(0, |p| p + 2);
        let line = &without_crlf[line_start..];
        if !line.iter().all(|b| *b == b' ' || *b == b'\t') {
            break;
        }
        removed_ws |= !line.is_empty();
        end = body_start + line_start;
    }
    removed_ws.then(|| raw[..end].to_vec())
}

/// `raw` with every bare LF turned into CRLF (message files on disk often use LF).
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_whitespace_only_trailing_lines() {
        let m = b"A: b\r\n\r\nhello\r\n  \r\n\t\r\n\r\n";
        assert_eq!(
            strip_trailing_blank_lines(m).unwrap(),
            b"A: b\r\n\r\nhello\r\n"
        );
        assert_eq!(
            strip_trailing_blank_lines(b"A: b\r\n\r\nhello\r\n\r\n"),
            None
        );
        assert_eq!(strip_trailing_blank_lines(b"A: b\r\n\r\nhello \r\n"), None);
    }
}
