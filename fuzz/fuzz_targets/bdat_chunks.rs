//! BDAT content as the session receives it: `dotstream::RawScanner` over each chunk
//! (a chunk may end between CR and LF), then `message::HeaderScan` over what it yields
//! to find the end of the header section while the message arrives.
//!
//! Properties, for any bytes cut into any chunks: the scanner's output and anomalies
//! are those of the message in one chunk; kept as they are, the bytes come out
//! unchanged and the anomalies are what a naive scan finds; normalised, bare CR and LF
//! become CRLF and nothing else changes; the header scan, fed the chunks, finds the
//! same body offset as `HeaderIndex::build` on the whole message.
#![no_main]

#[path = "common.rs"]
mod common;

use common::{chunks, naive_anomalies, normalize_line_ends, sizes_and_payload};
use libfuzzer_sys::fuzz_target;
use mxguard::dotstream::{Anomalies, RawScanner};
use mxguard::message::{HeaderIndex, HeaderScan};

fuzz_target!(|data: &[u8]| {
    let (sizes, message) = sizes_and_payload(data);
    let pieces = chunks(message, sizes);
    for normalize in [false, true] {
        let (one, one_anomalies, _) = scan(&[message], normalize);
        let (many, many_anomalies, body_offset) = scan(&pieces, normalize);
        assert_eq!(many, one, "chunking changed the content");
        assert_eq!(
            many_anomalies, one_anomalies,
            "chunking changed the anomalies"
        );
        let (bare_lf, bare_cr, nul) = naive_anomalies(message);
        assert_eq!(
            (
                one_anomalies.bare_lf,
                one_anomalies.bare_cr,
                one_anomalies.nul
            ),
            (bare_lf, bare_cr, nul)
        );
        if normalize {
            assert_eq!(one, normalize_line_ends(message));
        } else {
            assert_eq!(one, message);
        }
        assert_eq!(
            body_offset,
            HeaderIndex::build(&many).body_offset(),
            "the header scan and the header index disagree on the body offset"
        );
    }
});

/// Scans `pieces` as consecutive BDAT chunks; returns the content, the anomalies and
/// where the header scan saw the body start.
fn scan(pieces: &[&[u8]], normalize: bool) -> (Vec<u8>, Anomalies, Option<usize>) {
    let mut scanner = RawScanner::new(normalize);
    let mut headers = HeaderScan::new();
    let mut content = Vec::new();
    let mut body_offset = None;
    let mut decoded = Vec::new();
    let mut feed = |decoded: &[u8], content: &mut Vec<u8>| {
        if let Some(n) = headers.feed(decoded) {
            assert!(body_offset.is_none(), "the header section ended twice");
            body_offset = Some(content.len() + n);
        }
        content.extend_from_slice(decoded);
    };
    for piece in pieces {
        decoded.clear();
        scanner.scan(piece, &mut decoded);
        feed(&decoded, &mut content);
    }
    decoded.clear();
    scanner.finish(&mut decoded);
    feed(&decoded, &mut content);
    (content, scanner.anomalies(), body_offset)
}
