//! SMTP replies as values: a code, an enhanced status code (RFC 3463) and text lines.
//!
//! Every piece that answers a client — the session, the policy, the relay passing an
//! upstream answer through — produces a [`Reply`], and only [`Reply::write_to`] turns one
//! into wire bytes. That single place guarantees that every line carries the enhanced
//! status code and that no CR or LF from anywhere (rule text, upstream text) can inject a
//! reply line of its own.

use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusCode(pub u8, pub u16, pub u16);

impl StatusCode {
    /// The generic enhanced code for a basic reply code, used when an upstream sends
    /// none: `2.0.0`, `4.0.0` or `5.0.0` by class (RFC 3463 §3.1 "other undefined").
    pub fn generic_for(code: u16) -> Self {
        match code / 100 {
            2 | 3 => StatusCode(2, 0, 0),
            4 => StatusCode(4, 0, 0),
            _ => StatusCode(5, 0, 0),
        }
    }

    /// Whether this code may stand beside the basic reply `code`: RFC 3463 has the
    /// classes 2, 4 and 5, and the class must be the reply's (no enhanced codes for 3xx).
    /// Like Postfix's SMTP client, the relay uses the generic code instead of one that
    /// does not fit.
    pub fn fits(&self, code: u16) -> bool {
        matches!(self.0, 2 | 4 | 5) && u16::from(self.0) == code / 100
    }
}

impl StatusCode {
    /// Appends `class.subject.detail`, as `Display` writes it.
    fn write_to(&self, out: &mut Vec<u8>) {
        push_number(out, u16::from(self.0));
        out.push(b'.');
        push_number(out, self.1);
        out.push(b'.');
        push_number(out, self.2);
    }
}

/// Appends the decimal digits of `n`.
fn push_number(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: StatusCode,
    /// The text lines without the code prefix, joined by `\n`; a line never contains CR
    /// or LF. One string, not one per line: a reply is built, passed on and dropped for
    /// every command of every session, and Postfix's EHLO reply has ten lines.
    text: String,
    /// Whether the enhanced code is written: RFC 2034 leaves it out of the greeting, the
    /// EHLO/HELO reply and 3xx intermediate replies.
    with_status: bool,
}

impl Reply {
    /// A one-line reply; CR/LF and other control characters in `text` are replaced.
    pub fn new(code: u16, status: StatusCode, text: impl Into<String>) -> Self {
        let text = text.into();
        let text = if is_clean_line(&text) {
            text
        } else {
            let mut clean = String::with_capacity(text.len());
            push_sanitized(&mut clean, &text);
            clean
        };
        Reply {
            code,
            status,
            text,
            with_status: true,
        }
    }

    /// A multi-line reply (e.g. EHLO); each line is sanitized.
    pub fn multiline(code: u16, status: StatusCode, lines: Vec<String>) -> Self {
        Reply::from_lines(code, status, lines.iter().map(String::as_str))
    }

    /// A reply of the given lines, each sanitized, in one allocation.
    fn from_lines<'t>(code: u16, status: StatusCode, lines: impl Iterator<Item = &'t str>) -> Self {
        let mut text = String::new();
        for (i, line) in lines.enumerate() {
            if i > 0 {
                text.push('\n');
            }
            push_sanitized(&mut text, line);
        }
        Reply {
            code,
            status,
            text,
            with_status: true,
        }
    }

    /// The same reply without the enhanced code on the wire (greeting, EHLO, 354).
    pub fn without_status(mut self) -> Self {
        self.with_status = false;
        self
    }

    /// Builds a reply from an upstream answer as smtp-proto parsed it: lines joined by
    /// `\n`, enhanced code `[0,0,0]` when the upstream sent none. A line with no text
    /// (`354 ` CRLF) comes with its CR, which is the line end, not text. A missing code,
    /// or one that does not fit the reply ([`StatusCode::fits`]), becomes the generic one.
    /// The usual answer (printable ASCII, short lines) keeps smtp-proto's string as it is.
    pub fn from_upstream(code: u16, esc: [u8; 3], message: String) -> Self {
        let sent = StatusCode(esc[0], u16::from(esc[1]), u16::from(esc[2]));
        let status = if sent.fits(code) {
            sent
        } else {
            StatusCode::generic_for(code)
        };
        if is_clean_text(&message) {
            return Reply {
                code,
                status,
                text: message,
                with_status: true,
            };
        }
        Reply::from_lines(
            code,
            status,
            message
                .split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l)),
        )
    }

    /// The text lines, without the code prefix; at least one (which may be empty).
    pub fn lines(&self) -> impl Iterator<Item = &str> + '_ {
        self.text.split('\n')
    }

    /// The text of all lines joined by a space (for logs).
    pub fn text(&self) -> String {
        self.text.replace('\n', " ")
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (`250-2.0.0 a\r\n250 2.0.0 b\r\n`) to `out`.
    ///
    /// Written digit by digit, not through `write!`: every reply of every session goes
    /// through here, and the formatting machinery cost more than the rest of it.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Split as bytes: reply lines are short, and a byte loop beats a search per line.
        let mut lines = self.text.as_bytes().split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            push_number(out, self.code);
            out.push(if lines.peek().is_none() { b' ' } else { b'-' });
            if self.with_status {
                self.status.write_to(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text())
    }
}

/// Longest text of one reply line: with `NNN-X.YYY.ZZZ ` before it and CRLF after it,
/// a line stays within RFC 5321's 512 octets (§4.5.3.1.5).
const MAX_LINE_TEXT: usize = 512 - 16;

/// Whether `text` can be a reply line as it is: printable ASCII (the usual case, with
/// no control character to look for) that fits in 512 octets.
fn is_clean_line(text: &str) -> bool {
    text.len() <= MAX_LINE_TEXT && text.bytes().all(printable)
}

/// A byte a reply line may carry as it is: printable ASCII, space included.
fn printable(b: u8) -> bool {
    (b' '..0x7f).contains(&b)
}

/// Whether every `\n`-separated line of `text` is clean ([`is_clean_line`]), in one pass.
fn is_clean_text(text: &str) -> bool {
    let mut line = 0;
    for &b in text.as_bytes() {
        if b == b'\n' {
            line = 0;
            continue;
        }
        line += 1;
        if !printable(b) || line > MAX_LINE_TEXT {
            return false;
        }
    }
    true
}

/// Appends `text` with every control character (CR, LF, NUL, …) replaced by a space, so
/// that text from a rule, a template or an upstream can never start a reply line of its
/// own, cut (at a character boundary) so the line fits in 512 octets: a client's 2 KB
/// parameter is never echoed whole.
fn push_sanitized(out: &mut String, text: &str) {
    let mut end = text.len().min(MAX_LINE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    if text.bytes().all(printable) {
        out.push_str(text);
    } else {
        out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
    }
}

/// Shorthand used throughout the session: `reply(250, (2, 0, 0), "Ok")`.
pub fn reply(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::new(code, StatusCode(status.0, status.1, status.2), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut v = Vec::new();
        r.write_to(&mut v);
        String::from_utf8(v).unwrap()
    }

    /// The wire form is written digit by digit: it must say what `Display` says, for
    /// every width of every part (Microsoft's 5.7.606, a detail of five digits).
    #[test]
    fn the_wire_form_carries_the_codes_display_gives() {
        for code in [200, 250, 354, 421, 451, 550, 599] {
            for class in [2, 4, 5, 255] {
                for part in [0, 7, 10, 99, 100, 606, 999, 65535] {
                    let status = StatusCode(class, part, 65535 - part);
                    let r = Reply::new(code, status, "text");
                    assert_eq!(wire(&r), format!("{code} {status} text\r\n"));
                    let bare = Reply::new(code, status, "").without_status();
                    assert_eq!(wire(&bare), format!("{code} \r\n"));
                }
            }
        }
    }

    /// Printable text takes the fast path; anything else is cleaned as before, on every
    /// way a reply is built.
    #[test]
    fn control_characters_are_replaced_on_either_path() {
        let cleaned = |text: &str| {
            let mut out = String::new();
            push_sanitized(&mut out, text);
            for built in [
                Reply::new(250, StatusCode(2, 0, 0), text),
                Reply::multiline(250, StatusCode(2, 0, 0), vec![text.to_owned()]),
                Reply::from_upstream(250, [2, 0, 0], text.to_owned()),
            ] {
                assert_eq!(
                    built.lines().collect::<Vec<_>>(),
                    [out.as_str()],
                    "{text:?}"
                );
            }
            out
        };
        assert_eq!(cleaned("plain text ~"), "plain text ~");
        assert_eq!(cleaned("a\x7fb\tc"), "a b c");
        assert_eq!(cleaned("caf\u{e9} \u{85}x"), "caf\u{e9}  x");
        let long = "é".repeat(400);
        assert!(cleaned(&long).len() <= MAX_LINE_TEXT);
        let ascii = "a".repeat(600);
        assert_eq!(cleaned(&ascii).len(), MAX_LINE_TEXT);
    }

    #[test]
    fn single_line_has_enhanced_code() {
        assert_eq!(wire(&reply(250, (2, 1, 0), "Ok")), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn multiline_uses_dash_continuations() {
        let r = Reply::multiline(
            250,
            StatusCode(2, 0, 0),
            vec!["mx".into(), "PIPELINING".into()],
        );
        assert_eq!(wire(&r), "250-2.0.0 mx\r\n250 2.0.0 PIPELINING\r\n");
    }

    #[test]
    fn greeting_style_reply_has_no_enhanced_code() {
        let r = Reply::multiline(
            250,
            StatusCode(2, 0, 0),
            vec!["mx".into(), "SIZE 10".into()],
        )
        .without_status();
        assert_eq!(wire(&r), "250-mx\r\n250 SIZE 10\r\n");
    }

    #[test]
    fn crlf_in_text_cannot_inject_a_line() {
        let r = reply(550, (5, 7, 1), "no\r\n250 2.0.0 fake");
        assert_eq!(wire(&r), "550 5.7.1 no  250 2.0.0 fake\r\n");
    }

    #[test]
    fn every_line_fits_in_512_octets() {
        let r = reply(
            501,
            (5, 5, 4),
            format!("Error: invalid parameter {}", "é".repeat(2000)),
        );
        let w = wire(&r);
        assert!(w.len() <= 512, "{}", w.len());
        assert!(w.ends_with("\r\n"));
        let r = Reply::multiline(250, StatusCode(2, 0, 0), vec!["x".repeat(600); 3]);
        assert!(wire(&r).split("\r\n").all(|l| l.len() <= 510));
    }

    #[test]
    fn upstream_without_enhanced_code_gets_generic_one() {
        let r = Reply::from_upstream(451, [0, 0, 0], "try later\nreally".into());
        assert_eq!(wire(&r), "451-4.0.0 try later\r\n451 4.0.0 really\r\n");
        let r = Reply::from_upstream(550, [5, 1, 1], "User unknown".into());
        assert_eq!(wire(&r), "550 5.1.1 User unknown\r\n");
    }
}
