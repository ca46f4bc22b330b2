//! The milter wire format (`milter::codec::FrameDecoder`, `codec::encode`) and the
//! validation of a milter's SMTP reply (`milter::protocol::ReplyCode::parse`).
//!
//! Properties:
//! - frames written with `encode` decode back to the same frames however the bytes are
//!   cut into reads;
//! - arbitrary bytes never panic, give the same frames or error whatever the reads, and
//!   the decoder never asks for more input while holding a whole frame's worth beyond
//!   its cap (the client would buffer without bound); no frame exceeds the cap;
//! - a reply that validates has a 4xx or 5xx code and an enhanced code (if any) of its
//!   class; written back as a milter would send it (`%` doubled, CRLF
//!   between lines, the enhanced code on each line), validates to the same reply, and
//!   its client reply (`to_reply`) keeps every wire line within 512 octets.
#![no_main]

#[path = "common.rs"]
mod common;

use common::{chunks, sizes_and_payload};
use libfuzzer_sys::fuzz_target;
use mxguard::milter::codec::{CodecError, DEFAULT_MAX_FRAME, Frame, FrameDecoder, encode};
use mxguard::milter::protocol::ReplyCode;

fuzz_target!(|data: &[u8]| {
    let (sizes, payload) = sizes_and_payload(data);
    let small_cap = 1 + sizes.first().copied().unwrap_or(16) as usize;
    for max in [DEFAULT_MAX_FRAME, small_cap] {
        let one = decode(&[payload], max);
        let many = decode(&chunks(payload, sizes), max);
        assert_eq!(many, one, "reads changed the decoding");
        if let Ok(frames) = &one {
            assert_eq!(decode(&[&wire(frames)], max).as_ref(), Ok(frames));
        }
    }
    // The payload read as frames to send: (code, data) pieces cut at the sizes.
    let frames: Vec<Frame> = chunks(payload, sizes)
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| Frame {
            code: p[0],
            data: p[1..].to_vec(),
        })
        .collect();
    let bytes = wire(&frames);
    let cut: Vec<u8> = sizes.iter().rev().copied().collect();
    assert_eq!(decode(&chunks(&bytes, &cut), DEFAULT_MAX_FRAME), Ok(frames));

    check_reply_code(payload);
});

fn wire(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        encode(&mut out, f.code, &[&f.data]).expect("small frames encode");
    }
    out
}

/// Feeds `reads` one by one, taking frames after each, as the milter client does.
fn decode(reads: &[&[u8]], max: usize) -> Result<Vec<Frame>, CodecError> {
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for read in reads {
        d.feed(read);
        loop {
            match d.next_frame()? {
                Some(f) => {
                    assert!(
                        f.data.len() < max,
                        "a frame of {} over the cap {max}",
                        f.data.len() + 1
                    );
                    frames.push(f);
                }
                None => {
                    // A frame's worth past the cap, or more than the 80 octets of text
                    // shown when the peer is not a milter, is never waited on.
                    let held = d.pending().len();
                    let bound = (4 + max).max(80);
                    assert!(
                        held < bound,
                        "waiting for more while holding {held} bytes (cap {max})"
                    );
                    break;
                }
            }
        }
    }
    Ok(frames)
}

fn check_reply_code(data: &[u8]) {
    let Ok(rc) = ReplyCode::parse(data) else {
        return;
    };
    // Postfix's rule: a milter may only refuse, and the enhanced code is of that class.
    assert!((400..600).contains(&rc.code), "{rc:?}");
    if let Some(s) = rc.status {
        assert_eq!(u16::from(s.0), rc.code / 100, "{rc:?}");
    }
    let mut text = String::new();
    for (i, line) in rc.lines.iter().enumerate() {
        let last = i + 1 == rc.lines.len();
        text.push_str(&rc.code.to_string());
        text.push(if last { ' ' } else { '-' });
        if let Some(s) = rc.status {
            text.push_str(&format!("{s} "));
        }
        text.push_str(&line.replace('%', "%%"));
        if !last {
            text.push_str("\r\n");
        }
    }
    text.push('\0');
    let again = ReplyCode::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("{rc:?} written as {text:?} fails: {e}"));
    assert_eq!(again, rc, "{text:?}");
    let mut out = Vec::new();
    rc.to_reply().write_to(&mut out);
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            line.len() + 1 <= 512,
            "reply line of {} octets",
            line.len() + 1
        );
    }
}
