//! The instruments of the STARTTLS and under-attack benchmarks (issue 14): a load
//! generator (plaintext or STARTTLS, with or without TLS session resumption, latency per
//! message) and a flooder of hostile connections. `benches/bench.sh` (`BENCH=tls`,
//! `BENCH=flood`) runs the built executable:
//!
//! ```text
//! tls_load load --target 127.0.0.1:2525 --ca ca.crt --sessions 10 --messages 2000 \
//!     --size 1024 [--per-conn 1|0] [--no-resume] [--no-tls] [--source 127.0.0.1]
//! tls_load flood --target 127.0.0.1:2525 --connections 5000 [--mix idle=40,drip=30,…]
//! ```
//!
//! Each prints one JSON object on stdout when done (the flood when SIGTERM or `--duration`
//! ends it; it prints `flood: ready …` on stderr once every connection slot has tried to
//! connect).
//!
//! Without a command, as `cargo test --all-targets` and `cargo bench --bench tls_load`
//! run it, the instruments test themselves against the real mxguard binary (see
//! `selftest.rs`). It is a bench target, so none of it is in the shipped binary.

mod client_tls;
mod flood;
mod load;
mod selftest;
mod smtp;
mod source_addr;

#[allow(dead_code)] // the self-test needs the files, not the test helpers' client config
#[path = "../../tests/support/certs.rs"]
mod certs;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tls_load",
    about = "SMTP load generator and flooder for mxguard's benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send a fixed number of messages over N concurrent sessions; print msg/s and latency.
    Load(load::LoadArgs),
    /// Hold hostile connections open until SIGTERM; print what the server did to them.
    Flood(flood::FloodArgs),
}

fn main() -> ExitCode {
    // `cargo bench` appends --bench, `cargo test` may pass test-harness flags: only a
    // command name selects a command, anything else runs the self-test.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let command = args.get(1).map(String::as_str);
    raise_fd_limit();
    let result = match command {
        Some("load" | "flood" | "help" | "--help" | "-h") => match Cli::parse_from(&args).cmd {
            Cmd::Load(a) => run_load(a),
            Cmd::Flood(a) => run_flood(a),
        },
        _ => selftest::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_load(args: load::LoadArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let report = rt.block_on(load::run(args.clone()))?;
    println!("{}", report.to_json(&args));
    Ok(())
}

fn run_flood(args: flood::FloodArgs) -> Result<(), String> {
    // one thread: the flood mostly waits, and it shares the cores with what it measures
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let report = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("SIGTERM handler: {e}"))?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        flood::run(args, Default::default(), stop).await
    })?;
    println!("{report}");
    Ok(())
}

/// Thousands of sockets need more than the usual soft limit of 1,024 descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// For `certs.rs` (shared with the integration tests).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}
