//! Message bodies between the final dot and the upstream's answer.
//!
//! mxguard has no queue: a body lives only for the duration of its transaction. Small
//! messages stay in memory; past a threshold the body spills to a file in the state
//! directory, so a 50 MB message costs 50 MB of disk, not of memory. The file is
//! removed when the spool is dropped, whatever the outcome.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

/// Bytes kept in memory from the start of a spilled message, for header and body rules.
const HEAD_KEEP: usize = 256 * 1024;

static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// One message body, in memory or in a spool file.
#[derive(Debug)]
pub struct Spool {
    head: Vec<u8>,
    file: Option<SpoolFile>,
    len: u64,
    threshold: usize,
    /// Bytes of a spilled message kept in memory: at least its whole header section.
    head_keep: usize,
    dir: PathBuf,
}

#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Where the next read continues, when reading.
    read_at: Option<u64>,
}

impl Spool {
    /// An empty spool that spills to `dir` past `threshold` bytes.
    pub fn new(dir: &Path, threshold: u64) -> Self {
        Spool {
            head: Vec::new(),
            file: None,
            len: 0,
            threshold: threshold.min(usize::MAX as u64) as usize,
            head_keep: HEAD_KEEP,
            dir: dir.to_owned(),
        }
    }

    /// Keeps at least `bytes` of a spilled message in memory (the header section, up to
    /// its size limit, so header rules and edits never need the file).
    pub fn keeping_head(mut self, bytes: u64) -> Self {
        self.head_keep = HEAD_KEEP.max(bytes.min(usize::MAX as u64) as usize);
        self
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The first bytes of the message (all of it unless spilled).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Reserves memory for a message of about `size` octets (never beyond the threshold).
    pub fn reserve(&mut self, size: u64) {
        let want = size.min(self.threshold as u64) as usize;
        self.head.reserve(want.saturating_sub(self.head.len()));
    }

    /// Appends message bytes, spilling to a file when the threshold is crossed.
    pub async fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &mut self.file {
            self.len += bytes.len() as u64;
            f.read_at = None;
            let keep = self
                .head_keep
                .saturating_sub(self.head.len())
                .min(bytes.len());
            self.head.extend_from_slice(&bytes[..keep]);
            return f.writer.write_all(bytes).await;
        }
        self.head.extend_from_slice(bytes);
        self.grown(None).await
    }

    /// The in-memory body, for a decoder to write into directly (saving the copy that
    /// [`append`](Self::append) makes of every byte); `None` once spilled. Bytes may
    /// only be added at the end, and are counted by [`grown`](Self::grown).
    pub fn memory(&mut self) -> Option<&mut Vec<u8>> {
        match self.file {
            None => Some(&mut self.head),
            Some(_) => None,
        }
    }

    /// Counts the bytes added through [`memory`](Self::memory) (or drops them, when
    /// the body is cut back to `keep` bytes), spilling when the threshold is crossed.
    pub async fn grown(&mut self, keep: Option<usize>) -> std::io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        if let Some(keep) = keep {
            self.head.truncate(keep);
        }
        self.len = self.head.len() as u64;
        if self.head.len() > self.threshold {
            self.spill().await?;
        }
        Ok(())
    }

    /// Writes out what is still buffered for the file: called when the message is
    /// complete, so a full disk shows while receiving (our failure, `452`), not later while
    /// relaying, when it would look like the upstream's.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.writer.flush().await,
            None => Ok(()),
        }
    }

    async fn spill(&mut self) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("msg-{}-{seq}.spool", std::process::id()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        let written = writer.write_all(&self.head).await;
        // Register the file before checking the write, so Drop removes it either way.
        self.file = Some(SpoolFile {
            path,
            writer,
            read_at: None,
        });
        written?;
        self.head.truncate(self.head_keep);
        self.head.shrink_to_fit();
        Ok(())
    }

    /// The whole message: borrowed when it is in memory, read from the file when spilled
    /// (DKIM needs it all; the size limit bounds it).
    pub async fn read_all(&mut self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        if self.file.is_none() {
            return Ok(std::borrow::Cow::Borrowed(&self.head));
        }
        let mut out = Vec::with_capacity(self.len as usize);
        let mut pos = 0;
        let mut scratch = Vec::new();
        loop {
            let chunk = self.next_chunk(&mut pos, &mut scratch).await?;
            if chunk.is_empty() {
                return Ok(std::borrow::Cow::Owned(out));
            }
            out.extend_from_slice(chunk);
        }
    }

    /// Returns the next piece of the message after `*pos` (empty at the end) and
    /// advances `pos`. Any position may start a read (the body after an edited header
    /// section), and reading again from an earlier one starts over, so a message can be
    /// sent twice (e.g. to a second upstream).
    pub async fn next_chunk<'a>(
        &'a mut self,
        pos: &mut u64,
        scratch: &'a mut Vec<u8>,
    ) -> std::io::Result<&'a [u8]> {
        match &mut self.file {
            None => {
                let start = (*pos).min(self.head.len() as u64) as usize;
                *pos = self.head.len() as u64;
                Ok(&self.head[start..])
            }
            Some(sf) => {
                if sf.read_at != Some(*pos) {
                    sf.writer.flush().await?;
                    sf.writer.get_mut().seek(SeekFrom::Start(*pos)).await?;
                }
                scratch.resize(64 * 1024, 0);
                let n = sf.writer.get_mut().read(scratch).await?;
                *pos += n as u64;
                sf.read_at = Some(*pos);
                Ok(&scratch[..n])
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(&f.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: &mut Spool) -> Vec<u8> {
        s.read_all().await.unwrap().into_owned()
    }

    #[tokio::test]
    async fn small_message_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path(), 1024);
        s.append(b"hello ").await.unwrap();
        s.append(b"world").await.unwrap();
        assert!(!s.is_spilled());
        assert_eq!(collect(&mut s).await, b"hello world");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Bytes decoded straight into the body count as appended ones: cut back on demand,
    /// spilled past the threshold, and after the spill `memory` is closed.
    #[tokio::test]
    async fn a_body_written_in_place_counts_cuts_back_and_spills() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path(), 1000);
        s.memory().unwrap().extend_from_slice(b"kept ");
        s.grown(None).await.unwrap();
        s.memory().unwrap().extend_from_slice(b"dropped");
        s.grown(Some(5)).await.unwrap();
        assert_eq!((s.len(), s.head()), (5, &b"kept "[..]));
        s.memory().unwrap().extend_from_slice(&[b'x'; 1200]);
        s.grown(None).await.unwrap();
        assert!(s.is_spilled());
        assert!(s.memory().is_none());
        s.append(b"tail").await.unwrap();
        let mut want = b"kept ".to_vec();
        want.extend_from_slice(&[b'x'; 1200]);
        want.extend_from_slice(b"tail");
        assert_eq!(s.len(), want.len() as u64);
        assert_eq!(collect(&mut s).await, want);
    }

    #[tokio::test]
    async fn large_message_spills_and_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = Spool::new(dir.path(), 1000);
        for chunk in data.chunks(7777) {
            s.append(chunk).await.unwrap();
        }
        assert!(s.is_spilled());
        assert_eq!(s.len(), data.len() as u64);
        assert_eq!(s.head(), &data[..HEAD_KEEP]);
        assert_eq!(collect(&mut s).await, data);
        // Reading twice works (a retry to a second upstream would do this).
        assert_eq!(collect(&mut s).await, data);
        // From the middle on, as when the header section was rewritten.
        let mut pos = 300_000;
        let mut scratch = Vec::new();
        let mut tail = Vec::new();
        loop {
            let c = s.next_chunk(&mut pos, &mut scratch).await.unwrap();
            if c.is_empty() {
                break;
            }
            tail.extend_from_slice(c);
        }
        assert_eq!(tail, &data[300_000..]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
