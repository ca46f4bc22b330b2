//! Label values as enums, and the small constructors every area uses.
//!
//! A label's values are declared once, as an enum whose `ALL` lists every variant: the
//! same list counts (a call site can only pass a variant) and creates the series at zero
//! on start, so the two cannot drift apart.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Declares a label-value enum with `ALL` (every variant, in order), `as_str()` (the
/// label value) and `Display`.
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order: the series created at zero.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use label_values;

/// `yes`/`no`, for boolean labels such as `tls`.
pub(crate) fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Registers `c` and hands it back. Names are fixed in the code, so a clash is a bug.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

pub(crate) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registered(registry, c)
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("valid gauge"))
}

pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registered(registry, g)
}

pub(crate) fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    registered(
        registry,
        Histogram::with_opts(opts).expect("valid histogram"),
    )
}

pub(crate) fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    registered(
        registry,
        HistogramVec::new(opts, labels).expect("valid histogram"),
    )
}

label_values! {
    /// How a reload went (`mxguard_rules_reload_total{result}`,
    /// `mxguard_tls_reload_total{result}`).
    pub enum ReloadResult {
        Success => "success",
        /// The new rules or certificate were refused; the old ones stay live.
        Error => "error",
    }
}
