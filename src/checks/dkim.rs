//! DKIM (RFC 6376, RFC 8301, RFC 8463): verification runs in [`super::mailauth`]; this
//! module holds what we add around it.
//!
//! mail-auth 0.13 verifies rsa-sha1, accepts a signature without `v=`, reports keys
//! under 1024 bits and an `i=` outside `d=` as plain failures, and drops signatures it
//! cannot parse without a trace. [`screen_signature`] looks at every DKIM-Signature
//! first: one that RFC 6376 or RFC 8301 does not accept is a `permerror` with its
//! reason and never reaches verification, so it can neither pass nor satisfy DMARC.
//! The key size is read from the key record's DER ([`rsa_key_bits`]) before any RSA
//! work.

/// RSA keys below this are not acceptable (RFC 8301 §3.2).
pub const MIN_RSA_BITS: usize = 1024;

/// What the Authentication-Results header says about a signature (its `d=`, `s=`,
/// `a=`, as far as they could be read), and why it is refused before any DNS lookup,
/// if it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Screened {
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    pub refusal: Option<String>,
}

/// Checks a DKIM-Signature field value against RFC 6376 §3.2/§3.5 and RFC 8301: a
/// well-formed tag list without duplicates, `v=1`, the required tags, an acceptable
/// algorithm, `From` among the signed fields, and `i=` within `d=`.
pub fn screen_signature(value: &[u8]) -> Screened {
    let text = String::from_utf8_lossy(value);
    let mut tags: Vec<(String, String)> = Vec::new();
    let mut malformed = None;
    for spec in text.split(';') {
        if spec.trim().is_empty() {
            continue;
        }
        let Some((name, val)) = spec.split_once('=') else {
            malformed.get_or_insert("malformed tag list (RFC 6376 section 3.2)".to_owned());
            continue;
        };
        let name = name.trim();
        if !is_tag_name(name) {
            malformed.get_or_insert("malformed tag list (RFC 6376 section 3.2)".to_owned());
            continue;
        }
        if tags.iter().any(|(n, _)| n == name) {
            malformed.get_or_insert(format!("duplicate tag {name}= (RFC 6376 section 3.2)"));
            continue;
        }
        tags.push((name.to_owned(), val.trim().to_owned()));
    }
    let tag = |n: &str| tags.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let mut s = Screened {
        domain: tag("d").unwrap_or("").to_ascii_lowercase(),
        selector: tag("s").unwrap_or("").to_owned(),
        algorithm: tag("a").unwrap_or("").to_ascii_lowercase(),
        refusal: malformed,
    };
    if s.refusal.is_none() {
        s.refusal = refusal(&tag, &s);
    }
    s
}

fn is_tag_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The first rule of RFC 6376 §3.5 / RFC 8301 the signature breaks.
fn refusal<'t>(tag: &impl Fn(&str) -> Option<&'t str>, s: &Screened) -> Option<String> {
    match tag("v") {
        None => return Some("v= tag missing (RFC 6376 section 3.5)".into()),
        Some("1") => {}
        Some(v) => return Some(format!("unsupported version v={v}")),
    }
    for required in ["a", "b", "bh", "d", "h", "s"] {
        if tag(required).is_none_or(|v| v.is_empty()) {
            return Some(format!("missing {required}= tag (RFC 6376 section 3.5)"));
        }
    }
    match s.algorithm.as_str() {
        "rsa-sha256" | "ed25519-sha256" => {}
        "rsa-sha1" => return Some("rsa-sha1 is not acceptable (RFC 8301)".into()),
        a => return Some(format!("unknown algorithm a={a}")),
    }
    let signs_from = tag("h")
        .unwrap_or("")
        .split(':')
        .any(|f| f.trim().eq_ignore_ascii_case("from"));
    if !signs_from {
        return Some("From is not signed (RFC 6376 section 5.4)".into());
    }
    if let Some(i) = tag("i") {
        let within = i.rsplit_once('@').is_some_and(|(_, dom)| {
            let dom = dom.trim().to_ascii_lowercase();
            dom == s.domain || dom.ends_with(&format!(".{}", s.domain))
        });
        if !within {
            return Some("i= is not within d= (RFC 6376 section 3.5)".into());
        }
    }
    None
}

/// The size in bits of the RSA modulus in a DKIM key record whose key type is RSA
/// (`k=rsa`, the default): read from the DER of `p=`, a SubjectPublicKeyInfo or a bare
/// PKCS#1 RSAPublicKey (both occur in DNS). `None` for other key types, a revoked
/// (empty) key or one that does not parse, which verification then reports.
pub fn rsa_key_bits(record: &str) -> Option<usize> {
    use base64::Engine as _;
    let mut rsa = true;
    let mut p = None;
    for tag in record.split(';') {
        let Some((k, v)) = tag.split_once('=') else {
            continue;
        };
        match k.trim() {
            "k" => rsa = v.trim().eq_ignore_ascii_case("rsa"),
            "p" => p = Some(v.chars().filter(|c| !c.is_whitespace()).collect::<String>()),
            _ => {}
        }
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(p.filter(|p| rsa && !p.is_empty())?)
        .ok()?;
    let modulus = spki_modulus(&der).or_else(|| pkcs1_modulus(&der))?;
    let significant: Vec<u8> = modulus.into_iter().skip_while(|b| *b == 0).collect();
    let first = *significant.first()?;
    Some(significant.len() * 8 - first.leading_zeros() as usize)
}

/// SEQUENCE { SEQUENCE { OID, params }, BIT STRING { RSAPublicKey } } → the modulus.
fn spki_modulus(der: &[u8]) -> Option<Vec<u8>> {
    let key = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            r.next().read_sequence(|r| {
                r.next().read_oid()?;
                r.read_optional(|r| r.read_der())?;
                Ok(())
            })?;
            Ok(r.next().read_bitvec_bytes()?.0)
        })
    })
    .ok()?;
    pkcs1_modulus(&key)
}

/// SEQUENCE { INTEGER modulus, INTEGER exponent } → the modulus.
fn pkcs1_modulus(der: &[u8]) -> Option<Vec<u8>> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let (n, _) = r.next().read_bigint_bytes()?;
            r.next().read_bigint_bytes()?;
            Ok(n)
        })
    })
    .ok()
}

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
    fn signatures_that_rfc_6376_and_8301_refuse() {
        let good = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel;\r\n\th=From:To:Subject; bh=AAAA; b=BB\r\n\t BB";
        let ok = screen_signature(good.as_bytes());
        assert_eq!(
            ok,
            Screened {
                domain: "example.com".into(),
                selector: "sel".into(),
                algorithm: "rsa-sha256".into(),
                refusal: None,
            }
        );
        let table: &[(&str, &str)] = &[
            (
                "v=1; a=rsa-sha1; d=example.com; s=sel; h=from; bh=AA; b=BB",
                "rsa-sha1 is not acceptable (RFC 8301)",
            ),
            (
                "a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA; b=BB",
                "v= tag missing (RFC 6376 section 3.5)",
            ),
            (
                "v=2; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA; b=BB",
                "unsupported version v=2",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; s=sel; h=from; b=BB",
                "missing bh= tag (RFC 6376 section 3.5)",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=; b=BB",
                "missing bh= tag (RFC 6376 section 3.5)",
            ),
            (
                "v=1; a=rsa-sha256; s=sel; h=from; bh=AA; b=BB",
                "missing d= tag (RFC 6376 section 3.5)",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA; b=BB; garbage",
                "malformed tag list (RFC 6376 section 3.2)",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA; b=BB; 9x=1",
                "malformed tag list (RFC 6376 section 3.2)",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; d=evil.example; s=sel; h=from; bh=AA; b=BB",
                "duplicate tag d= (RFC 6376 section 3.2)",
            ),
            (
                "v=1; a=rsa-sha512; d=example.com; s=sel; h=from; bh=AA; b=BB",
                "unknown algorithm a=rsa-sha512",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; s=sel; h=to:subject; bh=AA; b=BB",
                "From is not signed (RFC 6376 section 5.4)",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; i=@evil.example; s=sel; h=from; bh=AA; b=BB",
                "i= is not within d= (RFC 6376 section 3.5)",
            ),
            (
                "v=1; a=rsa-sha256; d=example.com; i=user@notexample.com; s=sel; h=from; bh=AA; b=BB",
                "i= is not within d= (RFC 6376 section 3.5)",
            ),
        ];
        for (sig, want) in table {
            let s = screen_signature(sig.as_bytes());
            assert_eq!(s.refusal.as_deref(), Some(*want), "{sig}");
        }
        // i= at d= or a subdomain of it is fine; the A-R still learns d= and s= of a
        // malformed signature.
        for i in ["@example.com", "u@mail.Example.com"] {
            let sig =
                format!("v=1; a=ed25519-sha256; d=example.com; i={i}; s=sel; h=from; bh=AA; b=BB");
            assert_eq!(screen_signature(sig.as_bytes()).refusal, None, "{i}");
        }
        let s = screen_signature(b"v=1; d=Example.COM; s=sel; junk");
        assert_eq!(
            (s.domain.as_str(), s.selector.as_str()),
            ("example.com", "sel")
        );
    }

    /// DER of an RSA public key with a modulus of exactly `bits` bits, as a bare PKCS#1
    /// key or wrapped in a SubjectPublicKeyInfo.
    fn rsa_der(bits: usize, spki: bool) -> Vec<u8> {
        let mut n = vec![0u8; bits.div_ceil(8)];
        n[0] = 1 << ((bits - 1) % 8);
        let last = n.len() - 1;
        n[last] |= 1;
        let pkcs1 = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_bigint_bytes(&n, true);
                w.next().write_u32(65537);
            })
        });
        if !spki {
            return pkcs1;
        }
        let oid = yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 113549, 1, 1, 1]);
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&oid);
                    w.next().write_null();
                });
                w.next().write_bitvec_bytes(&pkcs1, pkcs1.len() * 8);
            })
        })
    }

    #[test]
    fn rsa_key_size_from_the_der() {
        use base64::Engine as _;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        for bits in [512, 1023, 1024, 2048, 4096] {
            for spki in [true, false] {
                let rec = format!("v=DKIM1; k=rsa; p={}", b64(&rsa_der(bits, spki)));
                assert_eq!(rsa_key_bits(&rec), Some(bits), "{bits} spki={spki}");
            }
        }
        // k= absent means RSA; whitespace inside p= is allowed (split TXT strings).
        let p = b64(&rsa_der(768, true));
        let rec = format!("p={} {}", &p[..20], &p[20..]);
        assert_eq!(rsa_key_bits(&rec), Some(768));
        assert_eq!(
            rsa_key_bits("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="),
            None
        );
        assert_eq!(rsa_key_bits("v=DKIM1; k=rsa; p="), None);
        assert_eq!(rsa_key_bits("v=DKIM1; k=rsa; p=AAAA"), None);
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
