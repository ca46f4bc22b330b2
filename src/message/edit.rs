//! The one list of changes to a message: every piece that alters what goes upstream
//! (our trace and Authentication-Results lines, `add_header` rules, milters, the forged
//! A-R removal) records an [`Edit`] here, and the rewriter applies them all at once.
//!
//! Every new field is checked when it is recorded, so no edit can add a second field
//! inside its value or end the header section early: the checks are on the types
//! ([`FieldName`], [`NewField`]), and an [`Edit`] can only be built from checked ones.

use std::num::NonZeroUsize;

/// Why a field could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("empty header field name")]
    EmptyName,
    #[error("header field name {name:?}: byte {at} is not allowed (printable US-ASCII except ':')")]
    BadName { name: String, at: usize },
    #[error("header field {text:?} has no colon after its name")]
    NoColon { text: String },
    #[error("header field value: NUL at byte {at}")]
    Nul { at: usize },
    #[error("header field value: bare CR or LF at byte {at}")]
    BareLineEnd { at: usize },
    #[error(
        "header field value: the line at byte {at} does not start with a space or tab, so it would start a new field"
    )]
    Unfolded { at: usize },
    #[error(
        "header field value: the line at byte {at} is only white space (RFC 5322 allows it only in the obsolete syntax; some readers end the header section there)"
    )]
    BlankLine { at: usize },
    #[error("header field occurrences count from 1, not 0")]
    ZeroOccurrence,
}

/// A legal field name (RFC 5322 §2.2: one or more printable US-ASCII characters except
/// the colon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldName(String);

impl FieldName {
    pub fn new(name: &str) -> Result<Self, EditError> {
        if name.is_empty() {
            return Err(EditError::EmptyName);
        }
        if let Some(at) = name
            .bytes()
            .position(|b| !(33..=126).contains(&b) || b == b':')
        {
            return Err(EditError::BadName {
                name: name.to_owned(),
                at,
            });
        }
        Ok(FieldName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A field to add: a legal name and a value that stays inside its field.
///
/// The value is the raw text after the colon: it may start with a space (the usual
/// `Name: value` has one), folded lines are joined by CRLF and start with a space or a
/// tab, and it has no final CRLF. Long lines are allowed (RFC 5322's 998 is the
/// sender's business, and milters do write longer ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewField {
    name: FieldName,
    value: String,
}

impl NewField {
    pub fn new(name: &str, value: &str) -> Result<Self, EditError> {
        let name = FieldName::new(name)?;
        check_value(value)?;
        Ok(NewField {
            name,
            value: value.to_owned(),
        })
    }

    /// A whole field as text, `Name: value`, with or without its final CRLF (the shape
    /// of our trace and Authentication-Results builders and of `add_header` rules).
    pub fn parse(field: &str) -> Result<Self, EditError> {
        let field = field.strip_suffix("\r\n").unwrap_or(field);
        let Some((name, value)) = field.split_once(':') else {
            return Err(EditError::NoColon {
                text: field.to_owned(),
            });
        };
        NewField::new(name, value)
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn field_name(&self) -> &FieldName {
        &self.name
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Its size on the wire: `Name:value` and the CRLF.
    pub fn wire_len(&self) -> usize {
        self.name.0.len() + 1 + self.value.len() + 2
    }

    /// Appends `Name:value` CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.0.as_bytes());
        out.push(b':');
        out.extend_from_slice(self.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A value keeps to its field: no NUL, CR and LF only as CRLF, and every line after a
/// CRLF starts with a space or a tab and is not only white space.
fn check_value(value: &str) -> Result<(), EditError> {
    let b = value.as_bytes();
    for (at, &c) in b.iter().enumerate() {
        match c {
            0 => return Err(EditError::Nul { at }),
            b'\r' if b.get(at + 1) != Some(&b'\n') => return Err(EditError::BareLineEnd { at }),
            b'\n' if at == 0 || b[at - 1] != b'\r' => return Err(EditError::BareLineEnd { at }),
            b'\n' => check_continuation(b, at + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// The line starting at `at` (after a CRLF) must be folded white space plus text.
fn check_continuation(b: &[u8], at: usize) -> Result<(), EditError> {
    if !matches!(b.get(at), Some(b' ' | b'\t')) {
        return Err(EditError::Unfolded { at });
    }
    let line = &b[at..];
    let line = &line[..memchr::memchr(b'\r', line).unwrap_or(line.len())];
    if line.iter().all(|&c| c == b' ' || c == b'\t') {
        return Err(EditError::BlankLine { at });
    }
    Ok(())
}

/// One change to the message. The rules for applying a list of them are in the
/// [module documentation](super).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// A field in the top block, above every other field (our `Received:`, our
    /// Authentication-Results, `add_header` rules); invisible to positions and names.
    Prepend(NewField),
    /// A field at the end of the header section (milter `h`).
    Append(NewField),
    /// A field before the one at `position` in the current list, 0 for the first
    /// (milter `i`); past the end, at the end.
    Insert { position: usize, field: NewField },
    /// The `occurrence`th field called `field.name()` replaced by `field` (milter `m`);
    /// without such a field, `field` is appended.
    Change {
        occurrence: NonZeroUsize,
        field: NewField,
    },
    /// The `occurrence`th field called `name` removed; without one, nothing happens.
    Delete {
        name: FieldName,
        occurrence: NonZeroUsize,
    },
    /// The original field at this position of the [`super::HeaderIndex`] removed,
    /// wherever earlier edits moved it (our forged A-R removal).
    RemoveOriginal { index: usize },
    /// A new body (milter body replacement); the last one wins.
    ReplaceBody(Vec<u8>),
}

/// The edits of one message, in the order they were recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    list: Vec<Edit>,
}

impl Edits {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, edit: Edit) {
        self.list.push(edit);
    }

    pub fn as_slice(&self) -> &[Edit] {
        &self.list
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The body that replaces the original, if an edit replaced it.
    pub fn body(&self) -> Option<&[u8]> {
        self.list.iter().rev().find_map(|e| match e {
            Edit::ReplaceBody(b) => Some(&b[..]),
            _ => None,
        })
    }

    /// The replacement body, moved out (the rewriter's end of the list).
    pub fn into_body(self) -> Option<Vec<u8>> {
        self.list.into_iter().rev().find_map(|e| match e {
            Edit::ReplaceBody(b) => Some(b),
            _ => None,
        })
    }

    /// Records a field for the top block.
    pub fn prepend(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        self.list.push(Edit::Prepend(NewField::new(name, value)?));
        Ok(())
    }

    /// Records a whole `Name: value[CRLF]` field for the top block.
    pub fn prepend_field(&mut self, field: &str) -> Result<(), EditError> {
        self.list.push(Edit::Prepend(NewField::parse(field)?));
        Ok(())
    }

    pub fn append(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        self.list.push(Edit::Append(NewField::new(name, value)?));
        Ok(())
    }

    pub fn insert(&mut self, position: usize, name: &str, value: &str) -> Result<(), EditError> {
        let field = NewField::new(name, value)?;
        self.list.push(Edit::Insert { position, field });
        Ok(())
    }

    /// Replaces the `occurrence`th (from 1) field called `name`. A milter's `m` with an
    /// empty value is a deletion and its index 0 means 1 (Sendmail, Postfix): the milter
    /// client maps those before calling.
    pub fn change(&mut self, name: &str, occurrence: usize, value: &str) -> Result<(), EditError> {
        let occurrence = NonZeroUsize::new(occurrence).ok_or(EditError::ZeroOccurrence)?;
        let field = NewField::new(name, value)?;
        self.list.push(Edit::Change { occurrence, field });
        Ok(())
    }

    pub fn delete(&mut self, name: &str, occurrence: usize) -> Result<(), EditError> {
        let occurrence = NonZeroUsize::new(occurrence).ok_or(EditError::ZeroOccurrence)?;
        let name = FieldName::new(name)?;
        self.list.push(Edit::Delete { name, occurrence });
        Ok(())
    }

    pub fn remove_original(&mut self, index: usize) {
        self.list.push(Edit::RemoveOriginal { index });
    }

    pub fn replace_body(&mut self, body: Vec<u8>) {
        self.list.push(Edit::ReplaceBody(body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_fields_are_accepted() {
        for (name, value) in [
            ("Subject", " hello"),
            ("X-Spam", ""),
            ("x", "no space"),
            ("Received", " from a\r\n\tby b\r\n  ; now"),
            ("!#$%&'*+-.^_`|~", " odd but legal"),
            ("X-Long", &" a".repeat(2000)),
            ("X-Utf8", " caf\u{e9}"),
        ] {
            let f = NewField::new(name, value).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut out = Vec::new();
            f.write_to(&mut out);
            assert_eq!(out, format!("{name}:{value}\r\n").as_bytes());
            assert_eq!(f.wire_len(), out.len());
        }
    }

    #[test]
    fn fields_that_could_inject_or_end_the_section_are_refused() {
        let cases: &[(&str, &str, EditError)] = &[
            ("", " x", EditError::EmptyName),
            (
                "Bad Name",
                " x",
                EditError::BadName {
                    name: "Bad Name".into(),
                    at: 3,
                },
            ),
            (
                "A:B",
                " x",
                EditError::BadName {
                    name: "A:B".into(),
                    at: 1,
                },
            ),
            (
                "X\r\nY",
                " x",
                EditError::BadName {
                    name: "X\r\nY".into(),
                    at: 1,
                },
            ),
            (
                "Caf\u{e9}",
                " x",
                EditError::BadName {
                    name: "Caf\u{e9}".into(),
                    at: 3,
                },
            ),
            ("X", " a\r\nBcc: evil", EditError::Unfolded { at: 4 }),
            ("X", " a\r\n\r\nbody", EditError::Unfolded { at: 4 }),
            ("X", " a\r\n", EditError::Unfolded { at: 4 }),
            ("X", " a\nBcc: evil", EditError::BareLineEnd { at: 2 }),
            ("X", " a\n b", EditError::BareLineEnd { at: 2 }),
            ("X", " a\r b", EditError::BareLineEnd { at: 2 }),
            ("X", " a\r", EditError::BareLineEnd { at: 2 }),
            ("X", " a\0b", EditError::Nul { at: 2 }),
            ("X", " a\r\n \r\n b", EditError::BlankLine { at: 4 }),
            ("X", " a\r\n\t ", EditError::BlankLine { at: 4 }),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                NewField::new(name, value).as_ref(),
                Err(want),
                "{name:?} {value:?}"
            );
        }
        let mut e = Edits::new();
        assert_eq!(e.change("X", 0, " v"), Err(EditError::ZeroOccurrence));
        assert_eq!(e.delete("X", 0), Err(EditError::ZeroOccurrence));
        assert_eq!(
            e.delete("X Y", 1),
            Err(EditError::BadName {
                name: "X Y".into(),
                at: 1
            })
        );
        assert!(e.insert(0, "X", " a\r\nY: b").is_err());
        assert!(e.append("X", "\nY: b").is_err());
        assert!(e.prepend("", " b").is_err());
        assert!(e.is_empty(), "a refused edit is not recorded");
    }

    #[test]
    fn whole_fields_parse_at_the_first_colon() {
        let f = NewField::parse("Authentication-Results: mx.test;\r\n\tspf=pass\r\n").unwrap();
        assert_eq!(f.name(), "Authentication-Results");
        assert_eq!(f.value(), " mx.test;\r\n\tspf=pass");
        let f = NewField::parse("X-Time: 12:30").unwrap();
        assert_eq!((f.name(), f.value()), ("X-Time", " 12:30"));
        assert_eq!(
            NewField::parse("no colon\r\n"),
            Err(EditError::NoColon {
                text: "no colon".into()
            })
        );
        // Only one final CRLF is a terminator; a second is an empty line and refused.
        assert!(NewField::parse("X: a\r\n\r\n").is_err());
        assert!(
            NewField::parse("X : a").is_err(),
            "white space before the colon"
        );
    }

    #[test]
    fn the_last_body_replacement_wins() {
        let mut e = Edits::new();
        assert_eq!(e.body(), None);
        e.replace_body(b"one".to_vec());
        e.append("X", " 1").unwrap();
        e.replace_body(b"two".to_vec());
        assert_eq!(e.body(), Some(&b"two"[..]));
        assert_eq!(e.len(), 3);
    }
}
