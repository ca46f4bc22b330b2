//! Where the header section ends, found while the message is still arriving.
//!
//! The session enforces `max_header_size` before the whole message is in: it feeds each
//! decoded chunk here and stops counting once the empty line has gone by. Sans-IO: bytes
//! in, a position out, so the same scanner serves DATA and BDAT and any chunking.

/// Finds the end of the header section in canonical message bytes (CRLF line ends,
/// already dot-unstuffed) fed in chunks of any size.
///
/// The section ends with the first empty line, that is at the first `CRLF CRLF`, or at
/// a `CRLF` that opens the message (a message without header fields). Bare CR or LF never
/// end a line here, exactly as in [`super::HeaderIndex`], so the two always agree on the
/// body offset.
#[derive(Debug, Clone)]
pub struct HeaderScan {
    /// How much of `CRLF CRLF` has been seen (0 to 4); starts at 2, as if a line had
    /// just ended before the first byte.
    matched: u8,
    bytes: u64,
}

impl Default for HeaderScan {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderScan {
    pub fn new() -> Self {
        HeaderScan {
            matched: 2,
            bytes: 0,
        }
    }

    /// Feeds the next bytes of the message. Returns `Some(n)` when the header section
    /// ended inside `chunk`: its first `n` bytes were the rest of the section (empty line
    /// included) and the body starts at `chunk[n..]`. Once done, further bytes are ignored.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        if self.is_done() {
            return None;
        }
        let mut i = 0;
        while i < chunk.len() {
            if self.matched == 0 {
                // Nothing pending: only a CR can start the end marker.
                match memchr::memchr(b'\r', &chunk[i..]) {
                    Some(skip) => i += skip,
                    None => break,
                }
            }
            self.matched = step(self.matched, chunk[i]);
            i += 1;
            if self.matched == 4 {
                self.bytes += i as u64;
                return Some(i);
            }
        }
        self.bytes += chunk.len() as u64;
        None
    }

    /// Whether the empty line ending the header section has been seen.
    pub fn is_done(&self) -> bool {
        self.matched == 4
    }

    /// Header bytes seen so far: once done, the size of the whole section including its
    /// empty line; before that, every byte fed (what `max_header_size` bounds).
    pub fn header_bytes(&self) -> u64 {
        self.bytes
    }
}

/// One byte of progress towards `CRLF CRLF` (state 2 means "at the start of a line").
fn step(matched: u8, b: u8) -> u8 {
    match (matched, b) {
        (0 | 2, b'\r') => matched + 1,
        (1 | 3, b'\n') => matched + 1,
        (_, b'\r') => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `msg` split at `cuts` and returns (done, header bytes, body start within msg).
    fn scan_split(msg: &[u8], cuts: &[usize]) -> (bool, u64, Option<usize>) {
        let mut s = HeaderScan::new();
        let mut body = None;
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&msg.len())) {
            if let Some(n) = s.feed(&msg[from..to]) {
                assert!(body.is_none(), "ended twice");
                body = Some(from + n);
            }
            from = to;
        }
        (s.is_done(), s.header_bytes(), body)
    }

    #[test]
    fn header_scan_finds_end_across_chunks() {
        let msg = b"Subject: a\r\nX: b\r\n\r\nbody\r\n";
        for cut in 0..=msg.len() {
            assert_eq!(scan_split(msg, &[cut]), (true, 20, Some(20)), "cut {cut}");
        }
        let mut s = HeaderScan::new();
        assert_eq!(s.feed(b"\r\nbody only"), Some(2));
        assert!(s.is_done());
        assert_eq!(s.header_bytes(), 2);
        // Further bytes change nothing.
        assert_eq!(s.feed(b"\r\n\r\n"), None);
        assert_eq!(s.header_bytes(), 2);
    }

    #[test]
    fn every_split_into_three_agrees_with_one_pass() {
        let cases: &[&[u8]] = &[
            b"A: 1\r\n\r\n",
            b"A: 1\r\n \r\nB: 2\r\n\r\nbody\r\n\r\n",
            b"A: 1\r\r\n\r\nB",
            b"A: 1\n\nB: 2\r\n\r\n",
            b"A: 1\r\n\r\r\n\r\n",
            b"\r\n\r\n",
            b"A: 1\r\nno empty line\r\n",
            b"",
            b"\r",
            b"\n\r\n",
        ];
        for msg in cases {
            let whole = scan_split(msg, &[]);
            for a in 0..=msg.len() {
                for b in a..=msg.len() {
                    assert_eq!(scan_split(msg, &[a, b]), whole, "{msg:?} cut {a} {b}");
                }
            }
            let bytewise: Vec<usize> = (1..msg.len()).collect();
            assert_eq!(scan_split(msg, &bytewise), whole, "{msg:?} byte by byte");
        }
    }

    #[test]
    fn only_crlf_pairs_end_the_section() {
        assert_eq!(scan_split(b"A: 1\r\n\r\nB", &[]), (true, 8, Some(8)));
        assert_eq!(scan_split(b"A: 1\n\nB", &[]), (false, 7, None));
        assert_eq!(scan_split(b"A: 1\r\r\nB", &[]), (false, 8, None));
        assert_eq!(scan_split(b"A: 1\r\n \r\nB", &[]), (false, 10, None));
        assert_eq!(scan_split(b"\n\r\nB", &[]), (false, 4, None));
    }
}
