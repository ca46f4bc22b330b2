//! The upstream's replies as the relay reads them: `relay::reply_reader::ReplyReader`
//! (smtp-proto's receiver and the checks it lacks) fed whatever each read brought, as
//! `relay::Upstream::read_reply` does, then the relay's `reply_fits`.
//!
//! Properties:
//! - no panic, and the same replies (or the same failure) however the bytes are cut
//!   into reads;
//! - every reply read has a code from 200 to 599 (anything else is refused), and an
//!   enhanced code of its class (RFC 3463: 2, 4 or 5; the generic 2.0.0 for a 3xx);
//! - a reply written back as mxguard writes replies (`Reply::write_to`) reads back as
//!   the same reply, every wire line within RFC 5321's 512 octets and no text line
//!   holding a CR, LF or other control character (no reply line injected upstream text);
//! - the relay's fitting (`relay::reply_fits`) lets through, for every command whose
//!   reply is used, only codes 200–599, and only the positive code(s) of that command:
//!   354 to DATA and nothing else positive, 2xx (not 354) to MAIL, RCPT and the dot;
//! - against a naive reading of well-formed replies (CRLF lines `ddd-text` … `ddd
//!   text`, printable text, no malformed enhanced code): the code, every line's text, and the enhanced status code
//!   (when every line has the same valid one that fits the reply: class 2, 4 or 5, the
//!   reply's own) are the upstream's;
//!   lines that carry different codes are not one reply and must be refused.
#![no_main]

use std::ops::RangeInclusive;

#[path = "common.rs"]
mod common;

use common::{chunks, find, sizes_and_payload};
use libfuzzer_sys::fuzz_target;
use mxguard::relay::reply_fits;
use mxguard::relay::reply_reader::{ReplyReader, Step};
use mxguard::reply::{Reply, StatusCode};

fuzz_target!(|data: &[u8]| {
    let (sizes, payload) = sizes_and_payload(data);
    let one = read_replies(&[payload]);
    let many = read_replies(&chunks(payload, sizes));
    assert_eq!(many, one, "reads changed the replies");
    for reply in one.iter().filter_map(|r| r.as_ref().ok()) {
        assert!((200..600).contains(&reply.code), "{reply:?}");
        assert!(
            reply.status.fits(reply.code) || reply.status == StatusCode::generic_for(reply.code),
            "{reply:?}: enhanced code of another class"
        );
        check_fitting(reply.code);
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        check_wire_lines(reply, &wire);
        assert_eq!(
            read_replies(&[&wire]),
            vec![Ok(reply.clone())],
            "{reply:?} written as {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
    if let Some(expected) = naive_first_reply(payload) {
        match (&expected, one.first()) {
            (Naive::Reply(code, status, lines), Some(Ok(got))) => {
                assert_eq!(got.code, *code, "code");
                assert_eq!(got.lines().collect::<Vec<_>>(), &lines[..], "lines");
                if let Some(s) = status {
                    assert_eq!(got.status, *s, "enhanced status code");
                }
            }
            (Naive::MixedCodes, Some(Err(_))) => {}
            (expected, got) => panic!("expected {expected:?}, read {got:?}"),
        }
    }
});

/// Every command whose reply the relay reads, with the positive codes that may answer
/// it (a refusal, 4xx or 5xx, may answer any). QUIT is left out: its reply is dropped.
const FITTING: &[(&str, &[RangeInclusive<u16>])] = &[
    ("banner", &[220..=220]),
    ("starttls", &[220..=220]),
    ("xclient", &[220..=220, 250..=250]),
    ("ehlo", &[250..=250]),
    ("auth", &[235..=235, 334..=334]),
    ("data", &[354..=354]),
    ("mail", &[200..=299]),
    ("rcpt", &[200..=299]),
    ("rset", &[200..=299]),
    ("noop", &[200..=299]),
    ("xforward", &[200..=299]),
    ("end_of_data", &[200..=299]),
];

fn check_fitting(code: u16) {
    for (stage, positive) in FITTING {
        if reply_fits(stage, code) {
            let refusal = (400..600).contains(&code);
            assert!(
                refusal || positive.iter().any(|r| r.contains(&code)),
                "{code} fits {stage}"
            );
        }
    }
}

fn check_wire_lines(reply: &Reply, wire: &[u8]) {
    for line in reply.lines() {
        assert!(
            !line.chars().any(char::is_control),
            "control character in {line:?}"
        );
    }
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), reply.lines().count(), "{wire:?}");
    for line in lines {
        assert!(line.len() <= 512, "wire line of {} octets", line.len());
        assert!(line.ends_with(b"\r\n") && !line[..line.len() - 2].contains(&b'\r'));
    }
}

/// Reads replies one after the other from `reads` as the relay does; stops at the
/// first failure.
fn read_replies(reads: &[&[u8]]) -> Vec<Result<Reply, String>> {
    let mut reader = ReplyReader::default();
    let mut replies = Vec::new();
    for read in reads {
        let mut input = *read;
        while !input.is_empty() {
            let (used, step) = reader.read(input);
            assert!(used <= input.len());
            input = &input[used..];
            match step {
                Step::Reply(reply) => replies.push(Ok(reply)),
                Step::NeedMore => assert!(input.is_empty(), "needs more data with input left"),
                Step::Invalid(detail) => {
                    replies.push(Err(detail));
                    return replies;
                }
            }
        }
    }
    replies
}

#[derive(Debug)]
enum Naive {
    Reply(u16, Option<StatusCode>, Vec<String>),
    MixedCodes,
}

/// The first reply of `input` when it is well formed by a strict reading, else `None`
/// (nothing is asserted about the rest).
fn naive_first_reply(input: &[u8]) -> Option<Naive> {
    let mut lines = Vec::new();
    let mut rest = input;
    loop {
        let end = find(rest, b"\r\n")?;
        let line = std::str::from_utf8(&rest[..end]).ok()?;
        rest = &rest[end + 2..];
        let b = line.as_bytes();
        if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) || !matches!(b[3], b' ' | b'-') {
            return None;
        }
        let text = &line[4..];
        if text.chars().any(char::is_control) || text.len() > 400 {
            return None;
        }
        // smtp-proto reads a malformed enhanced code leniently (`2.0.` as 2.0.0, its
        // text dropped): no strict reading to compare with.
        if enhanced(text).is_none() && text.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return None;
        }
        lines.push((&line[..3], text));
        if b[3] == b' ' {
            break;
        }
    }
    if lines.iter().map(|(_, t)| t.len() + 6).sum::<usize>() > 4000 {
        return None;
    }
    if lines.iter().any(|(c, _)| *c != lines[0].0) {
        return Some(Naive::MixedCodes);
    }
    let code: u16 = lines[0].0.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    // Lines may carry different enhanced codes (smtp-proto keeps the last): only one
    // that every line carries is asserted.
    let first_status = enhanced(lines[0].1).map(|(s, _)| s);
    let same_on_every_line = lines
        .iter()
        .all(|(_, t)| enhanced(t).map(|(s, _)| s) == first_status);
    // Only a code that fits the reply (class 2, 4 or 5, the reply's own) is kept; any
    // other becomes the generic one, which the property above checks.
    let status = first_status.filter(|s| same_on_every_line && s.fits(code));
    let texts = lines
        .iter()
        .map(|(_, t)| enhanced(t).map_or(*t, |(_, text)| text).to_owned())
        .collect();
    Some(Naive::Reply(code, status, texts))
}

/// `class.subject.detail` (RFC 3463: one digit, then one to three digits each) at the
/// start of `text`, followed by a space or the end; and the text after it.
fn enhanced(text: &str) -> Option<(StatusCode, &str)> {
    let (esc, after) = match text.split_once(' ') {
        Some((e, a)) => (e, a),
        None => (text, ""),
    };
    let mut parts = esc.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if parts.next().is_some() || !digits(class, 1) || !digits(subject, 3) || !digits(detail, 3) {
        return None;
    }
    let status = StatusCode(
        class.parse().ok()?,
        subject.parse().ok()?,
        detail.parse().ok()?,
    );
    Some((status, after))
}
