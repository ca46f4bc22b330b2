//! The upstream's replies read from bytes as they arrive, without I/O: the relay feeds
//! it what each read brought, the `upstream_reply` fuzz target arbitrary bytes cut
//! anywhere.

use smtp_proto::response::parser::ResponseReceiver;

use crate::reply::{Reply, StatusCode};

/// The longest reply we read (Postfix's EHLO reply is under 1 KiB).
pub const MAX_REPLY: usize = 64 * 1024;

/// What the bytes given so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No whole reply yet and every byte was taken: read more.
    NeedMore,
    Reply(Reply),
    /// Not a reply to trust (the relay drops the connection); the reader starts afresh.
    Invalid(String),
}

/// smtp-proto's receiver, plus what it does not check: every line carries the code of
/// the first (it keeps the first line's code and ignores the others', so
/// `250-ok` `550 no` would be a 250).
#[derive(Default)]
pub struct ReplyReader {
    rx: ResponseReceiver,
    /// The current reply's bytes so far, for the line codes.
    raw: Vec<u8>,
}

impl ReplyReader {
    /// Takes bytes from the start of `input` and says how many it used and what they
    /// complete; bytes after a whole reply are left for the next call.
    pub fn read(&mut self, input: &[u8]) -> (usize, Step) {
        let mut it = input.iter();
        let parsed = self.rx.parse(&mut it);
        let used = input.len() - it.as_slice().len();
        self.raw.extend_from_slice(&input[..used]);
        let step = match parsed {
            Ok(resp) => match mixed_codes(&self.raw) {
                Some(detail) => Step::Invalid(detail),
                // `051`, `999`: three digits, but no reply (RFC 5321 §4.2.1 gives 2 to 5).
                None if !(200..600).contains(&resp.code) => {
                    Step::Invalid(format!("reply code {:03} is not 2xx to 5xx", resp.code))
                }
                None => {
                    let mut reply = Reply::from_upstream(resp.code, resp.esc, resp.message);
                    if resp.esc.contains(&u8::MAX) {
                        reply.status = last_enhanced_code(&self.raw, resp.code)
                            .unwrap_or(StatusCode::generic_for(resp.code));
                    }
                    Step::Reply(reply)
                }
            },
            Err(smtp_proto::Error::NeedsMoreData { .. }) if self.raw.len() <= MAX_REPLY => {
                return (used, Step::NeedMore);
            }
            Err(smtp_proto::Error::NeedsMoreData { .. } | smtp_proto::Error::ResponseTooLong) => {
                Step::Invalid("reply too long".into())
            }
            Err(e) => Step::Invalid(format!("unparsable reply: {e:?}")),
        };
        self.rx.reset();
        self.raw.clear();
        (used, step)
    }
}

/// RFC 5321 §4.2.1: the lines of a multi-line reply MUST carry the same code; lines
/// that do not are not one reply, and no code of theirs can be passed on as the answer.
fn mixed_codes(raw: &[u8]) -> Option<String> {
    let first = raw.get(..3)?;
    raw.split_inclusive(|&b| b == b'\n').find_map(|line| {
        let code = line.get(..3).unwrap_or(line);
        (code != first).then(|| {
            format!(
                "reply lines carry different codes ({}, {})",
                String::from_utf8_lossy(first),
                String::from_utf8_lossy(code)
            )
        })
    })
}

/// smtp-proto keeps the enhanced code's parts in octets, so a detail over 255 comes out
/// as 255 (Microsoft's `5.7.606` "banned sending IP" would be passed on as `5.7.255`):
/// read it again from the reply's bytes, from the last line carrying a well-formed one
/// that fits the reply `code`, as smtp-proto takes the last. `None` when no line does:
/// the 255 stood for a malformed part (`4.2.0950`), not for a code the upstream meant.
fn last_enhanced_code(raw: &[u8], code: u16) -> Option<StatusCode> {
    raw.rsplit(|&b| b == b'\n')
        .filter_map(|line| enhanced_code(line.get(4..)?))
        .find(|status| status.fits(code))
}

/// `class.subject.detail` at the start of a line's text, each part of one to three digits,
/// then a space or the line end.
fn enhanced_code(text: &[u8]) -> Option<StatusCode> {
    let end = text
        .iter()
        .position(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(text.len());
    let part = |p: &[u8]| -> Option<u16> {
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(p).ok()?.parse().ok()
    };
    let mut parts = text[..end].split(|&b| b == b'.');
    let class = u8::try_from(part(parts.next()?)?).ok()?;
    let subject = part(parts.next()?)?;
    let detail = part(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(StatusCode(class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<Step> {
        let mut r = ReplyReader::default();
        let mut rest = input;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            let (used, step) = r.read(rest);
            rest = &rest[used..];
            steps.push(step);
        }
        steps
    }

    /// Found by the `upstream_reply` fuzz target (its seed `mixed-codes`): read as a 250.
    #[test]
    fn lines_with_different_codes_are_refused() {
        let steps = read_all(b"250-2.0.0 looks fine\r\n550 5.7.1 but is not\r\n");
        assert!(
            matches!(&steps[..], [Step::Invalid(d)] if d.contains("different codes (250, 550)")),
            "{steps:?}"
        );
    }

    /// Found by the `upstream_reply` fuzz target: `051` was read as the reply code 51.
    #[test]
    fn codes_outside_2xx_to_5xx_are_refused() {
        for wire in [
            &b"051 x\r\n"[..],
            b"199 x\r\n",
            b"600 x\r\n",
            b"999-a\r\n999 b\r\n",
        ] {
            let steps = read_all(wire);
            assert!(
                matches!(&steps[..], [Step::Invalid(d)] if d.contains("is not 2xx to 5xx")),
                "{steps:?}"
            );
        }
    }

    /// Found by the `upstream_reply` fuzz target (its seed `ms-style`).
    #[test]
    fn enhanced_codes_over_255_are_kept() {
        let steps = read_all(b"550 5.7.606 Access denied, banned sending IP\r\n");
        let [Step::Reply(reply)] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(reply.status, StatusCode(5, 7, 606));
        assert_eq!(
            reply.lines().collect::<Vec<_>>(),
            ["Access denied, banned sending IP"]
        );
        let steps = read_all(b"451-4.3.0 a\r\n451 4.3.0 b\r\n");
        assert!(matches!(&steps[..], [Step::Reply(r)] if r.status == StatusCode(4, 3, 0)));
    }

    /// Found by the `upstream_reply` fuzz target: a malformed `4.2.0950` on the last line
    /// sent the code's re-reading to the first line's `0.2.04`, and a `0.2.4` went back
    /// to the client (then read again as no code at all). RFC 3463 has classes 2, 4 and
    /// 5, and the class is the reply's: as Postfix does, a bogus code is replaced by the
    /// generic one of the reply's class.
    #[test]
    fn an_enhanced_code_of_no_class_or_another_class_becomes_the_generic_one() {
        for (wire, status) in [
            (
                &b"450-0.2.04 a\r\n450 4.2.0950 b\r\n"[..],
                StatusCode(4, 0, 0),
            ),
            (b"450 4.2.0950 b\r\n", StatusCode(4, 0, 0)),
            (b"450-4.2.1 a\r\n450 4.2.0950 b\r\n", StatusCode(4, 2, 1)),
            (b"450 0.2.4 x\r\n", StatusCode(4, 0, 0)),
            (b"450 7.2.4 x\r\n", StatusCode(4, 0, 0)),
            (b"250 5.7.1 x\r\n", StatusCode(2, 0, 0)),
            (b"550 4.7.1 x\r\n", StatusCode(5, 0, 0)),
            (b"354 3.0.0 go\r\n", StatusCode(2, 0, 0)),
            (b"550 5.7.255 x\r\n", StatusCode(5, 7, 255)),
            (
                b"550-5.7.606 a\r\n550 5.7.0950 b\r\n",
                StatusCode(5, 7, 606),
            ),
        ] {
            let steps = read_all(wire);
            let [Step::Reply(reply)] = &steps[..] else {
                panic!("{steps:?}")
            };
            assert_eq!(reply.status, status, "{:?}", String::from_utf8_lossy(wire));
        }
    }

    /// Found by the `upstream_reply` fuzz target: smtp-proto keeps the CR of a line
    /// without text, which became a space.
    #[test]
    fn a_line_without_text_has_empty_text() {
        let steps = read_all(b"354 \r\n250-\r\n250 ok\r\n");
        let [Step::Reply(go), Step::Reply(ok)] = &steps[..] else {
            panic!("{steps:?}")
        };
        assert_eq!(go.lines().collect::<Vec<_>>(), [""]);
        assert_eq!(ok.lines().collect::<Vec<_>>(), ["", "ok"]);
    }

    #[test]
    fn replies_are_read_one_after_the_other_across_reads() {
        let mut r = ReplyReader::default();
        assert_eq!(r.read(b"250-mx.example\r\n25"), (18, Step::NeedMore));
        let (used, step) = r.read(b"0 2.1.0 Ok\r\n354 go\r\n");
        assert_eq!(used, 12);
        let Step::Reply(reply) = step else {
            panic!("{step:?}")
        };
        assert_eq!((reply.code, reply.lines().count()), (250, 2));
        let (_, step) = r.read(b"354 go\r\n");
        assert!(
            matches!(step, Step::Reply(r) if r.code == 354),
            "after a reply"
        );
    }

    #[test]
    fn an_endless_reply_is_refused() {
        let line = b"250-".iter().chain(&[b'x'; 1000]).chain(b"\r\n").copied();
        let endless: Vec<u8> = line.cycle().take(MAX_REPLY + 2000).collect();
        let steps = read_all(&endless);
        let first_invalid = steps.iter().find(|s| matches!(s, Step::Invalid(_)));
        assert_eq!(first_invalid, Some(&Step::Invalid("reply too long".into())));
    }
}
