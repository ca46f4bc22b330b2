//! The message between its final dot and the upstream: its header section indexed once,
//! the one list of edits every piece records, and the one rewriter that applies them.
//!
//! | piece | file |
//! |---|---|
//! | [`HeaderScan`]: the end of the header section while the message arrives | `scan.rs` |
//! | [`HeaderIndex`]: fields, names, values, the body offset, the rules' view | `index.rs` |
//! | [`Edit`], [`Edits`]: checked changes, in the order recorded | `edit.rs` |
//! | [`rewrite`], [`MessageOut`], [`MessageReader`]: the new header, the body by reference | `rewrite.rs` |
//!
//! A message flows: the session feeds [`HeaderScan`] while receiving (to bound the
//! header size), builds one [`HeaderIndex`] at end of data (rules, checks and milters
//! read it), records [`Edits`] (our trace line, our Authentication-Results, `add_header`
//! rules, the removal of forged A-R fields, milter changes), and the relay writes
//! [`rewrite`]'s [`MessageOut`] through a [`MessageReader`] (dot-stuffed for DATA, as is
//! for BDAT).
//!
//! # How edits apply
//!
//! 1. The original fields, in order, form the working list. Edits apply one by one in
//!    the order they were recorded, each to the list as the edits before it left it
//!    (as Postfix's cleanup applies milter edits).
//! 2. Positions and occurrences count the current list: original fields (malformed ones
//!    included) and fields added by earlier edits. Names match ignoring ASCII case; a
//!    malformed field (first line without a colon) never matches a name.
//!    - **append**: at the end of the list (milter `h`).
//!    - **insert at p**: before the field at position p, 0 being the first; p at or past
//!      the end appends (milter `i`).
//!    - **change the nth `Name`** (n from 1): that field is replaced, in place, by the new
//!      one (spelled as the edit spells it); with fewer than n such fields, the new one
//!      is appended (milter `m`, as Postfix and Sendmail do). A milter's `m` with an
//!      empty value is a delete, and its index 0 means 1: the milter client maps both.
//!    - **delete the nth `Name`**: that field is removed; with fewer, nothing happens.
//!    - **remove original i**: the field at position i of the [`HeaderIndex`] is removed
//!      wherever it now stands; if an earlier edit deleted or replaced it, nothing
//!      happens (a replaced field is a new field).
//!    - **replace body**: the last replacement wins.
//! 3. **Prepends** never enter the list: no position or occurrence counts them, no
//!    change or delete reaches them. They are written above the list in the order they
//!    were recorded, after every other edit has applied (a milter sees and edits the
//!    message as received, without our own trace fields, as Sendmail's milters do).
//! 4. The output: prepends, then the list, original fields byte for byte and new fields
//!    as `Name:value` CRLF, then the empty line (when the original had one or the body
//!    was replaced), then the body. No edits: the original bytes exactly.
//! 5. One exception to the order: a message whose first line starts with white space
//!    (a malformed field that continues nothing) keeps that line first, above the
//!    prepends, wherever edits put it in the list: written below any field, it would
//!    become that field's continuation, and a sender could extend our own
//!    Authentication-Results. An original last line without its CRLF (a message with
//!    no empty line, ending inside its header) gets its CRLF only if something follows.
//!
//! Every new field is checked when recorded ([`EditError`]): a legal name, a value with
//! CR and LF only as CRLF followed by a space or tab and some text, no NUL. So no edit
//! can add a field inside another or end the header section.

mod edit;
mod index;
mod rewrite;
mod scan;
#[cfg(test)]
mod tests;

pub use edit::{Edit, EditError, Edits, FieldName, NewField};
pub use index::{Field, HeaderIndex};
pub use rewrite::{
    Applied, BodySource, Current, HeaderCut, MessageOut, MessageReader, apply, rewrite,
};
pub use scan::HeaderScan;
