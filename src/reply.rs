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
    /// Text lines without the code prefix; never contain CR or LF.
    lines: Vec<String>,
    /// Whether the enhanced code is written: RFC 2034 leaves it out of the greeting, the
    /// EHLO/HELO reply and 3xx intermediate replies.
    with_status: bool,
}

impl Reply {
    /// A one-line reply; CR/LF and other control characters in `text` are replaced.
    pub fn new(code: u16, status: StatusCode, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            lines: vec![sanitize_line(&text.into())],
            with_status: true,
        }
    }

    /// A multi-line reply (e.g. EHLO); each line is sanitized.
    pub fn multiline(code: u16, status: StatusCode, lines: Vec<String>) -> Self {
        Reply::from_lines(code, status, lines.iter().map(String::as_str))
    }

    /// A reply of the given lines, each sanitized (one allocation per line, none more).
    fn from_lines<'t>(code: u16, status: StatusCode, lines: impl Iterator<Item = &'t str>) -> Self {
        let mut lines: Vec<String> = lines.map(sanitize_line).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply {
            code,
            status,
            lines,
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
    pub fn from_upstream(code: u16, esc: [u8; 3], message: &str) -> Self {
        let sent = StatusCode(esc[0], u16::from(esc[1]), u16::from(esc[2]));
        let status = if sent.fits(code) {
            sent
        } else {
            StatusCode::generic_for(code)
        };
        Reply::from_lines(
            code,
            status,
            message
                .split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l)),
        )
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The text of all lines joined by a space (for logs).
    pub fn text(&self) -> String {
        self.lines.join(" ")
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
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            push_number(out, self.code);
            out.push(if i == last { b' ' } else { b'-' });
            if self.with_status {
                self.status.write_to(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
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

/// Replaces every control character (CR, LF, NUL, …) with a space so that text from a
/// rule, a template or an upstream can never start a reply line of its own, and cuts the
/// text (at a character boundary) so the line fits in 512 octets: a client's 2 KB
/// parameter is never echoed whole.
fn sanitize_line(text: &str) -> String {
    let mut end = text.len().min(MAX_LINE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    // Printable ASCII, the usual case, has no control character to look for.
    if text.bytes().all(|b| (b' '..0x7f).contains(&b)) {
        return text.to_owned();
    }
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        text.to_owned()
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

    /// Printable text takes the fast path; anything else is cleaned as before.
    #[test]
    fn control_characters_are_replaced_on_either_path() {
        assert_eq!(sanitize_line("plain text ~"), "plain text ~");
        assert_eq!(sanitize_line("a\x7fb\tc"), "a b c");
        assert_eq!(sanitize_line("caf\u{e9} \u{85}x"), "caf\u{e9}  x");
        let long = "é".repeat(400);
        assert!(sanitize_line(&long).len() <= MAX_LINE_TEXT);
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
        let r = Reply::from_upstream(451, [0, 0, 0], "try later\nreally");
        assert_eq!(wire(&r), "451-4.0.0 try later\r\n451 4.0.0 really\r\n");
        let r = Reply::from_upstream(550, [5, 1, 1], "User unknown");
        assert_eq!(wire(&r), "550 5.1.1 User unknown\r\n");
    }
}
