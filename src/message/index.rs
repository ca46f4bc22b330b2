//! The header section of one message, parsed once: where each field lies, its name and
//! its value, for the rules, the checks and the rewriter alike.

use std::borrow::Cow;
use std::ops::Range;

use crate::envelope::MessageView;

/// Where one field lies in the header section (offsets from the start of the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    /// The colon after the name; `None` for a malformed field.
    colon: Option<usize>,
    /// The end of the value: before the CRLF of the last line (or the end of the slice).
    value_end: usize,
    /// After the CRLF of the last continuation line (or the end of the slice).
    end: usize,
}

/// The header fields of a message, in order, with the section's own bytes.
///
/// Lines end at CRLF only (the session hands over canonical bytes); a bare CR or LF is
/// part of its line. A field is a line plus the lines after it that start with a space
/// or a tab. The section ends at the first empty line; without one, every byte indexed
/// belongs to it and the message has no body.
///
/// A field whose first line has no colon, or whose first line is the message's first
/// line and starts with white space, is kept as a **malformed** field: it has no name
/// (`name()` is empty, [`Field::is_malformed`] is true), never matches a name, keeps its
/// place in the order (so positions count it) and is copied unchanged by the rewriter.
/// Rules never saw such lines and still do not (see [`HeaderIndex::message_view`]).
///
/// The index owns a copy of the header section (bounded by `max_header_size`), so it
/// can live in the transaction next to the spool without borrowing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderIndex {
    head: Vec<u8>,
    spans: Vec<Span>,
    body_offset: Option<usize>,
}

/// One field of a [`HeaderIndex`], borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    index: usize,
    span: Span,
    head: &'a [u8],
}

impl HeaderIndex {
    /// Indexes the header section at the start of `bytes`. The caller guarantees that
    /// `bytes` holds the whole section (or is the whole message): a slice that cuts the
    /// section short indexes as a message without a body, which the rewriter's output
    /// then refuses to splice onto the rest (see [`super::MessageOut`]).
    pub fn build(bytes: &[u8]) -> Self {
        let mut spans: Vec<Span> = Vec::new();
        let mut body_offset = None;
        let mut pos = 0;
        while pos < bytes.len() {
            let (line_end, next) = line_at(bytes, pos);
            if line_end == pos {
                body_offset = Some(next);
                break;
            }
            match spans.last_mut() {
                Some(last) if is_wsp(bytes[pos]) => {
                    last.value_end = line_end;
                    last.end = next;
                }
                _ => spans.push(Span {
                    start: pos,
                    colon: first_line_colon(&bytes[pos..line_end]).map(|c| pos + c),
                    value_end: line_end,
                    end: next,
                }),
            }
            pos = next;
        }
        let head_len = body_offset.unwrap_or(bytes.len());
        HeaderIndex {
            head: bytes[..head_len].to_vec(),
            spans,
            body_offset,
        }
    }

    /// The number of fields (malformed ones included).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The header section's bytes as received, its empty line included when it has one.
    pub fn bytes(&self) -> &[u8] {
        &self.head
    }

    /// The size of the header section (empty line included): where the body starts, or
    /// everything indexed when there is no empty line.
    pub fn header_len(&self) -> usize {
        self.head.len()
    }

    /// Where the body starts, after the empty line; `None` when the indexed bytes have
    /// no empty line (a message without a body).
    pub fn body_offset(&self) -> Option<usize> {
        self.body_offset
    }

    /// Whether the section ended with its empty line inside the indexed bytes.
    pub fn is_complete(&self) -> bool {
        self.body_offset.is_some()
    }

    /// The field at position `index` (0-based, in the original order).
    pub fn field(&self, index: usize) -> Option<Field<'_>> {
        self.spans.get(index).map(|&span| Field {
            index,
            span,
            head: &self.head,
        })
    }

    /// Every field in order.
    pub fn fields(&self) -> impl Iterator<Item = Field<'_>> + '_ {
        (0..self.spans.len()).filter_map(|i| self.field(i))
    }

    /// The fields called `name` (ASCII case ignored), in order.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Field<'a>> + 'a {
        self.fields().filter(move |f| f.is_named(name))
    }

    /// The `n`th field called `name`, counting from 1 (`n == 0` finds nothing).
    pub fn nth(&self, name: &str, n: usize) -> Option<Field<'_>> {
        self.fields()
            .filter(|f| f.is_named(name))
            .nth(n.checked_sub(1)?)
    }

    /// The first field called `name`.
    pub fn first(&self, name: &str) -> Option<Field<'_>> {
        self.nth(name, 1)
    }

    /// The first Message-ID, unfolded and trimmed; `None` when there is none or it is
    /// empty.
    pub fn message_id(&self) -> Option<String> {
        let id = self.first("Message-ID")?.value();
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_owned())
    }

    /// The view the `data` rules match on: (name, value) per field, the first
    /// `body_limit` bytes of the body and `message.len()` as the size (a caller whose
    /// `message` is only the start of a spilled spool sets the real size).
    ///
    /// `message` is the slice the index was built from. This is what rules have always
    /// seen: the name trimmed; the value as the rest of the first line without its
    /// leading white space, then each continuation line as is (its leading white space
    /// kept, CRLF dropped), trailing white space removed; malformed fields are left out,
    /// but their continuation lines extend the field before them.
    pub fn message_view(&self, message: &[u8], body_limit: usize) -> MessageView {
        let mut headers: Vec<(String, String)> = Vec::with_capacity(self.len());
        for f in self.fields() {
            if f.is_malformed() {
                if let Some((_, v)) = headers.last_mut() {
                    for line in split_crlf(&self.head[f.span.start..f.span.value_end]).skip(1) {
                        v.push_str(&String::from_utf8_lossy(line));
                    }
                }
                continue;
            }
            headers.push((f.name().into_owned(), f.unfolded_untrimmed()));
        }
        for (_, v) in &mut headers {
            v.truncate(v.trim_end().len());
        }
        let body = self
            .body_offset
            .and_then(|o| message.get(o..))
            .unwrap_or_default();
        MessageView {
            headers,
            body_prefix: body[..body.len().min(body_limit)].to_vec(),
            size: message.len() as u64,
        }
    }
}

impl<'a> Field<'a> {
    /// Its position among the original fields (what [`super::Edit::RemoveOriginal`]
    /// names).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The whole field: from its name to the CRLF of its last line, included.
    pub fn range(&self) -> Range<usize> {
        self.span.start..self.span.end
    }

    /// The name as written, before the colon (white space before the colon included);
    /// empty for a malformed field.
    pub fn name_range(&self) -> Range<usize> {
        self.span.start..self.span.colon.unwrap_or(self.span.start)
    }

    /// The value as written: after the colon to the end of the last line, folds
    /// included, final CRLF excluded. For a malformed field, all of its text.
    pub fn value_range(&self) -> Range<usize> {
        self.span.colon.map_or(self.span.start, |c| c + 1)..self.span.value_end
    }

    /// The field's bytes as received, final CRLF included (absent only when the indexed
    /// bytes ended inside the field's last line).
    pub fn raw(&self) -> &'a [u8] {
        &self.head[self.range()]
    }

    /// The value's bytes as received (see [`Self::value_range`]).
    pub fn raw_value(&self) -> &'a [u8] {
        &self.head[self.value_range()]
    }

    /// The name, white space around it trimmed (lossy UTF-8); empty for a malformed
    /// field.
    pub fn name(&self) -> Cow<'a, str> {
        let raw = &self.head[self.name_range()];
        match String::from_utf8_lossy(raw) {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        }
    }

    /// Whether the field is called `name`, ASCII case ignored. A malformed field has no
    /// name and matches nothing.
    pub fn is_named(&self, name: &str) -> bool {
        !self.is_malformed() && self.name().eq_ignore_ascii_case(name)
    }

    /// A first line without a colon, or a message starting with white space.
    pub fn is_malformed(&self) -> bool {
        self.span.colon.is_none()
    }

    /// A message whose first line starts with white space: that line continues no
    /// field, and would continue any written above it.
    pub fn starts_with_white_space(&self) -> bool {
        self.head.get(self.span.start).is_some_and(|&b| is_wsp(b))
    }

    /// The value unfolded as text (lossy UTF-8), as rules see it (see
    /// [`HeaderIndex::message_view`]).
    pub fn value(&self) -> String {
        let mut v = self.unfolded_untrimmed();
        v.truncate(v.trim_end().len());
        v
    }

    fn unfolded_untrimmed(&self) -> String {
        let mut lines = split_crlf(self.raw_value());
        let first = lines.next().unwrap_or_default();
        let mut v = String::from_utf8_lossy(first).trim_start().to_owned();
        for line in lines {
            v.push_str(&String::from_utf8_lossy(line));
        }
        v
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The colon ending a field name on a field's first line; none for a line that starts
/// with white space (it can only be the message's first line) or has no colon.
fn first_line_colon(line: &[u8]) -> Option<usize> {
    if line.first().is_some_and(|&b| is_wsp(b)) {
        return None;
    }
    memchr::memchr(b':', line)
}

/// The line starting at `pos`: (end of its text, start of the next line). A line
/// without a CRLF runs to the end of `bytes`.
fn line_at(bytes: &[u8], pos: usize) -> (usize, usize) {
    let mut from = pos;
    while let Some(i) = memchr::memchr(b'\n', &bytes[from..]) {
        let lf = from + i;
        if lf > pos && bytes[lf - 1] == b'\r' {
            return (lf - 1, lf + 1);
        }
        from = lf + 1;
    }
    (bytes.len(), bytes.len())
}

/// The lines of `text`, split at each CRLF (which is dropped).
pub(super) fn split_crlf(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match memchr::memmem::find(t, b"\r\n") {
            Some(i) => {
                rest = Some(&t[i + 2..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, raw value, malformed) of one field.
    type Row = (String, String, bool);

    fn summary(ix: &HeaderIndex) -> Vec<Row> {
        ix.fields()
            .map(|f| {
                (
                    f.name().into_owned(),
                    String::from_utf8_lossy(f.raw_value()).into_owned(),
                    f.is_malformed(),
                )
            })
            .collect()
    }

    fn f(name: &str, value: &str) -> Row {
        (name.into(), value.into(), false)
    }

    fn bad(text: &str) -> Row {
        (String::new(), text.into(), true)
    }

    #[test]
    fn a_table_of_header_sections() {
        // (message, fields, body offset)
        let table: Vec<(&[u8], Vec<Row>, Option<usize>)> = vec![
            (
                b"Subject: hi\r\nTo: a@b\r\n\r\nbody",
                vec![f("Subject", " hi"), f("To", " a@b")],
                Some(24),
            ),
            // Folded fields keep their folds in the raw value.
            (
                b"Received: from a\r\n\tby b\r\n  ; now\r\nX: 1\r\n\r\n",
                vec![f("Received", " from a\r\n\tby b\r\n  ; now"), f("X", " 1")],
                Some(42),
            ),
            // Empty values, with and without a space.
            (
                b"A:\r\nB: \r\nC:x\r\n\r\n",
                vec![f("A", ""), f("B", " "), f("C", "x")],
                Some(16),
            ),
            // No body: the empty line ends the message.
            (b"A: 1\r\n\r\n", vec![f("A", " 1")], Some(8)),
            // No empty line at all: no body.
            (b"A: 1\r\nB: 2\r\n", vec![f("A", " 1"), f("B", " 2")], None),
            // The last line without its CRLF.
            (b"A: 1\r\nB: 2", vec![f("A", " 1"), f("B", " 2")], None),
            // CRLF only at the very end: the bare LF is part of the value.
            (b"A: 1\nB: 2\r\n", vec![f("A", " 1\nB: 2")], None),
            // Leading white space on the first line: malformed, with its continuation.
            (
                b" A: 1\r\n\tmore\r\nB: 2\r\n\r\nx",
                vec![bad(" A: 1\r\n\tmore"), f("B", " 2")],
                Some(22),
            ),
            // A line without a colon: malformed, keeps its place.
            (
                b"A: 1\r\nno colon here\r\n folded\r\nB: 2\r\n\r\n",
                vec![f("A", " 1"), bad("no colon here\r\n folded"), f("B", " 2")],
                Some(38),
            ),
            // An empty name before the colon is a (nameless) field, not malformed.
            (b":x\r\n\r\n", vec![f("", "x")], Some(6)),
            // White space before the colon is not part of the name.
            (b"Subject : x\r\n\r\n", vec![f("Subject", " x")], Some(15)),
            // No header fields at all.
            (b"\r\nbody", vec![], Some(2)),
            (b"", vec![], None),
            // A bare CR or LF never ends a line or the section (and trims off a name).
            (
                b"A: 1\r\r\n\nB: 2\r\n\r\n",
                vec![f("A", " 1\r"), f("B", " 2")],
                Some(16),
            ),
        ];
        for (msg, fields, body) in table {
            let ix = HeaderIndex::build(msg);
            let shown = String::from_utf8_lossy(msg);
            assert_eq!(summary(&ix), fields, "{shown:?}");
            assert_eq!(ix.body_offset(), body, "{shown:?}");
            assert_eq!(ix.is_complete(), body.is_some());
            assert_eq!(ix.bytes(), &msg[..body.unwrap_or(msg.len())]);
            // Fields tile the section: each starts where the previous ended.
            let mut at = 0;
            for fl in ix.fields() {
                assert_eq!(fl.range().start, at, "{shown:?}");
                at = fl.range().end;
            }
            assert_eq!(at + body.map_or(0, |_| 2), ix.header_len(), "{shown:?}");
        }
    }

    #[test]
    fn lookups_by_name_and_occurrence() {
        let ix = HeaderIndex::build(
            b"Received: one\r\nSubject: s\r\nreceived: two\r\n\tfolded\r\nbogus\r\nRECEIVED: three\r\n\r\n",
        );
        assert_eq!(ix.len(), 5);
        let names: Vec<String> = ix.named("Received").map(|f| f.value()).collect();
        assert_eq!(names, ["one", "two\tfolded", "three"]);
        assert_eq!(ix.nth("received", 2).unwrap().index(), 2);
        assert_eq!(ix.nth("received", 3).unwrap().index(), 4);
        assert!(ix.nth("received", 4).is_none());
        assert!(ix.nth("received", 0).is_none());
        assert!(ix.first("bogus").is_none());
        assert!(ix.first("").is_none());
        assert_eq!(ix.first("subject").unwrap().raw(), b"Subject: s\r\n");
        let f = ix.field(2).unwrap();
        assert_eq!(&ix.bytes()[f.name_range()], b"received");
        assert_eq!(&ix.bytes()[f.value_range()], b" two\r\n\tfolded");
        assert!(ix.field(5).is_none());
    }

    #[test]
    fn message_id_is_unfolded_and_trimmed() {
        let id = |m: &[u8]| HeaderIndex::build(m).message_id();
        assert_eq!(id(b"Message-ID: <1@x>\r\n\r\n").as_deref(), Some("<1@x>"));
        assert_eq!(
            id(b"A: 1\r\nmessage-id:\r\n <2@x> \r\n\r\n").as_deref(),
            Some("<2@x>")
        );
        assert_eq!(id(b"Message-ID:  \r\n\r\n"), None);
        assert_eq!(id(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n"), None);
    }

    #[test]
    fn non_utf8_is_read_lossily() {
        let ix = HeaderIndex::build(b"Subject: caf\xe9\r\nX-\xff: 1\r\n\r\n");
        assert_eq!(ix.first("subject").unwrap().value(), "caf\u{fffd}");
        assert_eq!(ix.field(1).unwrap().name(), "X-\u{fffd}");
    }

    #[test]
    fn view_matches_the_rules_view_of_today() {
        let raw = b"Subject: hello\r\n world\r\nX-Empty:\r\n\r\nbody text\r\n";
        let ix = HeaderIndex::build(raw);
        let v = ix.message_view(raw, 4);
        assert_eq!(
            v.headers,
            vec![
                ("Subject".to_owned(), "hello world".to_owned()),
                ("X-Empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(v.body_prefix, b"body");
        assert_eq!(v.size, raw.len() as u64);
        // The quirks rules have always seen, kept on purpose.
        let raw = b"A: 1\r\nno colon\r\n cont\r\nB:   \r\n x \r\n\r\n";
        let v = HeaderIndex::build(raw).message_view(raw, 10);
        assert_eq!(
            v.headers,
            vec![
                ("A".to_owned(), "1 cont".to_owned()),
                ("B".to_owned(), " x".to_owned()),
            ]
        );
        assert!(v.body_prefix.is_empty());
        assert_eq!(v.headers, crate::policy::message_view(raw, 10).headers);
    }
}
