//! Hostile input never crashes or wedges the proxy: sessions of seeded random bytes mixed
//! with SMTP fragments (long lines, NUL, bare CR/LF, dots, pipelined commands, DATA in odd
//! places) each end with a reply or a close, and afterwards the same process still relays a
//! normal message. Deterministic: the seed is fixed, so a failure reproduces.

mod support;

use std::time::Duration;

use support::client::RawClient;
use support::fake_upstream::{FakeUpstream, Script};
use support::mxguard::{MxGuard, MxOpts};

/// xorshift64*: a tiny deterministic generator, enough for fuzz-style inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FRAGMENTS: &[&[u8]] = &[
    b"EHLO x\r\n",
    b"HELO [1.2.3.4]\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@example.org> SIZE=99999999999999999999\r\n",
    b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"RCPT TO:<\"q uoted\"@example.net> NOTIFY=NEVER\r\n",
    b"DATA\r\n",
    b"BDAT 10 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY root\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"STARTTLS\r\n",
    b"XCLIENT ADDR=1.2.3.4\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"..\r\n",
    b"\x00\x00\r\n",
    b"MAIL\x00FROM:<a@b>\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\xff\xfe\x80\r\n",
    b"QUIT\r\n",
];

fn session_bytes(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(40) + 1 {
        match rng.below(4) {
            0 => {
                let n = rng.below(3000);
                out.extend((0..n).map(|_| rng.next() as u8));
            }
            1 => out.extend(std::iter::repeat_n(b'A', rng.below(5000))),
            _ => out.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]),
        }
    }
    out
}

#[test]
fn random_input_gets_answers_and_the_proxy_survives() {
    let up = FakeUpstream::start(Script::default());
    let config =
        "limits:\n  command_timeout: 2s\n  hard_error_limit: 1000\n  junk_command_limit: 1000\n";
    let mut mx = MxGuard::start(MxOpts::new(up.addr).config(config));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..150 {
        let mut c = RawClient::connect(mx.addr);
        let bytes = session_bytes(&mut rng);
        // The server may close early (QUIT, limits, BDAT): a write error is fine.
        for chunk in bytes.chunks(rng.below(700) + 1) {
            if c.try_send(chunk).is_err() {
                break;
            }
        }
        let _ = c.try_send(b"\r\n.\r\nQUIT\r\n");
        assert!(
            c.closed_within(Duration::from_secs(15)),
            "session {i} neither answered QUIT nor closed"
        );
        if let Err(e) = mx.check_alive() {
            panic!("mxguard died on session {i}: {e}\n{}", mx.log());
        }
    }
    // Still serving, and still relaying exactly what a normal client sends.
    let before = up.accepted().len();
    let mut c = RawClient::connect(mx.addr);
    c.ehlo("client.example");
    let codes: Vec<u16> = c
        .transaction(
            "a@example.org",
            &["b@example.net"],
            b"Subject: after the storm\r\n\r\nok\r\n",
        )
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [250, 250, 354, 250]);
    let after = up.accepted();
    assert_eq!(after.len(), before + 1);
    assert!(
        after
            .last()
            .unwrap()
            .content()
            .starts_with(b"Subject: after the storm")
    );
    assert!(!mx.log().contains("panicked"), "{}", mx.log());
}
