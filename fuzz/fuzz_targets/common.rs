//! Helpers shared by the targets (each includes this file with `#[path]`).
#![allow(dead_code)]

/// Splits a fuzz input into chunk sizes and the payload: the first byte says how many
/// size bytes follow (0 to 7), each a chunk length (0 taken as 1, cycled).
pub fn sizes_and_payload(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = (n as usize % 8).min(rest.len());
    rest.split_at(n)
}

/// `payload` cut into pieces of the given sizes (one piece when there are none).
pub fn chunks<'a>(payload: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (sizes[i % sizes.len()] as usize).max(1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        out.push(piece);
        rest = tail;
        i += 1;
    }
    out
}

/// Bare CR and bare LF turned into CRLF; CRLF and everything else kept. Written here
/// independently of mxguard's decoders, as the reference they are checked against.
pub fn normalize_line_ends(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// What a naive reading of `input` finds: a CR not followed by LF, a LF not preceded
/// by CR, a NUL.
pub fn naive_anomalies(input: &[u8]) -> (bool, bool, bool) {
    let mut bare_lf = false;
    let mut bare_cr = false;
    for (i, &b) in input.iter().enumerate() {
        if b == b'\n' && (i == 0 || input[i - 1] != b'\r') {
            bare_lf = true;
        }
        if b == b'\r' && input.get(i + 1) != Some(&b'\n') {
            bare_cr = true;
        }
    }
    (bare_lf, bare_cr, input.contains(&0))
}

/// Position of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
