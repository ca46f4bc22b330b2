//! The milter wire format, without I/O: every packet is a 4-byte big-endian length, one
//! command byte and `length - 1` data bytes.
//!
//! The decoder takes bytes in any chunks and yields whole frames. It refuses frames over a
//! size cap before buffering them, and when the refused "length" is really text — clamd's
//! `UNKNOWN COMMAND`, an SMTP banner, an HTTP error page — it says the peer is not a milter
//! and shows the text, instead of reporting a 1.4 GB frame (what pointing a milter client
//! at clamd's port looks like: `UNKN` read as a length is 1,431,194,446).

use std::fmt::Write as _;

/// Frames larger than this are refused by default. A milter's largest reply is a body
/// replacement chunk, which libmilter sends in pieces of at most 65,535 bytes.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// One packet: its command (or reply) code and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub code: u8,
    pub data: Vec<u8>,
}

/// Why the byte stream is not a valid sequence of milter frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The first bytes of a frame are printable text: the peer speaks a text protocol.
    #[error("peer is not a milter: it sent text {0:?}")]
    NotAMilter(String),
    #[error("frame of {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame length 0 (a frame has at least its code byte)")]
    Empty,
    #[error("frame of {0} bytes cannot be encoded (the length field has 32 bits)")]
    Unencodable(usize),
}

/// Incremental frame decoder: [`feed`](FrameDecoder::feed) it what was read, then take
/// frames with [`next_frame`](FrameDecoder::next_frame) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Offset of the first unconsumed byte in `buf` (compacted on the next feed).
    start: usize,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed. After an error the
    /// stream is unusable (the frame boundary is lost).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        let pending = self.pending();
        if pending.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len == 0 || len > self.max {
            if let Some(text) = text_prefix(pending) {
                // Wait for the whole first line, so the error shows it whatever the
                // read boundaries (the driver asks `pending_text` on close or timeout).
                let line_done = pending.iter().any(|b| matches!(b, b'\r' | b'\n' | 0));
                if !line_done && pending.len() < TEXT_SHOWN {
                    return Ok(None);
                }
                return Err(CodecError::NotAMilter(text));
            }
            return Err(if len == 0 {
                CodecError::Empty
            } else {
                CodecError::TooLarge { len, max: self.max }
            });
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let frame = Frame {
            code: pending[4],
            data: pending[5..4 + len].to_vec(),
        };
        self.start += 4 + len;
        Ok(Some(frame))
    }

    /// When the peer closed with a partial frame that is text (e.g. `OK\n`), that text.
    pub fn pending_text(&self) -> Option<String> {
        text_prefix(self.pending())
    }
}

/// How much of a text reply an error shows.
const TEXT_SHOWN: usize = 80;

/// The start of `bytes` as a short quotable string when it is text: its first (up to
/// four) bytes printable ASCII. Shown up to the first line end, at most [`TEXT_SHOWN`].
fn text_prefix(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(4)];
    let printable = |b: &u8| b.is_ascii_graphic() || *b == b' ';
    if head.is_empty() || !head.iter().all(|b| printable(b) || b"\r\n\t".contains(b)) {
        return None;
    }
    if !head.iter().any(printable) {
        return None;
    }
    let line_end = bytes
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n' || *b == 0)
        .unwrap_or(bytes.len());
    let mut out = String::new();
    for &b in bytes[..line_end].iter().take(TEXT_SHOWN) {
        if printable(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Some(out)
}

/// Appends one frame whose data is the concatenation of `parts`.
pub fn encode(out: &mut Vec<u8>, code: u8, parts: &[&[u8]]) -> Result<(), CodecError> {
    let data_len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(data_len + 1).map_err(|_| CodecError::Unencodable(data_len + 1))?;
    out.reserve(4 + len as usize);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(code);
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (code, data) in frames {
            encode(&mut out, *code, &[data]).unwrap();
        }
        out
    }

    /// Decodes `input` split into two chunks at every position and byte by byte; every
    /// way must give the same frames (or the same error).
    fn decode_every_split(input: &[u8], max: usize) -> Result<Vec<Frame>, CodecError> {
        let one_shot = {
            let mut d = FrameDecoder::new(max);
            d.feed(input);
            drain(&mut d)
        };
        for cut in 0..=input.len() {
            let mut d = FrameDecoder::new(max);
            d.feed(&input[..cut]);
            let mut got = match drain(&mut d) {
                Ok(f) => f,
                Err(e) => {
                    assert_eq!(Err(e), one_shot, "split at {cut}");
                    continue;
                }
            };
            d.feed(&input[cut..]);
            let rest = drain(&mut d);
            let all = rest.map(|r| {
                got.extend(r);
                got
            });
            assert_eq!(all, one_shot, "split at {cut}");
        }
        let mut d = FrameDecoder::new(max);
        let mut got = Vec::new();
        let mut err = None;
        for b in input {
            d.feed(std::slice::from_ref(b));
            match drain(&mut d) {
                Ok(f) => got.extend(f),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let bytewise = match err {
            Some(e) => Err(e),
            None => Ok(got),
        };
        assert_eq!(bytewise, one_shot, "byte by byte");
        one_shot
    }

    fn drain(d: &mut FrameDecoder) -> Result<Vec<Frame>, CodecError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_survive_every_split() {
        let input = wire(&[
            (b'c', b""),
            (b'h', b"X-Virus-Status\0Clean\0"),
            (b'b', &[0u8, 1, 2, 255, b'\r', b'\n']),
            (b'a', b""),
        ]);
        let frames = decode_every_split(&input, DEFAULT_MAX_FRAME).unwrap();
        let codes: Vec<u8> = frames.iter().map(|f| f.code).collect();
        assert_eq!(codes, b"chba");
        assert_eq!(frames[1].data, b"X-Virus-Status\0Clean\0");
        assert_eq!(frames[2].data, [0u8, 1, 2, 255, b'\r', b'\n']);
    }

    #[test]
    fn encode_writes_length_code_and_parts() {
        let mut out = Vec::new();
        encode(&mut out, b'O', &[&6u32.to_be_bytes(), &[0, 0, 1, 0x13]]).unwrap();
        assert_eq!(out, [0, 0, 0, 9, b'O', 0, 0, 0, 6, 0, 0, 1, 0x13]);
    }

    #[test]
    fn clamd_text_is_not_a_milter() {
        let err = decode_every_split(b"UNKNOWN COMMAND\n", DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err, CodecError::NotAMilter("UNKNOWN COMMAND".into()));
        assert!(err.to_string().contains("peer is not a milter"));
    }

    #[test]
    fn smtp_banner_and_http_are_not_milters() {
        for (text, shown) in [
            (&b"220 mx.example ESMTP\r\n"[..], "220 mx.example ESMTP"),
            (
                b"HTTP/1.1 400 Bad Request\r\n\r\n",
                "HTTP/1.1 400 Bad Request",
            ),
            (b"-ERR unknown command\r\n", "-ERR unknown command"),
        ] {
            let err = decode_every_split(text, DEFAULT_MAX_FRAME).unwrap_err();
            assert_eq!(err, CodecError::NotAMilter(shown.into()));
        }
    }

    #[test]
    fn binary_oversize_is_too_large_not_text() {
        let mut input = vec![0x7f, 0, 0, 0];
        input.extend_from_slice(&[0u8; 10]);
        let err = decode_every_split(&input, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(
            err,
            CodecError::TooLarge {
                len: 0x7f00_0000,
                max: DEFAULT_MAX_FRAME
            }
        );
    }

    #[test]
    fn the_cap_applies_before_buffering() {
        let mut d = FrameDecoder::new(16);
        d.feed(&[0, 0, 0, 17, b'b']);
        assert_eq!(
            d.next_frame(),
            Err(CodecError::TooLarge { len: 17, max: 16 })
        );
        let ok = wire(&[(b'b', &[7u8; 15])]);
        assert_eq!(decode_every_split(&ok, 16).unwrap()[0].data.len(), 15);
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(
            decode_every_split(&[0, 0, 0, 0, 1], 100),
            Err(CodecError::Empty)
        );
    }

    #[test]
    fn partial_text_is_recognised_when_the_peer_closes() {
        let mut d = FrameDecoder::new(100);
        d.feed(b"OK\n");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.pending_text().as_deref(), Some("OK"));
        let mut d = FrameDecoder::new(100);
        d.feed(&[0, 0, 1]);
        assert_eq!(d.pending_text(), None);
    }

    #[test]
    fn text_that_parses_as_a_small_length_is_not_flagged() {
        // Three NULs then a printable byte is a valid length prefix, not text.
        let mut d = FrameDecoder::new(100);
        d.feed(&[0, 0, 0, b'A']);
        assert_eq!(d.next_frame(), Ok(None));
    }
}
