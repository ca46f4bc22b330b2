//! DATA and BDAT: receive the message under strict rules, check it, relay it.
//!
//! DATA content ends only at `CRLF.CRLF` and is un-stuffed; BDAT chunks (RFC 3030) are
//! exactly N octets each, read even when the chunk is refused so the session stays in
//! step. Both land in one spool and meet the same end-of-data checks and rules. The
//! client gets `250` only after the upstream said `250` for the same message; any
//! upstream trouble becomes `451 4.4.1` so the sender retries. Nothing is queued here.

use tokio::time::Instant;
use tracing::warn;

use super::fault::{message_not_accepted, upstream_aborted};
use super::input::Input;
use super::mail::{refusal_outcome, upstream_outcome};
use super::{COMMAND_CHUNK, Flow, Session};
use crate::checks::auth_results;
use crate::dotstream::{Anomalies, Decoder, RawScanner};
use crate::envelope::{Checks, MessageView, Stage};
use crate::message::{Edits, HeaderIndex, HeaderScan, MessageOut};
use crate::relay::TraceMode;
use crate::reply::{Reply, StatusCode, reply};
use crate::spool::Spool;
use crate::stream::Transport;
use crate::telemetry::{ProtocolErrorKind, TransactionOutcome};
use crate::transaction::Transfer;

/// Read size while a message is being received.
const DATA_CHUNK: usize = 64 * 1024;

/// What went wrong while receiving, decided after the final dot (or chunk).
#[derive(Debug, Default)]
struct Received {
    size: u64,
    anomalies: Anomalies,
    oversize: bool,
    header_too_big: bool,
    spool_error: Option<std::io::Error>,
}

/// A message being received, DATA or BDAT chunks, up to its end.
pub(super) struct Receiving {
    /// DATA: end of data and un-stuffing.
    decoder: Decoder,
    /// BDAT: bare line ends across chunks.
    scanner: RawScanner,
    spool: Spool,
    headers: HeaderScan,
    got: Received,
    normalize: bool,
    /// When this transfer (DATA, or the current chunk) started, for the data rate.
    started: Instant,
    wire_bytes: u64,
    /// When the waiting upstream gets its next NOOP.
    next_noop: Instant,
    decoded: Vec<u8>,
    /// Where wire bytes read straight into the in-memory body start, still to be decoded
    /// there (see [`Session::read_message_bytes`]).
    wire_in_body: Option<usize>,
}

impl Receiving {
    /// The in-memory body for DATA content to be read into and decoded where it lands,
    /// with where the wire bytes will start marked: only while the message is wanted, in
    /// memory, and when the decoder can decode in place (see
    /// [`Decoder::can_decode_in_place`]).
    fn body_for_wire_bytes(&mut self) -> Option<&mut Vec<u8>> {
        if self.refused() || !self.decoder.can_decode_in_place() {
            return None;
        }
        let body = self.spool.memory()?;
        self.wire_in_body = Some(body.len());
        Some(body)
    }

    fn refused(&self) -> bool {
        self.got.oversize
            || self.got.header_too_big
            || self.got.spool_error.is_some()
            || (!self.normalize && self.anomalies().any())
    }

    fn anomalies(&self) -> Anomalies {
        let (a, b) = (self.decoder.anomalies(), self.scanner.anomalies());
        Anomalies {
            bare_lf: a.bare_lf || b.bare_lf,
            bare_cr: a.bare_cr || b.bare_cr,
            nul: a.nul || b.nul,
        }
    }
}

impl<S: Transport> Session<S> {
    /// DATA preconditions; `354`, then the message is read in the `Data` input state.
    pub(super) async fn data(&mut self) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            self.error_reply(reply(503, (5, 5, 1), "Error: need MAIL command"));
            return Flow::Continue;
        };
        if tx.upstream_failed {
            self.push(&upstream_aborted());
            return Flow::Continue;
        }
        if tx.transfer == Transfer::Bdat {
            self.error_reply(reply(503, (5, 5, 1), "Error: DATA after BDAT"));
            return Flow::Continue;
        }
        if let Some(r) = no_recipients(tx.recipients.len(), tx.rcpts_tried) {
            self.error_reply(r);
            return Flow::Continue;
        }
        if !self.conn.buffered().is_empty() {
            // The message was sent before our 354: a client that does not wait for replies
            // (RFC 2920 makes DATA the last command of a group). Refuse and close.
            let r = reply(554, (5, 5, 0), "Error: SMTP protocol synchronization");
            self.note_bad_input(ProtocolErrorKind::PipeliningAfterData, &r);
            self.push(&r);
            return Flow::Close;
        }
        if let Some(chain) = self.filters.as_mut() {
            let verdict = chain.data().await;
            self.note_filter_calls();
            if let Some(v) = verdict {
                let stop = self.filter_stop(v, "data");
                return self.answer_filter_stop(stop);
            }
        }
        self.push(
            &Reply::new(354, StatusCode(2, 0, 0), "End data with <CR><LF>.<CR><LF>")
                .without_status(),
        );
        self.start_receiving(Transfer::Data);
        self.input = Input::Data;
        Flow::Continue
    }

    /// `BDAT <size> [LAST]`: the chunk's octets follow at once. They are read whatever
    /// the answer, so a refused chunk cannot put the session out of step; the reply
    /// follows the chunk.
    pub(super) fn bdat(&mut self, line: &str) -> Flow {
        let Some((size, last)) = parse_bdat(line) else {
            // Without a size we cannot know where the next command starts.
            let r = reply(501, (5, 5, 4), "Syntax: BDAT size [LAST], closing");
            self.note_bad_input(ProtocolErrorKind::Syntax, &r);
            self.push(&r);
            return Flow::Close;
        };
        let max = self.rt.config.limits.max_message_size;
        if size > max.saturating_add(max / 8) {
            // Not worth reading only to throw away.
            let r = reply(
                552,
                (5, 3, 4),
                "Error: message size exceeds fixed limit, closing",
            );
            self.note_bad_input(ProtocolErrorKind::Size, &r);
            self.push(&r);
            return Flow::Close;
        }
        self.chunk_refusal = self.chunk_refusal_now();
        if self.chunk_refusal.is_none() && self.receiving.is_none() {
            self.start_receiving(Transfer::Bdat);
        }
        // The data rate applies per chunk; between chunks, the command timeout.
        self.input = Input::Bdat {
            size,
            left: size,
            last,
            started: Instant::now(),
        };
        Flow::Continue
    }

    /// Why the chunk announced now must be refused (after its octets are read), if it must.
    fn chunk_refusal_now(&mut self) -> Option<Reply> {
        if !self.offered.chunking {
            return Some(reply(502, (5, 5, 1), "Error: BDAT not offered"));
        }
        if let Some(r) = &self.failed_chunk {
            // RFC 3030 §4.2: chunks still in the pipeline after a failed one are read and
            // refused alike.
            return Some(r.clone());
        }
        let Some(tx) = self.tx.as_mut() else {
            return Some(reply(503, (5, 5, 1), "Error: need MAIL command"));
        };
        if tx.upstream_failed {
            return Some(upstream_aborted());
        }
        if let Some(r) = no_recipients(tx.recipients.len(), tx.rcpts_tried) {
            return Some(r);
        }
        tx.transfer = Transfer::Bdat;
        None
    }

    fn start_receiving(&mut self, kind: Transfer) {
        let limits = &self.rt.config.limits;
        let normalize = self.rt.normalizes(self.client.ip);
        let mut spool = Spool::new(&self.rt.spool_dir, limits.memory_spool_threshold)
            .keeping_head(limits.max_header_size);
        if let Some(tx) = self.tx.as_mut() {
            tx.transfer = kind;
            // The declared SIZE (bounded by what stays in memory) saves regrowing the buffer.
            spool.reserve(tx.params.size.unwrap_or(0));
        }
        let now = Instant::now();
        let every = self
            .upstream
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |u| u.keepalive);
        self.receiving = Some(Box::new(Receiving {
            decoder: Decoder::new(normalize),
            scanner: RawScanner::new(normalize),
            spool,
            headers: HeaderScan::default(),
            got: Received::default(),
            normalize,
            started: now,
            wire_bytes: 0,
            next_noop: now + every,
            decoded: Vec::new(),
            wire_in_body: None,
        }));
        self.conn.set_chunk(DATA_CHUNK);
    }

    /// Whether the input is message content.
    pub(super) fn receiving_message(&self) -> bool {
        matches!(self.input, Input::Data | Input::Bdat { .. })
    }

    /// For the data deadlines: when the transfer (DATA, or this BDAT chunk) started,
    /// its octets so far, and when the waiting upstream's next NOOP is due.
    pub(super) fn message_clock(&self) -> Option<(Instant, u64, Instant)> {
        let next_noop = self.receiving.as_ref().map(|r| r.next_noop);
        // A refused chunk has no message to keep alive upstream.
        let next_noop =
            next_noop.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        match &self.input {
            Input::Data => self
                .receiving
                .as_ref()
                .map(|r| (r.started, r.wire_bytes, next_noop)),
            Input::Bdat {
                size,
                left,
                started,
                ..
            } => Some((*started, size - left, next_noop)),
            _ => None,
        }
    }

    pub(super) fn message_noop_sent(&mut self) {
        let every = self
            .upstream
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |u| u.keepalive);
        if let Some(rx) = self.receiving.as_mut() {
            rx.next_noop = Instant::now() + every;
        }
    }

    /// Reads message content, waiting until `deadline`: DATA content straight into the
    /// in-memory body when nothing else is buffered (decoded there by
    /// [`Self::take_message_bytes`], so each byte is copied once, by the kernel), anything
    /// else into the connection's buffer. An associated function over the two fields it
    /// needs, so the caller can wait on it beside the upstream's keep-alive.
    pub(super) async fn read_message_bytes(
        conn: &mut crate::stream::BufferedConn<S>,
        receiving: Option<&mut Receiving>,
        in_data: bool,
        deadline: Instant,
    ) -> Result<usize, crate::stream::ReadError> {
        let body = receiving
            .filter(|_| in_data && conn.buffered().is_empty())
            .and_then(Receiving::body_for_wire_bytes);
        match body {
            Some(body) => conn.fill_into(body, deadline).await,
            None => conn.fill(deadline).await,
        }
    }

    /// [`Self::take_message_bytes`] for wire bytes read into the body from `from` on:
    /// decoded where they lie, the bytes after the terminator handed back to the
    /// connection as the next input.
    async fn take_wire_bytes_in_body(
        &mut self,
        from: usize,
        max_size: u64,
        max_header: u64,
    ) -> bool {
        let Some(rx) = self.receiving.as_deref_mut() else {
            return true;
        };
        let Some(body) = rx.spool.memory() else {
            return false;
        };
        let (written, used) = match rx.decoder.decode_in_place(&mut body[from..]) {
            Some((written, used)) => {
                self.conn.unread(&body[from + used..]);
                body.truncate(from + written);
                (written, used)
            }
            None => {
                // Not reached (body_for_wire_bytes marks a body only when the decoder
                // can): decode the wire bytes from a copy instead.
                let wire = body.split_off(from);
                let used = rx.decoder.decode(&wire, body);
                self.conn.unread(&wire[used..]);
                (body.len() - from, used)
            }
        };
        let done = rx.decoder.is_done();
        rx.wire_bytes += used as u64;
        rx.got.size += written as u64;
        if !rx.headers.is_done() {
            rx.headers.feed(&body[from..]);
            rx.got.header_too_big |= rx.headers.header_bytes() > max_header;
        }
        rx.got.oversize |= rx.got.size > max_size;
        // As for a copied chunk: one that made the message unwanted is dropped.
        let keep = rx.refused().then_some(from);
        if let Err(e) = rx.spool.grown(keep).await {
            rx.got.spool_error = Some(e);
        }
        done
    }

    /// Takes message content out of the buffer; `true` when the DATA terminator or the
    /// end of the BDAT chunk was reached.
    pub(super) async fn take_message_bytes(&mut self) -> bool {
        let limits = &self.rt.config.limits;
        let (max_size, max_header) = (limits.max_message_size, limits.max_header_size);
        let input = self.conn.buffered();
        let Some(rx) = self
            .receiving
            .as_mut()
            .filter(|_| self.chunk_refusal.is_none())
        else {
            // A refused chunk: its octets are read and dropped.
            if let Input::Bdat { left, .. } = &mut self.input {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                self.conn.consume(n as usize);
                return *left == 0;
            }
            return true;
        };
        if let Some(from) = rx.wire_in_body.take() {
            return self
                .take_wire_bytes_in_body(from, max_size, max_header)
                .await;
        }
        // Decoded straight into the in-memory body while the message is still wanted (one
        // copy of each byte fewer); into the scratch buffer once it is refused (then
        // dropped) or spilled (then copied on to the file).
        let body = if rx.refused() {
            None
        } else {
            rx.spool.memory()
        };
        let direct = body.is_some();
        let out = match body {
            Some(body) => body,
            None => {
                rx.decoded.clear();
                &mut rx.decoded
            }
        };
        let start = out.len();
        // Decoding never makes a run longer than its input but for bare line ends made
        // CRLF: one allocation up front instead of the growth of a vector filled byte by
        // byte at every line end.
        out.reserve(input.len());
        let (used, done) = match &mut self.input {
            Input::Data => {
                let used = rx.decoder.decode(input, out);
                (used, rx.decoder.is_done())
            }
            Input::Bdat { left, .. } => {
                // A chunk may end between CR and LF: the scanner keeps the CR pending for
                // the next chunk (or calls it bare at the end of the message).
                let n = (*left).min(input.len() as u64) as usize;
                rx.scanner.scan(&input[..n], out);
                *left -= n as u64;
                (n, *left == 0)
            }
            _ => (0, true),
        };
        let decoded = &out[start..];
        self.conn.consume(used);
        rx.wire_bytes += used as u64;
        rx.got.size += decoded.len() as u64;
        if !rx.headers.is_done() {
            rx.headers.feed(decoded);
            rx.got.header_too_big |= rx.headers.header_bytes() > max_header;
        }
        rx.got.oversize |= rx.got.size > max_size;
        let stored = if direct {
            // A chunk that made the message too big is dropped, as it would not have
            // been appended.
            let keep = rx.refused().then_some(start);
            rx.spool.grown(keep).await
        } else if !rx.refused() {
            rx.spool.append(&rx.decoded).await
        } else {
            Ok(())
        };
        if let Err(e) = stored {
            rx.got.spool_error = Some(e);
        }
        done
    }

    /// The end of the DATA content or of a BDAT chunk: its reply, or the message's.
    pub(super) async fn message_input_done(&mut self) -> Flow {
        let input = std::mem::replace(&mut self.input, Input::Command);
        if let Some(r) = self.chunk_refusal.take() {
            self.push(&r);
            return Flow::Continue;
        }
        let last = match input {
            Input::Bdat { last, .. } => last,
            _ => true,
        };
        if !last {
            let early = self.receiving.as_ref().and_then(|rx| {
                (rx.refused() && rx.got.spool_error.is_none())
                    .then(|| refusal_for_content(&rx.got, rx.anomalies(), rx.normalize))
                    .flatten()
            });
            if let Some((kind, r)) = early {
                // A refused chunk fails the transaction at once (RFC 3030 §4.2); chunks
                // still in the pipeline get the same answer.
                self.note_bad_input(kind, &r);
                self.receiving = None;
                self.conn.set_chunk(COMMAND_CHUNK);
                let r = self.refuse_message(r).await;
                self.failed_chunk = Some(r.clone());
                self.push(&r);
                return Flow::Continue;
            }
            let octets = match input {
                Input::Bdat { size, .. } => size,
                _ => 0,
            };
            self.push(&reply(
                250,
                (2, 0, 0),
                format!("Ok: {octets} octets received"),
            ));
            return Flow::Continue;
        }
        self.conn.set_chunk(COMMAND_CHUNK);
        let Some(mut rx) = self.receiving.take() else {
            return Flow::Continue;
        };
        rx.decoded.clear();
        rx.scanner.finish(&mut rx.decoded);
        if !rx.decoded.is_empty() {
            // A CR left over at the end of the last chunk.
            rx.got.size += rx.decoded.len() as u64;
            let tail = std::mem::take(&mut rx.decoded);
            if !rx.refused()
                && let Err(e) = rx.spool.append(&tail).await
            {
                rx.got.spool_error = Some(e);
            }
        }
        // A full disk must show now (our failure, 452), not later while relaying, where
        // it would look like the upstream's.
        if rx.got.spool_error.is_none()
            && let Err(e) = rx.spool.flush().await
        {
            rx.got.spool_error = Some(e);
        }
        rx.got.anomalies = rx.anomalies();
        let eod = Instant::now();
        let r = Box::pin(self.end_of_message(*rx)).await;
        self.rt.metrics.session.end_of_data(eod.elapsed());
        if r.is_positive() {
            self.failed_chunk = None;
        }
        self.push(&r);
        if std::mem::take(&mut self.close_after_reply) {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Decides a fully received message: limits, content rules, then the upstream.
    async fn end_of_message(&mut self, rx: Receiving) -> Reply {
        let Receiving {
            mut spool,
            got,
            normalize,
            ..
        } = rx;
        if let Some(tx) = self.tx.as_mut() {
            tx.size = got.size;
        }
        self.rt.metrics.session.message_size(got.size);
        if let Some((kind, r)) = refusal_for_content(&got, got.anomalies, normalize) {
            self.note_bad_input(kind, &r);
            return self.refuse_message(r).await;
        }
        if let Some(e) = &got.spool_error {
            return self.local_failure("spool write", e).await;
        }
        // The header index, built once: the rules' view, the forged fields, the edits.
        let index = HeaderIndex::build(spool.head());
        // The rules' view of the headers and the body prefix: only when a data rule will
        // look (copying every field into strings is a tenth of a small message's cost).
        let mut view = if self.rules.has_rules(Stage::Data) {
            index.message_view(spool.head(), self.rt.config.limits.body_scan_limit as usize)
        } else {
            MessageView::default()
        };
        view.size = got.size;
        let want = self.checks_wanted(Stage::Data);
        if want.intersects(Checks::DKIM | Checks::DMARC | Checks::ARC) {
            // DKIM needs the whole message; it is bounded by the size limit.
            match spool.read_all().await {
                Ok(raw) => self.run_checks(want, Some(&raw)).await,
                Err(e) => return self.local_failure("spool read", &e).await,
            }
        } else {
            self.run_checks(want, None).await;
        }
        // Forged copies of our Authentication-Results go first: no filter sees them.
        let mut edits = Edits::new();
        for i in auth_results::forged_fields(&index, self.rt.config.authserv_id()) {
            edits.remove_original(i);
        }
        let filtered = match self.filter_message(&mut spool, &index, &mut edits).await {
            Ok(f) => f,
            Err(e) => return self.local_failure("spool read", &e).await,
        };
        if let Some(refusal) = self.decide(Stage::Data, None, Some(&view)).await {
            return self.refuse_message(refusal).await;
        }
        match self.apply_filter_verdict(filtered.verdict).await {
            Ok(()) => {}
            Err(r) => return r,
        }
        let out = self.outgoing(&index, edits, &filtered.quarantine);
        let Some(up) = self.upstream.as_mut() else {
            self.finish_transaction(TransactionOutcome::UpstreamFailed, None);
            return reply(
                451,
                (4, 4, 1),
                "Error: upstream unavailable, try again later",
            );
        };
        match up.send_message(&out, &mut spool).await {
            Ok(r) if r.code == 250 => {
                self.upstream_in_transaction = false;
                self.finish_transaction(TransactionOutcome::Delivered, Some(&r));
                r
            }
            Ok(r) if r.code == 421 || r.is_positive() => {
                // A 421 is about the upstream's own connection (and names its host); a 2xx
                // other than 250 after the dot is not an acceptance we can vouch for.
                self.upstream_fault("data", &format!("no usable answer to the message: {r}"));
                self.finish_transaction(TransactionOutcome::UpstreamFailed, Some(&r));
                message_not_accepted()
            }
            Ok(r) => {
                self.finish_transaction(upstream_outcome(&r), Some(&r));
                self.reset_upstream().await;
                self.errors += 1;
                r
            }
            Err(e) if e.is_local() => {
                // Our spool failed, not the upstream: its connection stays (after RSET).
                self.local_failure("spool read", &std::io::Error::other(e.to_string()))
                    .await
            }
            Err(e) => {
                self.upstream_fault("data", &e);
                self.finish_transaction(TransactionOutcome::UpstreamFailed, None);
                message_not_accepted()
            }
        }
    }

    /// Our own failure (the spool): the sender retries; not the client's fault, so not
    /// counted as bad input, and not the upstream's, whose connection stays (after RSET).
    async fn local_failure(&mut self, what: &str, e: &std::io::Error) -> Reply {
        self.our_fault(what, e);
        self.finish_transaction(TransactionOutcome::LocalError, None);
        self.reset_upstream().await;
        super::fault::local_error(e)
    }

    /// Refuses the received message (a content limit or a `data` rule): it never reaches
    /// the upstream, whose transaction is reset.
    pub(super) async fn refuse_message(&mut self, r: Reply) -> Reply {
        self.errors += 1;
        self.finish_transaction(refusal_outcome(&r), None);
        self.reset_upstream().await;
        r
    }

    /// The message as it goes upstream: our trace line when the upstream cannot be told
    /// the client any other way (or the client used TLS), our Authentication-Results and
    /// the headers rules asked for above the client's header section, from which forged
    /// copies of our Authentication-Results are removed.
    fn outgoing(&self, index: &HeaderIndex, mut edits: Edits, quarantine: &[String]) -> MessageOut {
        let mut prepend = |field: String| {
            if let Err(e) = edits.prepend_field(&field) {
                // Our own fields are well formed; a rule's header was checked when the
                // rules loaded. Never relay a field that could restructure the header.
                warn!(session = %self.id, error = %e, field = %field.trim_end(), "header field not added");
            }
        };
        let no_client_trace = self
            .upstream
            .as_ref()
            .is_some_and(|u| u.trace == TraceMode::ReceivedHeader);
        if no_client_trace || self.client.tls {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            prepend(crate::relay::trace::received_header(
                &self.identity(),
                &self.rt.config.hostname,
                now,
            ));
        }
        if let Some(tx) = self.tx.as_ref() {
            if self.rt.config.adds_auth_results(&tx.auth) {
                prepend(auth_results::header(
                    self.rt.config.authserv_id(),
                    &tx.auth,
                    self.client.ip,
                    self.helo.as_deref().unwrap_or(""),
                    &tx.sender_text,
                ));
            }
            for h in &tx.add_headers {
                prepend(format!("{h}\r\n"));
            }
        }
        for q in quarantine {
            prepend(super::filters::quarantine_field(q));
        }
        crate::message::rewrite(index, edits)
    }
}

/// DATA or BDAT without an accepted recipient.
fn no_recipients(accepted: usize, tried: usize) -> Option<Reply> {
    if accepted > 0 {
        None
    } else if tried > 0 {
        Some(reply(554, (5, 5, 1), "Error: no valid recipients"))
    } else {
        Some(reply(503, (5, 5, 1), "Error: need RCPT command"))
    }
}

/// `BDAT <size> [LAST]` (RFC 3030 §2): the size, and whether this chunk is the last.
fn parse_bdat(line: &str) -> Option<(u64, bool)> {
    let mut words = line.split(' ');
    let _verb = words.next()?;
    let size = words.next()?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// Limits and content defects found while receiving, with their metric kind.
fn refusal_for_content(
    got: &Received,
    anomalies: Anomalies,
    normalize: bool,
) -> Option<(ProtocolErrorKind, Reply)> {
    if got.oversize {
        return Some((
            ProtocolErrorKind::Size,
            reply(552, (5, 3, 4), "Error: message file too big"),
        ));
    }
    if got.header_too_big {
        return Some((
            ProtocolErrorKind::HeaderSize,
            reply(552, (5, 3, 4), "Error: message header too big"),
        ));
    }
    if !normalize && (anomalies.bare_cr || anomalies.bare_lf) {
        return Some((
            ProtocolErrorKind::BareLineEnd,
            reply(
                550,
                (5, 6, 0),
                "Error: message contains bare CR or bare LF (see RFC 5321 section 2.3.8)",
            ),
        ));
    }
    if !normalize && anomalies.nul {
        return Some((
            ProtocolErrorKind::NulInData,
            reply(550, (5, 6, 0), "Error: message contains NUL characters"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdat_commands() {
        assert_eq!(parse_bdat("BDAT 1000"), Some((1000, false)));
        assert_eq!(parse_bdat("bdat 0 last"), Some((0, true)));
        assert_eq!(parse_bdat("BDAT 12 LAST"), Some((12, true)));
        assert_eq!(parse_bdat("BDAT"), None);
        assert_eq!(parse_bdat("BDAT -1"), None);
        assert_eq!(parse_bdat("BDAT 5 FIRST"), None);
        assert_eq!(parse_bdat("BDAT 5 LAST x"), None);
        assert_eq!(parse_bdat("BDAT 99999999999999999999999"), None);
    }
}
