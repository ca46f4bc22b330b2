//! How the upstream learns who the real client is: XCLIENT, XFORWARD, or a `Received:`
//! header of our own — each value encoded for its place.

use std::net::IpAddr;

use crate::config::canonical_ip;

/// The client's identity as the upstream should see it.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub ip: IpAddr,
    pub port: u16,
    /// The client's HELO/EHLO argument.
    pub helo: String,
    /// Whether the client used EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    pub tls: bool,
    /// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384` when the client used TLS (for our trace line).
    pub tls_description: Option<String>,
    pub auth_user: Option<String>,
    /// Our session id, used as the `id` of a Received header.
    pub session_id: String,
}

impl ClientIdentity {
    /// The protocol name Postfix would log: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA.
    pub fn protocol(&self) -> String {
        if !self.esmtp {
            return "SMTP".into();
        }
        let mut p = String::from("ESMTP");
        if self.tls {
            p.push('S');
        }
        if self.auth_user.is_some() {
            p.push('A');
        }
        p
    }

    /// `192.0.2.1` or `IPV6:2001:db8::1` as XCLIENT and XFORWARD want it.
    fn addr_attribute(&self) -> String {
        match canonical_ip(self.ip) {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("IPV6:{v6}"),
        }
    }
}

/// Encodes a value as xtext (RFC 3461 §4): `+` and `=` and anything outside `!`..`~`
/// become `+XX`. The result is at most `max` octets, cut at a character boundary of the
/// encoding (never in the middle of a `+XX`).
pub fn xtext(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len());
    push_xtext(&mut out, value, max);
    out
}

/// [`xtext`], appended to `out`.
fn push_xtext(out: &mut String, value: &str, max: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut len = 0;
    for &b in value.as_bytes() {
        let plain = (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=';
        len += if plain { 1 } else { 3 };
        if len > max {
            break;
        }
        if plain {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// The XCLIENT or XFORWARD attributes an upstream offered, of those we send: a set of
/// flags, as every pooled connection reads the EHLO reply twice and the attribute list
/// is only ever asked "is this one offered?".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attributes(u8);

impl Attributes {
    pub const ADDR: Attributes = Attributes(1);
    pub const PORT: Attributes = Attributes(2);
    pub const NAME: Attributes = Attributes(4);
    pub const HELO: Attributes = Attributes(8);
    pub const PROTO: Attributes = Attributes(16);
    pub const LOGIN: Attributes = Attributes(32);
    const NAMED: [(&str, Attributes); 6] = [
        ("ADDR", Attributes::ADDR),
        ("PORT", Attributes::PORT),
        ("NAME", Attributes::NAME),
        ("HELO", Attributes::HELO),
        ("PROTO", Attributes::PROTO),
        ("LOGIN", Attributes::LOGIN),
    ];

    /// The attributes among `words` (any case); ones we never send are left out.
    pub fn from_words<'w>(words: impl IntoIterator<Item = &'w str>) -> Self {
        let mut set = Attributes::default();
        for word in words {
            if let Some((_, a)) = Self::NAMED
                .iter()
                .find(|(n, _)| word.eq_ignore_ascii_case(n))
            {
                set.0 |= a.0;
            }
        }
        set
    }

    pub fn contains(self, a: Attributes) -> bool {
        self.0 & a.0 == a.0
    }

    /// The name of one attribute, as the command writes it.
    fn name(self) -> &'static str {
        Self::NAMED
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("", |(n, _)| n)
    }
}

/// The XCLIENT command for the attributes the upstream advertised (ADDR, PORT, NAME,
/// HELO, PROTO and LOGIN when known). Each value ≤ 255 octets.
pub fn xclient_command(id: &ClientIdentity, offered: Attributes) -> String {
    attribute_command("XCLIENT", id, offered, true)
}

/// The XFORWARD command (Postfix XFORWARD_README), sent before each MAIL.
pub fn xforward_command(id: &ClientIdentity, offered: Attributes) -> String {
    attribute_command("XFORWARD", id, offered, false)
}

/// `VERB NAME=value …` with the client's attributes that the upstream offered, each
/// value xtext-encoded and at most 255 octets, written straight into the command. We do
/// no reverse lookup ourselves, so NAME is `[UNAVAILABLE]` and the upstream shows
/// "unknown".
fn attribute_command(verb: &str, id: &ClientIdentity, offered: Attributes, login: bool) -> String {
    let mut cmd = String::with_capacity(128);
    cmd.push_str(verb);
    let mut attribute = |a: Attributes, value: &str, encode: bool| {
        if offered.contains(a) {
            cmd.push(' ');
            cmd.push_str(a.name());
            cmd.push('=');
            if encode {
                push_xtext(&mut cmd, value, 255);
            } else {
                cmd.push_str(value);
            }
        }
    };
    attribute(Attributes::ADDR, &id.addr_attribute(), true);
    attribute(Attributes::PORT, &id.port.to_string(), false);
    attribute(Attributes::NAME, "[UNAVAILABLE]", false);
    attribute(Attributes::HELO, &id.helo, true);
    let proto = if id.esmtp { "ESMTP" } else { "SMTP" };
    attribute(Attributes::PROTO, proto, false);
    if login && let Some(user) = &id.auth_user {
        attribute(Attributes::LOGIN, user, true);
    }
    cmd.push_str("\r\n");
    cmd
}

/// A `Received:` trace header for the client hop: for upstreams that take neither XCLIENT
/// nor XFORWARD (e.g. Sendmail), and for clients that used TLS (XCLIENT cannot tell
/// Postfix about TLS, so its own trace line would say plain `ESMTP`). The HELO name is
/// reduced to printable non-space ASCII so a client cannot fold new header fields into
/// ours.
pub fn received_header(id: &ClientIdentity, our_hostname: &str, unix_time: i64) -> String {
    let helo: String = id
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let helo = if helo.is_empty() {
        "unknown".to_owned()
    } else {
        helo
    };
    let literal = match canonical_ip(id.ip) {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let date = rfc5322_date(unix_time);
    let tls = match &id.tls_description {
        Some(desc) => {
            let desc: String = desc
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .filter(|c| *c != '(' && *c != ')')
                .collect();
            format!("\t(using {desc})\r\n")
        }
        None => String::new(),
    };
    format!(
        "Received: from {helo} ({literal})\r\n{tls}\tby {our_hostname} (mxguard) with {} id {};\r\n\t{date}\r\n",
        id.protocol(),
        id.session_id
    )
}

/// An RFC 5322 §3.3 date-time in UTC, `Thu, 1 Jan 1970 00:00:00 +0000`, for the date
/// of our trace line.
pub fn rfc5322_date(unix_time: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_time.div_euclid(86_400);
    let secs = unix_time.rem_euclid(86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{}, {day} {} {year:04} {:02}:{:02}:{:02} +0000",
        // Day 0, 1 January 1970, was a Thursday.
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[month as usize - 1],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The proleptic Gregorian (year, month 1–12, day 1–31) of a day counted from
/// 1970-01-01. Counts in 400-year eras (146,097 days each) of years that start on
/// 1 March, so the leap day is the last day of a year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc5322_in_utc() {
        // Expected values from Python's datetime (an independent calendar).
        for (t, want) in [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (86_399, "Thu, 1 Jan 1970 23:59:59 +0000"),
            (-1, "Wed, 31 Dec 1969 23:59:59 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (951_868_799, "Tue, 29 Feb 2000 23:59:59 +0000"),
            (1_000_000_000, "Sun, 9 Sep 2001 01:46:40 +0000"),
            (1_709_209_696, "Thu, 29 Feb 2024 12:28:16 +0000"),
            (1_735_689_599, "Tue, 31 Dec 2024 23:59:59 +0000"),
            (2_147_483_648, "Tue, 19 Jan 2038 03:14:08 +0000"),
            // 2100 is not a leap year: 28 February, then 1 March.
            (4_107_456_000, "Sun, 28 Feb 2100 00:00:00 +0000"),
            (4_107_542_400, "Mon, 1 Mar 2100 00:00:00 +0000"),
            (4_107_628_800, "Tue, 2 Mar 2100 00:00:00 +0000"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 +0000"),
        ] {
            assert_eq!(rfc5322_date(t), want, "{t}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        let mut prev = civil_date(-1);
        assert_eq!(prev, (1969, 12, 31));
        for days in 0..146_097 {
            let (y, m, d) = civil_date(days);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                (y, m, d) == next_day || (y, m, d) == next_month || (y, m, d) == next_year,
                "{prev:?} then {:?}",
                (y, m, d)
            );
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            assert!(d <= month_len[m as usize - 1], "{y}-{m}-{d}");
            if (y, m, d) != next_day {
                assert_eq!(
                    prev.2,
                    month_len[prev.1 as usize - 1],
                    "{prev:?} ends its month"
                );
            }
            prev = (y, m, d);
        }
        assert_eq!(prev, (2369, 12, 31));
    }

    fn ident(ip: &str, helo: &str) -> ClientIdentity {
        ClientIdentity {
            ip: ip.parse().unwrap(),
            port: 40000,
            helo: helo.into(),
            esmtp: true,
            tls: false,
            tls_description: None,
            auth_user: None,
            session_id: "abc123".into(),
        }
    }

    #[test]
    fn xtext_escapes_plus_equals_and_controls() {
        assert_eq!(xtext("a+b=c d\u{7f}", 255), "a+2Bb+3Dc+20d+7F");
        assert_eq!(xtext("ok.example", 255), "ok.example");
        // Never cuts an escape in half.
        assert_eq!(xtext("ab+", 4), "ab");
        assert_eq!(xtext(&"x".repeat(300), 255).len(), 255);
    }

    #[test]
    fn xclient_sends_only_offered_attributes() {
        let offered = Attributes::from_words(["NAME", "addr", "PORT", "PROTO", "HELO", "TTL"]);
        let cmd = xclient_command(&ident("::ffff:192.0.2.7", "mail x=y"), offered);
        assert_eq!(
            cmd,
            "XCLIENT ADDR=192.0.2.7 PORT=40000 NAME=[UNAVAILABLE] HELO=mail+20x+3Dy PROTO=ESMTP\r\n"
        );
        let v6 = xclient_command(&ident("2001:db8::1", "h"), Attributes::ADDR);
        assert_eq!(v6, "XCLIENT ADDR=IPV6:2001:db8::1\r\n");
    }

    #[test]
    fn received_header_cannot_be_folded_by_helo() {
        let h = received_header(&ident("192.0.2.1", "evil\r\nX-Injected: 1"), "mx.test", 0);
        assert!(h.starts_with("Received: from evilX-Injected:1 ([192.0.2.1])\r\n\tby mx.test (mxguard) with ESMTP id abc123;\r\n\t"));
        assert_eq!(h.matches("\r\n").count(), 3);
    }

    #[test]
    fn received_header_carries_the_clients_tls() {
        let mut id = ident("192.0.2.1", "client.example");
        id.tls = true;
        id.tls_description = Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into());
        let h = received_header(&id, "mx.test", 0);
        assert!(
            h.starts_with("Received: from client.example ([192.0.2.1])\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tby mx.test (mxguard) with ESMTPS id abc123;"),
            "{h}"
        );
    }
}
