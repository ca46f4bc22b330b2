//! The DATA wire format: `dotstream::Decoder` (the session, receiving) and
//! `dotstream::Encoder` (the relay, sending; the relay feeds it the message in pieces of
//! whatever size `MessageReader` yields).
//!
//! Properties, for any bytes and any chunking:
//! - the decoder ends DATA exactly where a naive scan finds the first CRLF.CRLF (counting
//!   the CRLF of the DATA command before the first byte), and nowhere if there is none;
//! - what it decodes is the naive un-stuffing of the lines before that point (dots at
//!   the start of a CRLF line dropped), bare line ends normalised or kept as asked, and
//!   its anomalies are what a naive scan finds;
//! - chunking changes nothing (output, end position, anomalies);
//! - the encoder's output has no bare CR or LF, ends with exactly one terminator, does
//!   not depend on chunking, and decodes to the input (bare line ends as CRLF, a final
//!   CRLF added when missing).
#![no_main]

#[path = "common.rs"]
mod common;

use common::{chunks, find, naive_anomalies, normalize_line_ends, sizes_and_payload};
use libfuzzer_sys::fuzz_target;
use mxguard::dotstream::{Anomalies, Decoder, Encoder, encode_all};

fuzz_target!(|data: &[u8]| {
    let (sizes, payload) = sizes_and_payload(data);
    for normalize in [false, true] {
        check_decoder(payload, sizes, normalize);
    }
    check_encoder(payload, sizes);
});

/// Decodes `pieces` as the session does: stops feeding once DATA has ended.
fn decode(pieces: &[&[u8]], normalize: bool) -> (Vec<u8>, bool, usize, Anomalies) {
    let mut d = Decoder::new(normalize);
    let mut out = Vec::new();
    let mut used = 0;
    for piece in pieces {
        let n = d.decode(piece, &mut out);
        assert!(n <= piece.len());
        used += n;
        if d.is_done() {
            break;
        }
        assert_eq!(n, piece.len(), "stopped early without the terminator");
    }
    (out, d.is_done(), used, d.anomalies())
}

/// Where DATA ends by a naive scan: just after the first CRLF.CRLF of CRLF + input.
fn naive_end(input: &[u8]) -> Option<usize> {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    find(&framed, b"\r\n.\r\n").map(|p| p + 5 - 2)
}

/// The content before the terminator with the leading dot of every CRLF line removed.
fn naive_unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        if !(at_line_start && b == b'.') {
            out.push(b);
        }
        at_line_start = b == b'\n' && i > 0 && content[i - 1] == b'\r';
        i += 1;
    }
    out
}

fn check_decoder(input: &[u8], sizes: &[u8], normalize: bool) {
    let whole = decode(&[input], normalize);
    let (out, done, used, anomalies) = &whole;
    match naive_end(input) {
        Some(end) => {
            assert!(*done, "CRLF.CRLF at {end} did not end DATA");
            assert_eq!(
                *used, end,
                "DATA ended at {used}, the terminator ends at {end}"
            );
        }
        None => {
            assert!(!*done, "DATA ended at {used} without CRLF.CRLF");
            assert_eq!(*used, input.len());
        }
    }
    // The content: everything before the ".\r\n" of the terminator.
    let content = if *done { &input[..used - 3] } else { input };
    let mut expected = naive_unstuff(content);
    // A CR at the very end of unterminated input is still waiting for its LF.
    let pending_cr = !*done && expected.last() == Some(&b'\r');
    if pending_cr {
        expected.pop();
    }
    let expected_anomalies = naive_anomalies(&expected);
    if normalize {
        expected = normalize_line_ends(&expected);
    }
    assert_eq!(
        out, &expected,
        "decoded content differs from the naive un-stuffing"
    );
    assert_eq!(
        (anomalies.bare_lf, anomalies.bare_cr, anomalies.nul),
        expected_anomalies,
        "anomalies"
    );
    let pieces = chunks(input, sizes);
    assert_eq!(
        decode(&pieces, normalize),
        whole,
        "chunking changed the result"
    );
    if normalize {
        assert!(Decoder::new(true).decode_in_place(&mut input.to_vec()).is_none());
    } else {
        let (out, done, used, anomalies, rest, fed) = decode_in_place(&pieces);
        assert_eq!(
            (&out[PRIOR.len()..], done, used, anomalies),
            (&whole.0[..], whole.1, whole.2, whole.3),
            "decoding in place differs"
        );
        assert_eq!(out[..PRIOR.len()], *PRIOR, "decoding in place wrote before its bytes");
        assert_eq!(rest, &input[used..fed], "the bytes after the terminator");
    }
}

/// What the body holds before the wire bytes read into it.
const PRIOR: &[u8] = b"decoded before";

/// Decodes `pieces` as the session does when it reads DATA content straight into the
/// body: each piece appended to it and decoded where it lies; also the bytes after the
/// terminator, which go back to the connection, and how many bytes were fed.
fn decode_in_place(pieces: &[&[u8]]) -> (Vec<u8>, bool, usize, Anomalies, Vec<u8>, usize) {
    let mut d = Decoder::new(false);
    let mut body = PRIOR.to_vec();
    let (mut used, mut rest, mut fed) = (0, Vec::new(), 0);
    for piece in pieces {
        fed += piece.len();
        let from = body.len();
        body.extend_from_slice(piece);
        // As the session does: in place when the decoder can, else from a copy.
        let n = if d.can_decode_in_place() {
            let (written, n) = d.decode_in_place(&mut body[from..]).expect("it can");
            assert!(written <= n && n <= piece.len());
            rest = body[from + n..].to_vec();
            body.truncate(from + written);
            n
        } else {
            assert!(d.decode_in_place(&mut body[from..]).is_none());
            let wire = body.split_off(from);
            let n = d.decode(&wire, &mut body);
            rest = wire[n..].to_vec();
            n
        };
        used += n;
        if d.is_done() {
            break;
        }
        assert_eq!(n, piece.len(), "stopped early without the terminator");
    }
    (body, d.is_done(), used, d.anomalies(), rest, fed)
}

fn check_encoder(message: &[u8], sizes: &[u8]) {
    let wire = encode_all(message);
    let mut e = Encoder::new();
    let mut chunked = Vec::new();
    for piece in chunks(message, sizes) {
        e.encode(piece, &mut chunked);
    }
    e.finish(&mut chunked);
    assert_eq!(chunked, wire, "chunking changed the encoding");

    let (bare_lf, bare_cr, _) = naive_anomalies(&wire);
    assert!(!bare_lf && !bare_cr, "bare line end in the encoding");
    assert_eq!(
        naive_end(&wire),
        Some(wire.len()),
        "the encoding must end with its only terminator"
    );
    let (out, done, used, anomalies) = decode(&[&wire], false);
    assert!(done && used == wire.len());
    assert!(!anomalies.bare_lf && !anomalies.bare_cr);
    assert_eq!(anomalies.nul, message.contains(&0));
    let mut expected = normalize_line_ends(message);
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(out, expected, "decode(encode(m)) is not m");
}
