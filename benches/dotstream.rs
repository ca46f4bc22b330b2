//! The DATA decoder and encoder on message-like content: median time per message and
//! throughput, for 1 KiB and 100 KiB messages of ordinary text lines (with blank lines
//! between paragraphs, as mail has) and for the same text with a dot-stuffed line every
//! few lines (the slow path).
//!
//! Run: `cargo bench --bench dotstream`. Timings are this machine's; compare two builds
//! in the same run of the machine, never against a figure from another day.

use std::time::Instant;

use mxguard::dotstream::{Decoder, Encoder, encode_all};

/// Text lines of 60–78 characters, a blank line after every eighth, a line starting
/// with a dot every `dot_every` lines (0: never); CRLF line ends.
fn message(size: usize, dot_every: usize) -> Vec<u8> {
    let words = [
        "mail",
        "relay",
        "policy",
        "header",
        "the",
        "of",
        "transaction",
        "a",
    ];
    let mut out = Vec::with_capacity(size + 100);
    let mut line = 0usize;
    let mut x = 7usize;
    while out.len() < size {
        if dot_every > 0 && line % dot_every == dot_every - 1 {
            out.push(b'.');
        }
        let width = 60 + line % 19;
        let start = out.len();
        while out.len() - start < width {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(words[(x >> 16) % words.len()].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(b"\r\n");
        if line % 8 == 7 {
            out.extend_from_slice(b"\r\n");
        }
        line += 1;
    }
    out
}

fn median_ns(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[rounds / 2]
}

fn main() {
    for (size, dot_every) in [(1024, 0), (100 * 1024, 0), (100 * 1024, 5)] {
        let content = message(size, dot_every);
        let data = encode_all(&content);
        let mut out = Vec::with_capacity(data.len());
        let rounds = if size > 10_000 { 2_000 } else { 50_000 };
        let decode = median_ns(rounds, || {
            out.clear();
            let mut d = Decoder::new(false);
            let used = d.decode(&data, &mut out);
            assert!(d.is_done() && used == data.len());
        });
        assert_eq!(out, content);
        let encode = median_ns(rounds, || {
            out.clear();
            let mut e = Encoder::new();
            e.encode(&content, &mut out);
            e.finish(&mut out);
        });
        assert_eq!(out, data);
        let verbatim = median_ns(rounds, || {
            let e = Encoder::new();
            std::hint::black_box(e.verbatim_len(&content));
        });
        let mbps = |ns: f64| size as f64 / ns * 1e3;
        println!(
            "{:>6} B, dot line every {:>2}: decode {:>8.0} ns ({:>5.0} MB/s), encode {:>8.0} ns ({:>5.0} MB/s), verbatim scan {:>8.0} ns ({:>5.0} MB/s)",
            size,
            dot_every,
            decode,
            mbps(decode),
            encode,
            mbps(encode),
            verbatim,
            mbps(verbatim)
        );
    }
}
