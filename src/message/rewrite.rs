//! The one rewriter: original header section + edits in, the message to send out.
//!
//! Only the header section is rebuilt; the body is named, never copied: the relay reads
//! it from the spool behind the new header ([`MessageReader`]).

use std::borrow::Cow;
use std::io;

use super::edit::{Edit, Edits, FieldName, NewField};
use super::index::{Field, HeaderIndex};
use crate::spool::Spool;

/// One field of the list that edits work on: an original one, or one an edit added.
#[derive(Debug, Clone, Copy)]
pub enum Current<'a> {
    Original(Field<'a>),
    Added(&'a NewField),
}

impl Current<'_> {
    /// The name (trimmed, lossy UTF-8); empty for a malformed original field.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            Current::Original(f) => f.name(),
            Current::Added(n) => Cow::Borrowed(n.name()),
        }
    }

    /// The value as written after the colon, folds included.
    pub fn raw_value(&self) -> &[u8] {
        match self {
            Current::Original(f) => f.raw_value(),
            Current::Added(n) => n.value().as_bytes(),
        }
    }

    fn is_named(&self, name: &FieldName) -> bool {
        match self {
            Current::Original(f) => f.is_named(name.as_str()),
            Current::Added(n) => n.name().eq_ignore_ascii_case(name.as_str()),
        }
    }

    fn is_original(&self, index: usize) -> bool {
        matches!(self, Current::Original(f) if f.index() == index)
    }
}

/// The edits applied: the top block, the list below it, the body.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    /// Prepended fields, in the order they were recorded.
    pub top: Vec<&'a NewField>,
    /// The fields below the top block, in order: what a milter is shown and what
    /// positions and occurrences count.
    pub fields: Vec<Current<'a>>,
    /// The replacement body, if any.
    pub body: Option<&'a [u8]>,
}

/// Applies `edits` in order to the fields of `index` (the rules are in the [module
/// documentation](super)).
pub fn apply<'a>(index: &'a HeaderIndex, edits: &'a Edits) -> Applied<'a> {
    let mut out = Applied {
        top: Vec::new(),
        fields: index.fields().map(Current::Original).collect(),
        body: None,
    };
    for edit in edits.as_slice() {
        apply_one(&mut out, edit);
    }
    out
}

fn apply_one<'a>(out: &mut Applied<'a>, edit: &'a Edit) {
    let list = &mut out.fields;
    match edit {
        Edit::Prepend(f) => out.top.push(f),
        Edit::Append(f) => list.push(Current::Added(f)),
        Edit::Insert { position, field } => {
            list.insert((*position).min(list.len()), Current::Added(field));
        }
        Edit::Change { occurrence, field } => {
            match nth_named(list, field.field_name(), occurrence.get()) {
                Some(i) => list[i] = Current::Added(field),
                None => list.push(Current::Added(field)),
            }
        }
        Edit::Delete { name, occurrence } => {
            if let Some(i) = nth_named(list, name, occurrence.get()) {
                list.remove(i);
            }
        }
        Edit::RemoveOriginal { index } => list.retain(|c| !c.is_original(*index)),
        Edit::ReplaceBody(b) => out.body = Some(b),
    }
}

/// The position of the `n`th (from 1) field called `name`.
fn nth_named(list: &[Current<'_>], name: &FieldName, n: usize) -> Option<usize> {
    list.iter()
        .enumerate()
        .filter(|(_, c)| c.is_named(name))
        .nth(n - 1)
        .map(|(i, _)| i)
}

/// What the original's body becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySource {
    /// The original bytes from `offset` (the original header section's end) to the end
    /// of the message.
    Original { offset: u64 },
    /// A body an edit put in place of the original.
    Replaced(Vec<u8>),
}

/// The rewritten message: a new header section and where its body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOut {
    /// The header fields in order, then the empty line (when the original had one or
    /// the body was replaced).
    pub header: Vec<u8>,
    pub body: BodySource,
    /// Set when the indexed bytes had no empty line: the original must then be exactly
    /// this long, or the index saw only part of the header section.
    whole_len: Option<u64>,
}

/// The original message is longer than the header section the index saw, so the index
/// was built on a cut-short slice; splicing the new header onto the rest could split an
/// original line, so the message is not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the header section was indexed over {indexed} bytes without its empty line, but the message has {len}: the index needs the whole header section"
)]
pub struct HeaderCut {
    pub indexed: u64,
    pub len: u64,
}

/// Builds the message to send: the header section from `index` and `edits`, the body
/// by reference (or the replacement, moved out of `edits`). Without edits the header is
/// the original's, byte for byte. The result can be written any number of times (a
/// second upstream after a failover).
pub fn rewrite(index: &HeaderIndex, edits: Edits) -> MessageOut {
    let header = render_header(index, &apply(index, &edits));
    let body = match edits.into_body() {
        Some(b) => BodySource::Replaced(b),
        None => BodySource::Original {
            offset: index.header_len() as u64,
        },
    };
    MessageOut {
        header,
        body,
        whole_len: (!index.is_complete()).then_some(index.header_len() as u64),
    }
}

/// Original fields byte for byte, new ones as `Name:value` CRLF, the empty line last.
fn render_header(index: &HeaderIndex, applied: &Applied<'_>) -> Vec<u8> {
    let added: usize = applied.top.iter().map(|f| f.wire_len()).sum::<usize>()
        + applied
            .fields
            .iter()
            .map(|c| match c {
                Current::Added(f) => f.wire_len(),
                Current::Original(_) => 0,
            })
            .sum::<usize>();
    let mut w = HeaderWriter {
        out: Vec::with_capacity(index.header_len() + added + 4),
        open: false,
    };
    // An original first line that starts with white space would become a continuation
    // of whatever is written above it (a sender extending our Authentication-Results):
    // it stays the very first line.
    let pinned = applied
        .fields
        .iter()
        .position(|c| matches!(c, Current::Original(f) if f.starts_with_white_space()));
    if let Some(p) = pinned {
        w.field(&applied.fields[p]);
    }
    for f in &applied.top {
        w.field(&Current::Added(f));
    }
    for (i, c) in applied.fields.iter().enumerate() {
        if Some(i) != pinned {
            w.field(c);
        }
    }
    if index.is_complete() || applied.body.is_some() {
        w.close_line();
        w.out.extend_from_slice(b"\r\n");
    }
    w.out
}

/// Writes fields one after the other.
struct HeaderWriter {
    out: Vec<u8>,
    /// The last original field written had no final CRLF (a message without an empty
    /// line that ends inside its header section); it gets one only if something follows.
    open: bool,
}

impl HeaderWriter {
    fn field(&mut self, c: &Current<'_>) {
        self.close_line();
        match c {
            Current::Original(f) => {
                self.out.extend_from_slice(f.raw());
                self.open = !f.raw().ends_with(b"\r\n");
            }
            Current::Added(f) => f.write_to(&mut self.out),
        }
    }

    fn close_line(&mut self) {
        if std::mem::take(&mut self.open) {
            self.out.extend_from_slice(b"\r\n");
        }
    }
}

impl MessageOut {
    /// Whether the original of `len` octets fits the index this was written from.
    pub fn check_original(&self, len: u64) -> Result<(), HeaderCut> {
        match self.whole_len {
            Some(indexed) if indexed != len => Err(HeaderCut { indexed, len }),
            _ => Ok(()),
        }
    }

    /// The octets of the message as sent before any dot-stuffing (the `n` of `BDAT n
    /// LAST`), for an original of `original_len` octets.
    pub fn wire_len(&self, original_len: u64) -> u64 {
        self.header.len() as u64
            + match &self.body {
                BodySource::Original { offset } => original_len.saturating_sub(*offset),
                BodySource::Replaced(b) => b.len() as u64,
            }
    }

    /// The header and the body of the message, given the original in memory.
    pub fn parts<'a>(&'a self, original: &'a [u8]) -> Result<[&'a [u8]; 2], HeaderCut> {
        self.check_original(original.len() as u64)?;
        let body = match &self.body {
            BodySource::Original { offset } => original
                .get(usize::try_from(*offset).unwrap_or(usize::MAX)..)
                .unwrap_or_default(),
            BodySource::Replaced(b) => b,
        };
        Ok([&self.header, body])
    }

    /// The whole message in one buffer (tests, small messages).
    pub fn to_vec(&self, original: &[u8]) -> Result<Vec<u8>, HeaderCut> {
        Ok(self.parts(original)?.concat())
    }

    /// A reader that yields the message in pieces, the body straight from the spool.
    pub fn reader(&self) -> MessageReader<'_> {
        MessageReader {
            out: self,
            step: Step::Header,
            pos: 0,
            scratch: Vec::new(),
            carry: Vec::new(),
        }
    }
}

/// Yields a [`MessageOut`] as byte pieces: the header, then the body (the replacement,
/// or the original read from the spool in its own chunks, without a copy except the one
/// chunk of a spilled spool that holds the body's start).
///
/// ```ignore
/// let mut reader = out.reader();
/// while let Some(piece) = reader.next(&mut spool).await? {
///     encoder.encode(piece, &mut wire); // DATA; for BDAT send `piece` as is
/// }
/// ```
#[derive(Debug)]
pub struct MessageReader<'m> {
    out: &'m MessageOut,
    step: Step,
    /// Position in the spool, for [`Spool::next_chunk`].
    pos: u64,
    scratch: Vec<u8>,
    /// The part of the chunk holding the body's start that belongs to the body.
    carry: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Header,
    Body,
    /// Reading a spilled spool past the body's start.
    Spooled,
    Done,
}

impl<'m> MessageReader<'m> {
    /// The next piece, never empty; `None` at the end. The spool must hold the original
    /// the index was built from; one that does not fit it is an error before anything
    /// is yielded ([`HeaderCut`], as `InvalidData`).
    pub async fn next<'a>(&'a mut self, spool: &'a mut Spool) -> io::Result<Option<&'a [u8]>> {
        let out: &'m MessageOut = self.out;
        if self.step == Step::Header {
            out.check_original(spool.len())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.step = Step::Body;
            if !out.header.is_empty() {
                return Ok(Some(&out.header));
            }
        }
        match self.step {
            Step::Body => self.body_start(spool).await,
            Step::Spooled => {
                let chunk = spool.next_chunk(&mut self.pos, &mut self.scratch).await?;
                if chunk.is_empty() {
                    self.step = Step::Done;
                    return Ok(None);
                }
                Ok(Some(chunk))
            }
            Step::Header | Step::Done => Ok(None),
        }
    }

    /// The first body piece: the replacement, the rest of an in-memory spool, or the
    /// body's part of the first spooled chunk that reaches it.
    async fn body_start<'a>(&'a mut self, spool: &'a mut Spool) -> io::Result<Option<&'a [u8]>> {
        let out: &'m MessageOut = self.out;
        let offset = match &out.body {
            BodySource::Replaced(b) => {
                self.step = Step::Done;
                return Ok((!b.is_empty()).then_some(&b[..]));
            }
            BodySource::Original { offset } => *offset,
        };
        if !spool.is_spilled() {
            self.step = Step::Done;
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let body = spool.head().get(start..).unwrap_or_default();
            return Ok((!body.is_empty()).then_some(body));
        }
        loop {
            let from = self.pos;
            let chunk = spool.next_chunk(&mut self.pos, &mut self.scratch).await?;
            if chunk.is_empty() {
                self.step = Step::Done;
                return Ok(None);
            }
            if self.pos > offset {
                let skip = offset.saturating_sub(from) as usize;
                self.carry.clear();
                self.carry.extend_from_slice(&chunk[skip..]);
                break;
            }
        }
        self.step = Step::Spooled;
        Ok(Some(&self.carry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from a by mx1\r\n\
Subject: hello\r\n\
Received: from b by mx0\r\n\
\tfolded\r\n\
Authentication-Results: mx.test; spf=pass\r\n\
\r\n\
body line\r\n";

    fn out(msg: &[u8], build: impl FnOnce(&mut Edits)) -> String {
        let ix = HeaderIndex::build(msg);
        let mut e = Edits::new();
        build(&mut e);
        String::from_utf8(rewrite(&ix, e).to_vec(msg).unwrap()).unwrap()
    }

    #[test]
    fn no_edits_gives_the_original_bytes() {
        for msg in [
            MSG,
            b"A: 1\r\n\r\n",
            b"A: 1\r\nB: 2",
            b"A: 1\r\n",
            b"\r\nbody",
            b"",
            b" lead\r\nno colon\r\n\r\n\r\n.\r\n",
        ] {
            assert_eq!(out(msg, |_| {}).as_bytes(), msg);
        }
    }

    #[test]
    fn a_table_of_edit_combinations() {
        type Build = fn(&mut Edits);
        let table: &[(&str, Build, &str)] = &[
            (
                "insert at 0 and 1",
                |e| {
                    e.insert(0, "X-First", " 0").unwrap();
                    e.insert(1, "X-Second", " 1").unwrap();
                },
                "X-First: 0\r\nX-Second: 1\r\nReceived: from a by mx1\r\nSubject: hello\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody line\r\n",
            ),
            (
                "change the 2nd Received",
                |e| e.change("received", 2, " from c").unwrap(),
                "Received: from a by mx1\r\nSubject: hello\r\nreceived: from c\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody line\r\n",
            ),
            (
                "change a missing occurrence appends",
                |e| e.change("Received", 3, " late").unwrap(),
                "Received: from a by mx1\r\nSubject: hello\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\nReceived: late\r\n\r\nbody line\r\n",
            ),
            (
                "delete then insert counts in the current list",
                |e| {
                    e.delete("Received", 1).unwrap();
                    e.insert(1, "X-New", " here").unwrap();
                },
                "Subject: hello\r\nX-New: here\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody line\r\n",
            ),
            (
                "delete a missing occurrence does nothing",
                |e| e.delete("Subject", 2).unwrap(),
                std::str::from_utf8(MSG).unwrap(),
            ),
            (
                "an appended field counts for later edits",
                |e| {
                    e.append("Received", " added").unwrap();
                    e.change("Received", 3, " changed").unwrap();
                    e.insert(99, "X-End", " far").unwrap();
                },
                "Received: from a by mx1\r\nSubject: hello\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\nReceived: changed\r\nX-End: far\r\n\r\nbody line\r\n",
            ),
            (
                "prepends alone, in the order added",
                |e| {
                    e.prepend_field("Received: from us\r\n").unwrap();
                    e.prepend("Authentication-Results", " mx.test; none")
                        .unwrap();
                },
                "Received: from us\r\nAuthentication-Results: mx.test; none\r\nReceived: from a by mx1\r\nSubject: hello\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody line\r\n",
            ),
            (
                "prepends are invisible to positions and names",
                |e| {
                    e.prepend("Received", " from us").unwrap();
                    e.insert(0, "X-Milter", " top of the rest").unwrap();
                    e.change("Received", 1, " first original").unwrap();
                    e.prepend("X-Rule", " later prepend").unwrap();
                },
                "Received: from us\r\nX-Rule: later prepend\r\nX-Milter: top of the rest\r\nReceived: first original\r\nSubject: hello\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody line\r\n",
            ),
            (
                "an original removed by identity, whatever moved it",
                |e| {
                    e.insert(0, "X-A", " 1").unwrap();
                    e.delete("Subject", 1).unwrap();
                    e.remove_original(3);
                    e.remove_original(1); // already deleted: nothing
                },
                "X-A: 1\r\nReceived: from a by mx1\r\nReceived: from b by mx0\r\n\tfolded\r\n\r\nbody line\r\n",
            ),
            (
                "a changed original is no longer the original",
                |e| {
                    e.change("Subject", 1, " new").unwrap();
                    e.remove_original(1);
                },
                "Received: from a by mx1\r\nSubject: new\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nbody line\r\n",
            ),
            (
                "replace the body",
                |e| {
                    e.prepend("X-Scanned", " yes").unwrap();
                    e.replace_body(b"new body\r\n".to_vec());
                },
                "X-Scanned: yes\r\nReceived: from a by mx1\r\nSubject: hello\r\nReceived: from b by mx0\r\n\tfolded\r\nAuthentication-Results: mx.test; spf=pass\r\n\r\nnew body\r\n",
            ),
        ];
        for (what, build, want) in table {
            assert_eq!(out(MSG, build), *want, "{what}");
        }
    }

    #[test]
    fn a_section_without_an_empty_line() {
        // Nothing follows an unterminated last line: it stays as it is.
        assert_eq!(
            out(b"A: 1\r\nB: 2", |e| e.prepend("X", " p").unwrap()),
            "X: p\r\nA: 1\r\nB: 2"
        );
        // Something follows it: it gets its CRLF.
        assert_eq!(
            out(b"A: 1\r\nB: 2", |e| e.append("X", " a").unwrap()),
            "A: 1\r\nB: 2\r\nX: a\r\n"
        );
        // No empty line is invented for a message without a body...
        assert_eq!(
            out(b"A: 1\r\n", |e| e.append("X", " a").unwrap()),
            "A: 1\r\nX: a\r\n"
        );
        // ...unless a body is put in.
        assert_eq!(
            out(b"A: 1", |e| e.replace_body(b"b".to_vec())),
            "A: 1\r\n\r\nb"
        );
        // Every field deleted: the empty line stays when there was one.
        assert_eq!(
            out(b"A: 1\r\n\r\nb", |e| e.delete("A", 1).unwrap()),
            "\r\nb"
        );
    }

    #[test]
    fn a_leading_white_space_line_never_continues_our_fields() {
        let msg = b" ; dkim=pass header.d=bank.example\r\nFrom: a@b\r\n\r\nhi\r\n";
        let got = out(msg, |e| {
            e.prepend("Authentication-Results", " mx.test; dkim=none")
                .unwrap();
            e.insert(0, "X-Milter", " 0").unwrap();
        });
        assert_eq!(
            got,
            " ; dkim=pass header.d=bank.example\r\nAuthentication-Results: mx.test; dkim=none\r\nX-Milter: 0\r\nFrom: a@b\r\n\r\nhi\r\n"
        );
        let back = HeaderIndex::build(got.as_bytes());
        assert_eq!(
            back.first("Authentication-Results").unwrap().value(),
            "mx.test; dkim=none"
        );
        // Removed, it is simply gone.
        let got = out(msg, |e| {
            e.prepend("X", " 1").unwrap();
            e.remove_original(0);
        });
        assert_eq!(got, "X: 1\r\nFrom: a@b\r\n\r\nhi\r\n");
    }

    #[test]
    fn a_cut_short_index_is_refused_at_write_time() {
        let full = MSG;
        let ix = HeaderIndex::build(&full[..30]);
        let out = rewrite(&ix, Edits::new());
        assert_eq!(
            out.to_vec(full),
            Err(HeaderCut {
                indexed: 30,
                len: full.len() as u64
            })
        );
        assert_eq!(out.to_vec(&full[..30]).unwrap(), &full[..30]);
    }

    #[test]
    fn wire_len_counts_the_octets_sent() {
        let ix = HeaderIndex::build(MSG);
        let mut e = Edits::new();
        e.prepend("X", " 1").unwrap();
        let o = rewrite(&ix, e.clone());
        assert_eq!(
            o.wire_len(MSG.len() as u64),
            o.to_vec(MSG).unwrap().len() as u64
        );
        e.replace_body(b"12345".to_vec());
        let o = rewrite(&ix, e.clone());
        assert_eq!(
            o.wire_len(MSG.len() as u64),
            o.to_vec(MSG).unwrap().len() as u64
        );
    }

    #[test]
    fn the_applied_list_is_what_milters_see() {
        let ix = HeaderIndex::build(MSG);
        let mut e = Edits::new();
        e.prepend("Received", " from us").unwrap();
        e.insert(1, "X-A", " 1").unwrap();
        let a = apply(&ix, &e);
        assert_eq!(a.top.len(), 1);
        let names: Vec<String> = a.fields.iter().map(|c| c.name().into_owned()).collect();
        assert_eq!(
            names,
            [
                "Received",
                "X-A",
                "Subject",
                "Received",
                "Authentication-Results"
            ]
        );
        assert_eq!(a.fields[1].raw_value(), b" 1");
        assert_eq!(a.fields[3].raw_value(), b" from b by mx0\r\n\tfolded");
    }

    async fn read_all(out: &MessageOut, spool: &mut Spool) -> io::Result<Vec<u8>> {
        let mut reader = out.reader();
        let mut got = Vec::new();
        while let Some(piece) = reader.next(spool).await? {
            assert!(!piece.is_empty());
            got.extend_from_slice(piece);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn the_reader_streams_memory_and_file_spools() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = MSG.to_vec();
        for i in 0..40_000 {
            big.extend_from_slice(format!("line {i} of the body\r\n").as_bytes());
        }
        // A header section longer than one spool read (64 KiB).
        let mut big_head = Vec::new();
        for i in 0..3000 {
            big_head.extend_from_slice(format!("X-Pad-{i}: some padding text\r\n").as_bytes());
        }
        big_head.extend_from_slice(&big);
        let cases: [(&[u8], u64); 6] = [
            (MSG, 1 << 20),
            (&big, 1 << 20),
            (&big, 100),
            (MSG, 10),
            (&big_head, 100),
            (&big_head, 1 << 22),
        ];
        for (msg, threshold) in cases {
            let mut spool = Spool::new(dir.path(), threshold);
            for piece in msg.chunks(1000) {
                spool.append(piece).await.unwrap();
            }
            let ix = HeaderIndex::build(spool.head());
            for build in [
                (|_: &mut Edits| {}) as fn(&mut Edits),
                |e| e.prepend("X", " 1").unwrap(),
                |e| e.replace_body(b"short\r\n".to_vec()),
                |e| e.replace_body(Vec::new()),
            ] {
                let mut e = Edits::new();
                build(&mut e);
                let out = rewrite(&ix, e.clone());
                let want = out.to_vec(msg).unwrap();
                assert_eq!(read_all(&out, &mut spool).await.unwrap(), want);
                // A second pass (another upstream) reads the same.
                assert_eq!(read_all(&out, &mut spool).await.unwrap(), want);
                assert_eq!(out.wire_len(spool.len()), want.len() as u64);
            }
        }
    }

    #[tokio::test]
    async fn the_reader_refuses_a_spool_longer_than_an_unterminated_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path(), 1 << 20);
        spool.append(MSG).await.unwrap();
        let ix = HeaderIndex::build(&MSG[..30]);
        let out = rewrite(&ix, Edits::new());
        let e = read_all(&out, &mut spool).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("indexed over 30 bytes"), "{e}");
    }
}
