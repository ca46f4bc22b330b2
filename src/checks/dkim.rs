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

/// Whether a DKIM key record (`v=DKIM1; k=rsa; p=…`) holds an RSA key larger than
/// `max_bits`. The size is read from the length of the base64 key (a SubjectPublicKeyInfo
/// or PKCS#1 DER adds well under 64 bytes to the modulus), so no key is parsed twice.
pub fn rsa_key_too_large(record: &str, max_bits: usize) -> bool {
    let mut rsa = true;
    let mut p_len = 0;
    for tag in record.split(';') {
        let Some((k, v)) = tag.split_once('=') else {
            continue;
        };
        match k.trim() {
            "k" => rsa = v.trim().eq_ignore_ascii_case("rsa"),
            "p" => {
                p_len = v
                    .bytes()
                    .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
                    .count()
            }
            _ => {}
        }
    }
    rsa && p_len * 3 / 4 > max_bits / 8 + 64
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
    fn rsa_key_size_from_the_record() {
        let key = |bytes: usize| format!("v=DKIM1; k=rsa; p={}", "A".repeat(bytes * 4 / 3));
        assert!(!rsa_key_too_large(&key(294), 4096)); // 2048-bit SPKI
        assert!(!rsa_key_too_large(&key(550), 4096)); // 4096-bit SPKI
        assert!(rsa_key_too_large(&key(1062), 4096)); // 8192-bit SPKI
        assert!(!rsa_key_too_large(
            "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            1024
        ));
    }

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
