//! Rate limits for per-event log lines, so a hostile client cannot fill the disk.
//!
//! Some log lines are written once per event a client controls: every refused command,
//! every refused connection, every failed accept. A client that sends junk as fast as it
//! can would otherwise turn its bandwidth into log volume. A [`LogLimiter`] lets the first
//! `burst` lines of each kind through per interval, counts the rest, and writes one
//! summary line per kind and interval ("suppressed K similar lines in the last T s"). The
//! metrics are counted before this and stay exact; only the log is thinned.
//!
//! The limiters are process-wide statics, as the log itself is (tracing's subscriber is
//! global): the session and the listener ask them at their one call site each, without a
//! handle threaded through every constructor.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{Level, info, warn};

/// Per-event lines about refused client input (`refused client input` in the session).
pub static BAD_INPUT: LogLimiter = LogLimiter::new(
    "refused client input",
    Level::INFO,
    10,
    Duration::from_secs(10),
);

/// Lets `burst` lines per kind through per `interval`; counts and summarises the rest.
pub struct LogLimiter {
    /// The message of the lines being limited, named in the summary.
    line: &'static str,
    level: Level,
    burst: u32,
    interval: Duration,
    windows: Mutex<Windows>,
}

impl LogLimiter {
    pub const fn new(line: &'static str, level: Level, burst: u32, interval: Duration) -> Self {
        LogLimiter {
            line,
            level,
            burst,
            interval,
            windows: Mutex::new(Windows::new()),
        }
    }

    /// Whether to write this event's line now. `false`: it was counted, and a summary
    /// line will report it (at the end of the interval, from a timer when running under
    /// tokio, else with the next event of the kind).
    pub fn allow(&'static self, kind: &'static str) -> bool {
        let now = Instant::now();
        let step = self
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .event(kind, now, self.burst, self.interval);
        if let Some(s) = step.summary {
            self.write_summary(&s);
        }
        if let Some(at) = step.flush_at
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                self.flush(kind);
            });
        }
        step.log
    }

    /// The timer's end of a window: its summary, if it suppressed anything.
    fn flush(&self, kind: &'static str) {
        let summary = self
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close(kind, Instant::now(), self.interval);
        if let Some(s) = summary {
            self.write_summary(&s);
        }
    }

    fn write_summary(&self, s: &Summary) {
        let seconds = s.elapsed.as_secs_f64().round() as u64;
        let (line, kind, suppressed) = (self.line, s.kind, s.suppressed);
        if self.level == Level::WARN {
            warn!(
                line,
                kind,
                suppressed,
                seconds,
                "suppressed {suppressed} similar lines in the last {seconds} s"
            );
        } else {
            info!(
                line,
                kind,
                suppressed,
                seconds,
                "suppressed {suppressed} similar lines in the last {seconds} s"
            );
        }
    }
}

/// A summary to write: `suppressed` lines of `kind` over `elapsed`.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    kind: &'static str,
    suppressed: u64,
    elapsed: Duration,
}

/// What one event leads to.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    /// Write the event's own line.
    log: bool,
    /// The previous window's summary, to write first.
    summary: Option<Summary>,
    /// Schedule the window's summary for this time (its first suppressed event).
    flush_at: Option<Instant>,
}

struct Window {
    kind: &'static str,
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// The windows of every kind seen (a handful: the kinds are a fixed set of names).
struct Windows(Vec<Window>);

impl Windows {
    const fn new() -> Self {
        Windows(Vec::new())
    }

    fn window(&mut self, kind: &'static str, now: Instant) -> &mut Window {
        let i = match self.0.iter().position(|w| w.kind == kind) {
            Some(i) => i,
            None => {
                self.0.push(Window {
                    kind,
                    start: now,
                    logged: 0,
                    suppressed: 0,
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    fn event(&mut self, kind: &'static str, now: Instant, burst: u32, interval: Duration) -> Step {
        let w = self.window(kind, now);
        let mut summary = None;
        if now.duration_since(w.start) >= interval {
            summary = take_summary(w, now);
            w.start = now;
            w.logged = 0;
        }
        if w.logged < burst {
            w.logged += 1;
            return Step {
                log: true,
                summary,
                flush_at: None,
            };
        }
        w.suppressed += 1;
        Step {
            log: false,
            summary,
            flush_at: (w.suppressed == 1).then(|| w.start + interval),
        }
    }

    /// Ends the window of `kind` if it is over, returning its summary (`None` while it
    /// runs: an event already started a new one, whose own timer reports it).
    fn close(&mut self, kind: &'static str, now: Instant, interval: Duration) -> Option<Summary> {
        let w = self.0.iter_mut().find(|w| w.kind == kind)?;
        if w.suppressed == 0 || now < w.start + interval {
            return None;
        }
        let s = take_summary(w, now);
        w.start = now;
        w.logged = 0;
        s
    }
}

fn take_summary(w: &mut Window, now: Instant) -> Option<Summary> {
    let suppressed = std::mem::take(&mut w.suppressed);
    (suppressed > 0).then(|| Summary {
        kind: w.kind,
        suppressed,
        elapsed: now.duration_since(w.start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn burst_per_kind_then_counted_then_one_summary() {
        let t0 = Instant::now();
        let mut w = Windows::new();
        let logged = (0..5).filter(|_| w.event("a", t0, 3, SEC).log).count();
        assert_eq!(logged, 3);
        // another kind has its own budget
        assert!(w.event("b", t0, 3, SEC).log);
        // the first suppressed event of a window schedules its summary
        let t1 = t0 + Duration::from_millis(500);
        let s = w.event("a", t1, 3, SEC);
        assert_eq!((s.log, s.flush_at), (false, None));
        // the timer: 3 suppressed lines of "a" in the window
        assert_eq!(w.close("a", t0 + Duration::from_millis(999), SEC), None);
        let summary = w.close("a", t0 + SEC, SEC).unwrap();
        assert_eq!((summary.kind, summary.suppressed), ("a", 3));
        assert_eq!(w.close("a", t0 + SEC, SEC), None, "reported once");
        assert_eq!(w.close("b", t0 + SEC, SEC), None, "nothing suppressed");
    }

    #[test]
    fn first_suppression_schedules_the_flush_at_the_window_end() {
        let t0 = Instant::now();
        let mut w = Windows::new();
        assert!(w.event("a", t0, 1, SEC).log);
        assert_eq!(w.event("a", t0, 1, SEC).flush_at, Some(t0 + SEC));
        assert_eq!(w.event("a", t0, 1, SEC).flush_at, None);
    }

    #[test]
    fn without_a_timer_the_next_window_reports_the_last() {
        let t0 = Instant::now();
        let mut w = Windows::new();
        for _ in 0..4 {
            w.event("a", t0, 1, SEC);
        }
        let s = w.event("a", t0 + 2 * SEC, 1, SEC);
        assert!(s.log, "a new window has a new budget");
        let summary = s.summary.unwrap();
        assert_eq!(summary.suppressed, 3);
        assert_eq!(summary.elapsed, 2 * SEC);
    }

    #[test]
    fn counts_are_exact_under_a_flood() {
        let t0 = Instant::now();
        let mut w = Windows::new();
        let (mut logged, mut reported) = (0u64, 0u64);
        for i in 0..100_000u64 {
            // 10,000 events per second for 10 s
            let s = w.event("flood", t0 + Duration::from_micros(i * 100), 10, SEC);
            logged += u64::from(s.log);
            reported += s.summary.map_or(0, |s| s.suppressed);
        }
        reported += w
            .close("flood", t0 + 11 * SEC, SEC)
            .map_or(0, |s| s.suppressed);
        assert_eq!(logged + reported, 100_000);
        assert_eq!(logged, 100, "10 lines in each of 10 windows");
    }
}
