//! Randomised checks: the scanner, the index and the rewriter against a naive model of
//! a message as a list of lines, on messages and edit lists from a seeded generator.

use super::*;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "Received",
    "received",
    "Subject",
    "X-A",
    "x-a",
    "Authentication-Results",
    "Message-ID",
];

/// Text for a line: mostly letters, sometimes the bytes that matter to parsers.
fn text(rng: &mut Rng, canonical: bool) -> Vec<u8> {
    let pieces: &[&[u8]] = if canonical {
        &[
            b"a",
            b"b c",
            b":",
            b" ",
            b"\t",
            b"\xc3\xa9",
            b"\xff",
            b";",
            b"\r",
        ]
    } else {
        &[
            b"a", b"b c", b":", b" ", b"\t", b"\xff", b"\n", b"\r", b"\0",
        ]
    };
    (0..rng.below(6))
        .flat_map(|_| rng.pick(pieces).to_vec())
        .collect()
}

/// A random message: fields (folded, empty, malformed, odd first lines), maybe an
/// empty line, maybe a body; `canonical` leaves out bare LF (the session's input).
fn message(rng: &mut Rng, canonical: bool) -> Vec<u8> {
    let mut m = Vec::new();
    for _ in 0..rng.below(7) {
        match rng.below(10) {
            0 => m.extend_from_slice(&text(rng, canonical)), // malformed, maybe empty
            1 => m.extend_from_slice(b" leading"),
            _ => {
                m.extend_from_slice(rng.pick(NAMES).as_bytes());
                if rng.chance(10) {
                    m.push(b' ');
                }
                m.push(b':');
                m.extend_from_slice(&text(rng, canonical));
            }
        }
        m.extend_from_slice(b"\r\n");
        while rng.chance(25) {
            m.push(rng.pick(b" \t"));
            m.extend_from_slice(&text(rng, canonical));
            m.extend_from_slice(b"\r\n");
        }
    }
    match rng.below(10) {
        0 => {}                                     // no empty line
        1 => m.truncate(m.len().saturating_sub(2)), // the last line without its CRLF
        _ => {
            m.extend_from_slice(b"\r\n");
            for _ in 0..rng.below(4) {
                m.extend_from_slice(&text(rng, canonical));
                m.extend_from_slice(b"\r\n");
            }
        }
    }
    m
}

/// A random legal field value: folded lines, leading space or not.
fn value(rng: &mut Rng) -> String {
    const LEADS: &[&str] = &[" ", "", "  "];
    const WORDS: &[&str] = &["x", "a b", "\u{fc}", ":", ""];
    const FOLDS: &[&str] = &["\r\n\t", "\r\n ", "\r\n  "];
    const MORE: &[&str] = &["folded", "x y", ";"];
    let mut v = String::from(rng.pick(LEADS));
    v.push_str(rng.pick(WORDS));
    while rng.chance(30) {
        v.push_str(rng.pick(FOLDS));
        v.push_str(rng.pick(MORE));
    }
    v
}

fn edits(rng: &mut Rng, fields: usize) -> Edits {
    let mut e = Edits::new();
    for _ in 0..rng.below(6) {
        let name = rng.pick(NAMES);
        let v = value(rng);
        match rng.below(7) {
            0 => e.prepend(name, &v).unwrap(),
            1 => e.append(name, &v).unwrap(),
            2 => e.insert(rng.below(fields + 3), name, &v).unwrap(),
            3 => e.change(name, 1 + rng.below(3), &v).unwrap(),
            4 => e.delete(name, 1 + rng.below(3)).unwrap(),
            5 => e.remove_original(rng.below(fields + 2)),
            _ => e.replace_body(text(rng, true)),
        }
    }
    e
}

/// A field of the model: its bytes as written, its name (none when malformed), and
/// which original it is.
#[derive(Debug, Clone)]
struct ModelField {
    bytes: Vec<u8>,
    name: Option<String>,
    original: Option<usize>,
}

/// The model's reading of a message: lines split at CRLF, a line starting with SP or
/// HT (after the first) joins the field before it, the first empty line ends them.
fn model_parse(msg: &[u8]) -> (Vec<ModelField>, Option<usize>) {
    let mut fields: Vec<ModelField> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let rest = &msg[pos..];
        let len = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |i| i + 2);
        let line = &rest[..len];
        if line == b"\r\n" {
            return (fields, Some(pos + 2));
        }
        if pos > 0 && (line[0] == b' ' || line[0] == b'\t') {
            fields.last_mut().unwrap().bytes.extend_from_slice(line);
        } else {
            let first = line.strip_suffix(b"\r\n").unwrap_or(line);
            let name = (first[0] != b' ' && first[0] != b'\t')
                .then(|| first.iter().position(|&b| b == b':'))
                .flatten()
                .map(|c| String::from_utf8_lossy(&first[..c]).trim().to_owned());
            fields.push(ModelField {
                bytes: line.to_vec(),
                name,
                original: Some(fields.len()),
            });
        }
        pos += len;
    }
    (fields, None)
}

fn added(f: &NewField) -> ModelField {
    ModelField {
        bytes: format!("{}:{}\r\n", f.name(), f.value()).into_bytes(),
        name: Some(f.name().to_owned()),
        original: None,
    }
}

/// The position of the nth field called `name` in the model's list.
fn model_nth(list: &[ModelField], name: &str, n: usize) -> Option<usize> {
    let mut seen = 0;
    for (i, f) in list.iter().enumerate() {
        if f.name
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case(name))
        {
            seen += 1;
            if seen == n {
                return Some(i);
            }
        }
    }
    None
}

/// The model's output: the fields as written, one per element, and the whole message.
fn model_rewrite(msg: &[u8], e: &Edits) -> (Vec<Vec<u8>>, Vec<u8>) {
    let (mut list, body_at) = model_parse(msg);
    let mut top = Vec::new();
    let mut body = None;
    for edit in e.as_slice() {
        match edit {
            Edit::Prepend(f) => top.push(added(f)),
            Edit::Append(f) => list.push(added(f)),
            Edit::Insert { position, field } => {
                let at = (*position).min(list.len());
                list.insert(at, added(field));
            }
            Edit::Change { occurrence, field } => {
                match model_nth(&list, field.name(), occurrence.get()) {
                    Some(i) => list[i] = added(field),
                    None => list.push(added(field)),
                }
            }
            Edit::Delete { name, occurrence } => {
                if let Some(i) = model_nth(&list, name.as_str(), occurrence.get()) {
                    list.remove(i);
                }
            }
            Edit::RemoveOriginal { index } => list.retain(|f| f.original != Some(*index)),
            Edit::ReplaceBody(b) => body = Some(b.clone()),
        }
    }
    let mut order: Vec<ModelField> = Vec::new();
    let leading_space =
        |f: &ModelField| f.original == Some(0) && matches!(f.bytes[0], b' ' | b'\t');
    if let Some(i) = list.iter().position(leading_space) {
        order.push(list.remove(i));
    }
    order.extend(top);
    order.extend(list);
    let mut written: Vec<Vec<u8>> = order.into_iter().map(|f| f.bytes).collect();
    let empty_line = body_at.is_some() || body.is_some();
    let count = written.len();
    for (i, f) in written.iter_mut().enumerate() {
        if !f.ends_with(b"\r\n") && (i + 1 < count || empty_line) {
            f.extend_from_slice(b"\r\n");
        }
    }
    let mut out = written.concat();
    if empty_line {
        out.extend_from_slice(b"\r\n");
    }
    match body {
        Some(b) => out.extend_from_slice(&b),
        None => out.extend_from_slice(&msg[body_at.unwrap_or(msg.len())..]),
    }
    (written, out)
}

#[test]
fn the_rewriter_agrees_with_the_line_model() {
    let mut rng = Rng(0x6d78_6775_6172_6421);
    let mut changed = 0;
    for case in 0..20_000 {
        let canonical = rng.chance(80);
        let msg = message(&mut rng, canonical);
        let ix = HeaderIndex::build(&msg);
        let e = edits(&mut rng, ix.len());
        let out = rewrite(&ix, e.clone());
        let got = out.to_vec(&msg).unwrap();
        let (fields, want) = model_rewrite(&msg, &e);
        let shown = || format!("case {case}: {:?} {e:?}", String::from_utf8_lossy(&msg));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{}",
            shown()
        );
        assert_eq!(got, want, "{}", shown());
        assert_eq!(out.wire_len(msg.len() as u64), got.len() as u64);
        if e.is_empty() {
            assert_eq!(got, msg, "{}", shown());
        }
        changed += usize::from(got != msg);
        // The output parses back to the fields the model wrote, and the body is the
        // original's (or the replacement).
        let back = HeaderIndex::build(&got);
        let raws: Vec<&[u8]> = back.fields().map(|f| f.raw()).collect();
        assert_eq!(raws, fields, "{}", shown());
        let body_at = back.body_offset().unwrap_or(got.len());
        let body = match e.body() {
            Some(b) => b,
            None => &msg[ix.body_offset().unwrap_or(msg.len())..],
        };
        assert_eq!(&got[body_at..], body, "{}", shown());
    }
    assert!(changed > 10_000, "only {changed} cases changed the message");
}

#[test]
fn the_index_agrees_with_the_line_model() {
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let canonical = rng.chance(50);
        let msg = message(&mut rng, canonical);
        let ix = HeaderIndex::build(&msg);
        let (fields, body) = model_parse(&msg);
        assert_eq!(
            ix.body_offset(),
            body,
            "{:?}",
            String::from_utf8_lossy(&msg)
        );
        let raws: Vec<&[u8]> = ix.fields().map(|f| f.raw()).collect();
        let model: Vec<&[u8]> = fields.iter().map(|f| &f.bytes[..]).collect();
        assert_eq!(raws, model);
        for (f, m) in ix.fields().zip(&fields) {
            let name = (!f.is_malformed()).then(|| f.name().into_owned());
            assert_eq!(name, m.name, "{:?}", String::from_utf8_lossy(&msg));
        }
    }
}

#[test]
fn the_view_is_the_rules_view_of_today() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let msg = message(&mut rng, true);
        let limit = rng.below(8);
        let mine = HeaderIndex::build(&msg).message_view(&msg, limit);
        let today = crate::policy::message_view(&msg, limit);
        let shown = String::from_utf8_lossy(&msg);
        assert_eq!(mine.headers, today.headers, "{shown:?}");
        assert_eq!(mine.body_prefix, today.body_prefix, "{shown:?}");
        assert_eq!(mine.size, today.size, "{shown:?}");
    }
}

#[test]
fn the_scanner_and_the_index_agree_on_the_body_offset() {
    let mut rng = Rng(99);
    for _ in 0..5_000 {
        let canonical = rng.chance(50);
        let msg = message(&mut rng, canonical);
        let ix = HeaderIndex::build(&msg);
        let mut scan = HeaderScan::new();
        let mut ended = None;
        let mut from = 0;
        while from < msg.len() {
            let to = (from + 1 + rng.below(9)).min(msg.len());
            if let Some(n) = scan.feed(&msg[from..to]) {
                ended = Some(from + n);
            }
            from = to;
        }
        assert_eq!(
            ended,
            ix.body_offset(),
            "{:?}",
            String::from_utf8_lossy(&msg)
        );
        assert_eq!(scan.is_done(), ix.is_complete());
        let seen = ix.body_offset().unwrap_or(msg.len());
        assert_eq!(scan.header_bytes(), seen as u64);
    }
}
