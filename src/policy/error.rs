//! Load errors that name their place: `file:line:column: key.path: message`.
//!
//! A rule set is validated as a whole and *every* problem is collected, so an
//! administrator fixes a broken reload in one pass instead of one error per try.

use std::fmt;
use std::path::PathBuf;

/// One problem found while loading rules, with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file (rule file or included list file), as joined onto the rules directory.
    pub file: PathBuf,
    /// 1-based line; 0 when the error concerns the file or directory as a whole
    /// (e.g. it cannot be read).
    pub line: usize,
    /// 1-based column; 0 together with `line == 0`.
    pub column: usize,
    /// Where in the document, e.g. `rules[2].if.client_ip`; empty for file-level errors.
    pub key_path: String,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one load attempt, in file order. Never empty when returned
/// as an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, LoadError> {
        self.0.iter()
    }
}

impl fmt::Display for LoadErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

impl<'a> IntoIterator for &'a LoadErrors {
    type Item = &'a LoadError;
    type IntoIter = std::slice::Iter<'a, LoadError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
