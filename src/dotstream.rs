//! The DATA wire format, without I/O: end-of-data recognition and un-stuffing on the way
//! in, re-stuffing on the way out.
//!
//! This is where SMTP smuggling (CVE-2023-51764/5/6) is stopped. DATA ends only at
//! `CRLF.CRLF`; a bare CR, a bare LF or a NUL never takes part in recognising a line or
//! the end of data, and each is reported so the session can refuse the message (or, for
//! trusted networks, normalise the bare line ends to CRLF). The relay never copies client
//! bytes: it re-encodes the canonical message with [`Encoder`], so the upstream sees
//! exactly one message, whatever its own parser's quirks.

/// What the decoder found in the message apart from its content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies {
    pub bare_lf: bool,
    pub bare_cr: bool,
    pub nul: bool,
}

impl Anomalies {
    pub fn any(&self) -> bool {
        self.bare_lf || self.bare_cr || self.nul
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of DATA).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` then CR at the start of a line: a LF here ends DATA.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line: a LF here ends the line.
    MidCr,
    /// `CRLF.CRLF` seen.
    Done,
}

/// Incremental DATA decoder: feed it wire bytes in any chunks; it appends the message
/// (un-stuffed, CRLF line ends) to the output and says when the terminator was seen.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    normalize: bool,
    anomalies: Anomalies,
}

impl Decoder {
    /// `normalize`: turn bare CR and bare LF into CRLF (trusted networks only).
    /// Otherwise they are kept as they are and reported in [`Decoder::anomalies`].
    pub fn new(normalize: bool) -> Self {
        Decoder {
            state: State::LineStart,
            normalize,
            anomalies: Anomalies::default(),
        }
    }

    pub fn anomalies(&self) -> Anomalies {
        self.anomalies
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the next bytes can be decoded where they lie: never when normalising (a
    /// bare LF made CRLF outgrows its place), nor right after a CR whose fate the next
    /// byte decides (the CR, taken in by the last call, would be put out before the first
    /// byte of this one, where there is no room for it).
    pub fn can_decode_in_place(&self) -> bool {
        !self.normalize && !matches!(self.state, State::MidCr | State::DotCr)
    }

    /// Decodes from `input`, appending message bytes to `out`. Returns how many input
    /// bytes were consumed: all of them, or up to and including the terminator (the rest
    /// belongs to the next command).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        self.run(&mut Copying { input, out })
    }

    /// Decodes wire bytes where they lie: the message bytes they hold are moved to the
    /// start of `buf`, and the bytes after the terminator are left where they are, so
    /// content read straight into the message body is never copied out and back (the
    /// decoded form is never longer than the wire form, as long as bare line ends are
    /// kept). Returns how many message bytes are now at the start of `buf` and how many
    /// wire bytes were used; `None`, with nothing done, when
    /// [`can_decode_in_place`](Self::can_decode_in_place) says no.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Option<(usize, usize)> {
        if !self.can_decode_in_place() {
            return None;
        }
        let mut wire = InPlace { buf, written: 0 };
        let used = self.run(&mut wire);
        Some((wire.written, used))
    }

    /// The decoding loop of [`decode`](Self::decode) and
    /// [`decode_in_place`](Self::decode_in_place): runs of plain bytes (and the ordinary
    /// line ends among them) passed on whole, up to the first byte the state machine has
    /// to look at. Returns the wire bytes used.
    fn run(&mut self, wire: &mut impl Wire) -> usize {
        let len = wire.wire().len();
        let mut i = 0;
        while i < len && self.state != State::Done {
            if self.state == State::Mid {
                let run = plain_run(
                    &wire.wire()[i..],
                    |b| matches!(b, b'.' | b'\r' | b'\n' | 0),
                    |s| memchr::memchr3(b'\r', b'\n', 0, s),
                );
                wire.put_wire_run(i, run);
                i += run;
                if i == len {
                    break;
                }
            }
            let b = wire.wire()[i];
            i += 1;
            self.step(b, wire);
        }
        i
    }

    fn step(&mut self, b: u8, out: &mut impl Output) {
        match self.state {
            State::LineStart => match b {
                b'.' => self.state = State::Dot,
                _ => self.content(b, out),
            },
            State::Dot => match b {
                b'\r' => self.state = State::DotCr,
                // A stuffed line: the leading dot is dropped, the rest is content.
                _ => {
                    self.state = State::Mid;
                    self.content(b, out);
                }
            },
            State::DotCr => {
                if b == b'\n' {
                    self.state = State::Done;
                } else {
                    // ".<CR>x": a lone dot was stuffed, then a bare CR inside the line.
                    self.bare_cr(out);
                    self.state = State::Mid;
                    self.content(b, out);
                }
            }
            State::Mid => self.content(b, out),
            State::MidCr => {
                if b == b'\n' {
                    out.put(b"\r\n");
                    self.state = State::LineStart;
                } else {
                    self.bare_cr(out);
                    self.state = State::Mid;
                    self.content(b, out);
                }
            }
            State::Done => {}
        }
    }

    /// A byte inside a line (the state is Mid afterwards unless it is CR).
    fn content(&mut self, b: u8, out: &mut impl Output) {
        match b {
            b'\r' => self.state = State::MidCr,
            b'\n' => {
                self.anomalies.bare_lf = true;
                // A bare LF never starts a line: a following dot is content, not a terminator.
                if self.normalize {
                    out.put(b"\r\n");
                } else {
                    out.put(b"\n");
                }
                self.state = State::Mid;
            }
            0 => {
                self.anomalies.nul = true;
                out.put(&[0]);
                self.state = State::Mid;
            }
            _ => {
                out.put(&[b]);
                self.state = State::Mid;
            }
        }
    }

    fn bare_cr(&mut self, out: &mut impl Output) {
        self.anomalies.bare_cr = true;
        if self.normalize {
            out.put(b"\r\n");
        } else {
            out.put(b"\r");
        }
    }
}

/// Where the decoder's state machine puts message bytes.
trait Output {
    fn put(&mut self, bytes: &[u8]);
}

/// The wire bytes a decoding loop reads, and where it puts the message bytes: appended
/// to a vector ([`Copying`]), or written over the wire bytes already read ([`InPlace`]).
trait Wire: Output {
    fn wire(&self) -> &[u8];
    /// Puts the wire bytes `at..at + len` out as message bytes, as they are.
    fn put_wire_run(&mut self, at: usize, len: usize);
}

/// Wire bytes decoded into a separate vector ([`Decoder::decode`]).
struct Copying<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
}

impl Output for Copying<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}

impl Wire for Copying<'_> {
    #[inline]
    fn wire(&self) -> &[u8] {
        self.input
    }

    #[inline]
    fn put_wire_run(&mut self, at: usize, len: usize) {
        self.out.extend_from_slice(&self.input[at..at + len]);
    }
}

/// The decoded bytes written over the wire bytes already read ([`Decoder::decode_in_place`]):
/// the state machine never puts out more bytes than it has taken in (without normalising),
/// so the writing never overtakes the reading.
struct InPlace<'a> {
    buf: &'a mut [u8],
    written: usize,
}

impl Output for InPlace<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.written..self.written + bytes.len()].copy_from_slice(bytes);
        self.written += bytes.len();
    }
}

impl Wire for InPlace<'_> {
    #[inline]
    fn wire(&self) -> &[u8] {
        self.buf
    }

    #[inline]
    fn put_wire_run(&mut self, at: usize, len: usize) {
        debug_assert!(self.written <= at, "decoded bytes overtook the wire bytes");
        // Until the first stuffed dot the bytes are already where they belong.
        if self.written != at {
            self.buf.copy_within(at..at + len, self.written);
        }
        self.written += len;
    }
}

/// Incremental DATA encoder: canonical message bytes in, dot-stuffed wire bytes out.
#[derive(Debug, Clone)]
pub struct Encoder {
    at_line_start: bool,
    /// The previous chunk ended in CR: its LF (or a bare CR) is decided by the next byte.
    pending_cr: bool,
    written: u64,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            at_line_start: true,
            pending_cr: false,
            written: 0,
        }
    }

    /// Appends the stuffed form of `chunk` to `out`. Every bare CR or LF that is still in
    /// the content (it can only be there if the session chose to relay it) is written as
    /// CRLF, so the upstream's parser never sees a bare line end.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 64 + 2);
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    i += 1;
                }
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    let run = plain_run(
                        &chunk[i..],
                        |b| matches!(b, b'.' | b'\r' | b'\n'),
                        |s| memchr::memchr2(b'\r', b'\n', s),
                    );
                    out.extend_from_slice(&chunk[i..i + run]);
                    i += run;
                    self.at_line_start = false;
                }
            }
        }
        self.written += chunk.len() as u64;
    }

    /// The length of the start of `chunk` that [`encode`](Self::encode) would copy
    /// unchanged from where the encoder stands: no stuffed dot, no line end to rewrite.
    /// A caller may send that much straight from its own buffer (then
    /// [`pass_verbatim`](Self::pass_verbatim)), which spares a copy of every byte of an
    /// ordinary message; a message of ordinary lines is one such run.
    pub fn verbatim_len(&self, chunk: &[u8]) -> usize {
        match chunk.first() {
            None => 0,
            Some(_) if self.pending_cr => 0,
            Some(b'.') if self.at_line_start => 0,
            Some(_) => plain_run(
                chunk,
                |b| matches!(b, b'.' | b'\r' | b'\n'),
                |s| memchr::memchr2(b'\r', b'\n', s),
            ),
        }
    }

    /// Accounts for `run`, a run [`verbatim_len`](Self::verbatim_len) measured, as sent
    /// unchanged by the caller.
    pub fn pass_verbatim(&mut self, run: &[u8]) {
        debug_assert!(run.len() <= self.verbatim_len(run));
        if !run.is_empty() {
            // A verbatim run never ends in a line-end byte (plain_run stops before one).
            self.at_line_start = false;
            self.written += run.len() as u64;
        }
    }

    /// Appends the terminator, preceded by CRLF if the content did not end with one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || (self.written > 0 && !self.at_line_start) {
            out.extend_from_slice(b"\r\n");
        }
        self.pending_cr = false;
        out.extend_from_slice(b".\r\n");
    }
}

/// The length of the run at the start of `input` that both the decoder and the encoder
/// copy unchanged while inside a line: bytes up to the next one `find` stops at, where a
/// CRLF (and any empty lines after it) followed by a byte that needs no attention at a
/// line start (`special`: a dot, a line-end byte, …) belongs to the run too. Without
/// that, each line of a message would leave the fast path twice (for its CR and its LF);
/// with it a message of ordinary lines is one run. The run's first byte follows one
/// inside a line (or the caller has dealt with what a line start needs).
#[inline]
fn plain_run(
    input: &[u8],
    special: impl Fn(u8) -> bool,
    find: impl Fn(&[u8]) -> Option<usize>,
) -> usize {
    let mut at = clean_blocks(input);
    loop {
        let Some(off) = find(&input[at..]) else {
            return input.len();
        };
        let p = at + off;
        if input.get(p..p + 2) != Some(b"\r\n") {
            return p;
        }
        // The CRLF, the empty lines after it (a message's blank lines need no attention
        // either), then a byte that needs none at a line start.
        let mut q = p + 2;
        while input.get(q..q + 2) == Some(b"\r\n") {
            q += 2;
        }
        match input.get(q) {
            Some(&next) if !special(next) => at = q + 1,
            _ => return p,
        }
    }
}

/// Bytes [`clean_blocks`] judges at once.
const BLOCK: usize = 64;

/// The start of `input`, in whole blocks and cut back to end on a byte inside a line,
/// that holds nothing either state machine has to look at: every line end a CRLF, no
/// line starting with a dot, no NUL. It is a strict part of what [`plain_run`] accepts,
/// found without stopping at each line end: each block is judged by one branch-free
/// pass the compiler vectorises, where the line-by-line search restarts at every line
/// (a 100 KiB message has over a thousand).
fn clean_blocks(input: &[u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, as checked on the line above (the check is cached).
        return unsafe { clean_blocks_avx2(input) };
    }
    clean_blocks_portable(input)
}

/// [`clean_blocks`] compiled for AVX2: the same code, which the compiler vectorises over
/// 32 bytes at a time instead of x86-64's baseline 16, for about half the instructions
/// per byte (every byte of every message passes here twice: decoding and encoding).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn clean_blocks_avx2(input: &[u8]) -> usize {
    clean_blocks_portable(input)
}

#[inline(always)]
fn clean_blocks_portable(input: &[u8]) -> usize {
    if input.len() < BLOCK {
        return 0;
    }
    // The run's first byte follows an ordinary one (see plain_run).
    let mut first = [b'a'; BLOCK + 1];
    first[1..].copy_from_slice(&input[..BLOCK]);
    if !block_is_clean(&first) {
        return 0;
    }
    let mut at = BLOCK;
    while at + BLOCK <= input.len() {
        let window = input[at - 1..at + BLOCK]
            .try_into()
            .expect("a block and the byte before it");
        if !block_is_clean(window) {
            break;
        }
        at += BLOCK;
    }
    // A CR ending the last block was not checked against the byte after it.
    while at > 0 && matches!(input[at - 1], b'\r' | b'\n') {
        at -= 1;
    }
    at
}

/// Whether the block `window[1..]` is clean, given the byte before it: each LF has a CR
/// before it and each CR an LF after it (a CR ending the block is the next block's
/// concern), no dot follows an LF, no NUL.
#[inline(always)]
fn block_is_clean(window: &[u8; BLOCK + 1]) -> bool {
    let mut bad = false;
    for i in 0..BLOCK {
        let (before, b) = (window[i], window[i + 1]);
        bad |= ((before == b'\r') ^ (b == b'\n')) | (b == 0) | (b == b'.') & (before == b'\n');
    }
    !bad
}

/// Encodes a whole message in one call (tests and small messages).
pub fn encode_all(message: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new();
    let mut out = Vec::with_capacity(message.len() + 8);
    e.encode(message, &mut out);
    e.finish(&mut out);
    out
}

/// BDAT content (RFC 3030): raw octets with no stuffing and no terminator, so only bare
/// CR, bare LF and NUL are looked for — across chunk boundaries — and reported as for
/// DATA (or, when normalising, bare line ends become CRLF).
#[derive(Debug, Clone)]
pub struct RawScanner {
    normalize: bool,
    anomalies: Anomalies,
    /// A CR ended the previous input: a LF may follow in the next.
    pending_cr: bool,
}

impl RawScanner {
    pub fn new(normalize: bool) -> Self {
        RawScanner {
            normalize,
            anomalies: Anomalies::default(),
            pending_cr: false,
        }
    }

    pub fn anomalies(&self) -> Anomalies {
        self.anomalies
    }

    /// Appends the content of `input` to `out`.
    pub fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                self.pending_cr = false;
                if input[i] == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                    continue;
                }
                self.bare_cr(out);
            }
            let run = memchr::memchr3(b'\r', b'\n', 0, &input[i..]).unwrap_or(input.len() - i);
            out.extend_from_slice(&input[i..i + run]);
            i += run;
            let Some(&b) = input.get(i) else { break };
            i += 1;
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    self.anomalies.bare_lf = true;
                    out.extend_from_slice(if self.normalize { b"\r\n" } else { b"\n" });
                }
                _ => {
                    self.anomalies.nul = true;
                    out.push(0);
                }
            }
        }
    }

    /// The end of the message: a CR left over is a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            self.bare_cr(out);
        }
    }

    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        self.anomalies.bare_cr = true;
        out.extend_from_slice(if self.normalize { b"\r\n" } else { b"\r" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the bytes that matter to the state machines (xorshift, fixed seed).
    fn tricky_inputs() -> Vec<Vec<u8>> {
        let alphabet = b"ab.\r\n\0";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut short: Vec<Vec<u8>> = (0..3000)
            .map(|i| {
                (0..(i % 40))
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Mostly ordinary lines, so that runs of CRLF-separated text occur.
                        match x % 10 {
                            0..=3 => b'a',
                            4 | 5 => b'\r',
                            6 | 7 => b'\n',
                            n => alphabet[(n as usize) % alphabet.len()],
                        }
                    })
                    .collect()
            })
            .collect();
        // Longer runs of clean lines (CRLF, blank lines) with a rare odd byte, so whole
        // clean blocks occur and every kind of block boundary is met.
        let long = (0..1500).map(|i| {
            let mut v = Vec::new();
            while v.len() < 60 + i % 300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 200 {
                    0..=139 => v.push(b'a'),
                    140..=184 => v.extend_from_slice(b"\r\n"),
                    185..=194 => v.extend_from_slice(b"\r\n\r\n"),
                    195 => v.extend_from_slice(b"\r\n."),
                    196 => v.push(b'.'),
                    197 => v.push(b'\r'),
                    198 => v.push(b'\n'),
                    _ => v.push(0),
                }
            }
            v
        });
        short.extend(long);
        short
    }

    /// The fast paths (runs of ordinary lines copied at once) against the state machine
    /// alone: fed one byte at a time, no run ever spans a line end.
    #[test]
    fn the_fast_paths_agree_with_the_byte_by_byte_state_machine() {
        let inputs = tricky_inputs();
        let with_clean_blocks = inputs.iter().filter(|i| clean_blocks(i) > 0).count();
        assert!(
            with_clean_blocks > 300,
            "{with_clean_blocks} inputs start clean"
        );
        for input in inputs {
            for normalize in [false, true] {
                let mut whole = Decoder::new(normalize);
                let mut out = Vec::new();
                let used = whole.decode(&input, &mut out);
                let mut bytewise = Decoder::new(normalize);
                let mut slow = Vec::new();
                let mut slow_used = 0;
                for b in &input {
                    if bytewise.is_done() {
                        break;
                    }
                    slow_used += bytewise.decode(std::slice::from_ref(b), &mut slow);
                }
                assert_eq!(
                    (&out, used, whole.is_done(), whole.anomalies()),
                    (&slow, slow_used, bytewise.is_done(), bytewise.anomalies()),
                    "decoding {input:?}"
                );
            }
            let mut e = Encoder::new();
            let mut fast = Vec::new();
            e.encode(&input, &mut fast);
            e.finish(&mut fast);
            let mut e = Encoder::new();
            let mut slow = Vec::new();
            for b in &input {
                e.encode(std::slice::from_ref(b), &mut slow);
            }
            e.finish(&mut slow);
            assert_eq!(fast, slow, "encoding {input:?}");
            assert_eq!(
                encode_passing_verbatim_runs(&input),
                fast,
                "verbatim {input:?}"
            );
        }
    }

    /// Decodes as the session does when it reads content straight into the body: each
    /// piece appended to what is decoded so far and decoded where it lies. Also returns
    /// the bytes after the terminator, handed back.
    fn decode_in_place_pieces(pieces: &[&[u8]]) -> (Vec<u8>, bool, usize, Anomalies, Vec<u8>) {
        let mut d = Decoder::new(false);
        let mut body = b"decoded before ".to_vec();
        let mut used = 0;
        let mut rest = Vec::new();
        for piece in pieces {
            let from = body.len();
            body.extend_from_slice(piece);
            // As the session does: in place when the decoder can, else from a copy.
            let n = match d.decode_in_place(&mut body[from..]) {
                Some((written, n)) => {
                    rest = body[from + n..].to_vec();
                    body.truncate(from + written);
                    n
                }
                None => {
                    let wire = body.split_off(from);
                    let n = d.decode(&wire, &mut body);
                    rest = wire[n..].to_vec();
                    n
                }
            };
            used += n;
            if d.is_done() {
                break;
            }
        }
        (body, d.is_done(), used, d.anomalies(), rest)
    }

    #[test]
    fn decoding_in_place_is_decoding() {
        let mut ended = 0;
        for input in tricky_inputs() {
            for size in [1, 3, 64, 200, usize::MAX] {
                let pieces: Vec<&[u8]> = input.chunks(size.min(input.len().max(1))).collect();
                let mut d = Decoder::new(false);
                let mut out = b"decoded before ".to_vec();
                let (mut used, mut rest) = (0, &[][..]);
                for piece in &pieces {
                    let n = d.decode(piece, &mut out);
                    used += n;
                    rest = &piece[n..];
                    if d.is_done() {
                        break;
                    }
                }
                let (body, done, in_place_used, anomalies, in_place_rest) =
                    decode_in_place_pieces(&pieces);
                assert_eq!(
                    (&body, done, in_place_used, anomalies),
                    (&out, d.is_done(), used, d.anomalies()),
                    "{input:?} in pieces of {size}"
                );
                if done {
                    ended += 1;
                    assert_eq!(in_place_rest, rest, "{input:?} in pieces of {size}");
                }
            }
        }
        assert!(ended > 1000, "{ended} inputs held a terminator");
        // A piece that ends between CR and LF leaves the decoder owing the CR.
        let mut d = Decoder::new(false);
        assert_eq!(d.decode_in_place(&mut b"a\r".to_vec()), Some((1, 2)));
        assert!(!d.can_decode_in_place());
        assert_eq!(d.decode_in_place(&mut b"\n".to_vec()), None);
        // Normalising may make the message longer than the wire bytes: not in place.
        let mut wire = b"a\nb\r\n.\r\n".to_vec();
        assert_eq!(Decoder::new(true).decode_in_place(&mut wire), None);
        assert_eq!(wire, b"a\nb\r\n.\r\n");
    }

    /// The AVX2 build of the block check, which every machine with AVX2 runs, against
    /// the baseline build, which the tests above then do not reach.
    #[test]
    fn the_block_check_is_the_same_on_every_cpu() {
        let inputs = tricky_inputs();
        for input in &inputs {
            for start in [0, 1, 63] {
                let at = input.get(start..).unwrap_or_default();
                assert_eq!(clean_blocks(at), clean_blocks_portable(at), "{at:?}");
            }
        }
        let clean_to = |input: &[u8]| clean_blocks_portable(input);
        assert!(inputs.iter().filter(|i| clean_to(i) >= 2 * BLOCK).count() > 100);
    }

    /// Encodes as the relay does: every verbatim run copied as is, the rest through the
    /// encoder, one byte at a time so every state boundary is met.
    fn encode_passing_verbatim_runs(input: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new();
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let run = e.verbatim_len(rest);
            if run > 0 {
                assert!(
                    !matches!(rest[run - 1], b'\r' | b'\n'),
                    "run ends in a line end"
                );
                out.extend_from_slice(&rest[..run]);
                e.pass_verbatim(&rest[..run]);
                rest = &rest[run..];
            } else {
                e.encode(&rest[..1], &mut out);
                rest = &rest[1..];
            }
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn an_ordinary_message_is_one_verbatim_run_and_a_dot_line_ends_it() {
        let e = Encoder::new();
        let body = b"Subject: x\r\n\r\nline one\r\nline two\r\n";
        // Everything but the last line end, which waits for the byte after it.
        assert_eq!(e.verbatim_len(body), body.len() - 2);
        assert_eq!(e.verbatim_len(b"a\r\n.b\r\n"), 1);
        assert_eq!(e.verbatim_len(b".leading dot"), 0);
        assert_eq!(e.verbatim_len(b"bare\nlf"), 4);
    }

    /// Decodes `wire` fed in every possible split into two chunks, and checks all splits
    /// agree with the one-shot result.
    fn decode_all_splits(wire: &[u8], normalize: bool) -> (Vec<u8>, bool, usize, Anomalies) {
        let mut d = Decoder::new(normalize);
        let mut out = Vec::new();
        let used = d.decode(wire, &mut out);
        let whole = (out, d.is_done(), used, d.anomalies());
        for cut in 0..=wire.len() {
            let mut d = Decoder::new(normalize);
            let mut out = Vec::new();
            let mut used = d.decode(&wire[..cut], &mut out);
            if !d.is_done() {
                used = cut + d.decode(&wire[cut..], &mut out);
            }
            assert_eq!(
                (&out, d.is_done(), used, d.anomalies()),
                (&whole.0, whole.1, whole.2, whole.3),
                "split at {cut}"
            );
        }
        // Byte by byte, too.
        let mut d = Decoder::new(normalize);
        let mut out = Vec::new();
        let mut used = 0;
        for b in wire {
            if d.is_done() {
                break;
            }
            used += d.decode(std::slice::from_ref(b), &mut out);
        }
        assert_eq!((&out, used), (&whole.0, whole.2), "byte by byte");
        whole
    }

    #[test]
    fn plain_message_and_terminator() {
        let (out, done, used, a) =
            decode_all_splits(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", false);
        assert!(done);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(used, 24);
        assert!(!a.any());
    }

    #[test]
    fn empty_message() {
        let (out, done, used, _) = decode_all_splits(b".\r\n", false);
        assert!(done);
        assert!(out.is_empty());
        assert_eq!(used, 3);
    }

    #[test]
    fn dot_lines_are_unstuffed() {
        let (out, done, _, _) = decode_all_splits(b"..x\r\n...\r\n.y\r\n..\r\n.\r\n", false);
        assert!(done);
        assert_eq!(out, b".x\r\n..\r\ny\r\n.\r\n");
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        let variants: [&[u8]; 8] = [
            b"a\n.\nMAIL FROM:<evil@x>\r\n",
            b"a\n.\r\nMAIL FROM:<evil@x>\r\n",
            b"a\r.\rMAIL FROM:<evil@x>\r\n",
            b"a\r\n.\nMAIL FROM:<evil@x>\r\n",
            b"a\r\n\x00.\r\nMAIL FROM:<evil@x>\r\n",
            b"a\r.\r\nMAIL FROM:<evil@x>\r\n",
            b"a\n.\rMAIL FROM:<evil@x>\r\n",
            b"a\r\n.\rMAIL FROM:<evil@x>\r\n",
        ];
        for v in variants {
            let (out, done, used, a) = decode_all_splits(v, false);
            assert!(!done, "{v:?} ended DATA");
            assert_eq!(used, v.len());
            assert!(a.any(), "{v:?} not flagged");
            // The smuggled command is still part of the content.
            assert!(out.windows(10).any(|w| w == b"MAIL FROM:"));
        }
    }

    #[test]
    fn normalize_turns_bare_line_ends_into_crlf() {
        let (out, done, _, a) = decode_all_splits(b"a\nb\rc\r\n.\r\n", true);
        assert!(done);
        assert!(a.bare_lf && a.bare_cr);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn encoder_restuffs_and_terminates_once() {
        assert_eq!(
            encode_all(b".x\r\n..\r\ny\r\n"),
            b"..x\r\n...\r\ny\r\n.\r\n"
        );
        assert_eq!(encode_all(b""), b".\r\n");
        assert_eq!(encode_all(b"no newline"), b"no newline\r\n.\r\n");
        // Bare line ends that reach the encoder leave as CRLF; a dot after one is stuffed.
        assert_eq!(encode_all(b"a\n.\nb\r\n"), b"a\r\n..\r\nb\r\n.\r\n");
    }

    #[test]
    fn encoder_handles_crlf_split_across_chunks() {
        let msg = b"line1\r\n.dot\r\nline3\r\n";
        let whole = encode_all(msg);
        for cut in 0..=msg.len() {
            let mut e = Encoder::new();
            let mut out = Vec::new();
            e.encode(&msg[..cut], &mut out);
            e.encode(&msg[cut..], &mut out);
            e.finish(&mut out);
            assert_eq!(out, whole, "split at {cut}");
        }
    }

    #[test]
    fn round_trip_is_identity_for_canonical_messages() {
        let msg = b"From: a\r\n\r\n.\r\n..\r\n.x\r\n\tend  \r\n";
        let wire = encode_all(msg);
        let (out, done, used, a) = decode_all_splits(&wire, false);
        assert!(done && !a.any());
        assert_eq!(used, wire.len());
        assert_eq!(out, msg);
    }

    #[test]
    fn raw_scanner_finds_bare_line_ends_across_chunks() {
        let msg = b"A: b\r\n\r\nline\r\n.\r\nbare\nlf and cr\rx\r\n";
        for cut in 0..msg.len() {
            let mut s = RawScanner::new(false);
            let mut out = Vec::new();
            s.scan(&msg[..cut], &mut out);
            s.scan(&msg[cut..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, msg, "cut {cut}: content is kept as it is");
            let a = s.anomalies();
            assert!(a.bare_lf && a.bare_cr && !a.nul, "cut {cut}");
            let mut n = RawScanner::new(true);
            let mut norm = Vec::new();
            n.scan(&msg[..cut], &mut norm);
            n.scan(&msg[cut..], &mut norm);
            n.finish(&mut norm);
            assert_eq!(
                norm,
                b"A: b\r\n\r\nline\r\n.\r\nbare\r\nlf and cr\r\nx\r\n".to_vec(),
                "cut {cut}"
            );
        }
        let mut s = RawScanner::new(false);
        let mut out = Vec::new();
        s.scan(b"clean\r\n", &mut out);
        s.scan(b"end\r", &mut out);
        s.finish(&mut out);
        assert!(s.anomalies().bare_cr, "a CR at the very end is bare");
    }
}
