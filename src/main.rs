//! The `mxguard` command: parses the command line and runs one subcommand. Errors are
//! printed once, here, with their context; the library never exits the process.

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Parser;
use mxguard::cli::{CheckArgs, Cli, Command, ExplainArgs, GreylistArgs, GreylistCommand, RunArgs};
use mxguard::policy::{ExplainInput, RuleSet};
use mxguard::server::Server;
use mxguard::telemetry::{LogFormat, init_logging};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Explain(args) => explain(args),
        Command::Greylist(args) => greylist(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A tokio runtime for one subcommand: multi-threaded for the server, one thread for tools.
fn runtime(multi_thread: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `mxguard run`: until SIGTERM.
fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let config = args.config()?;
    runtime(true)?.block_on(async {
        let server = Server::start(config).await?;
        server.run().await?;
        Ok(())
    })
}

/// `mxguard check`: the configuration, the TLS files and every rule file.
fn check(args: CheckArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let config = args.load()?;
    for l in &config.listeners {
        if let Some(files) = &l.tls {
            mxguard::tls::ReloadableCert::load(files)
                .with_context(|| format!("listeners {}", l.name))?;
        }
    }
    if !config.rules_dir.exists() {
        println!(
            "ok: configuration valid; rules directory {} does not exist (no rules)",
            config.rules_dir.display()
        );
        return Ok(());
    }
    let rules = RuleSet::load(&config.rules_dir).map_err(|errors| {
        // One `file:line:column: message` line per error, as editors and CI parse them.
        eprintln!("{errors}");
        anyhow!(
            "{} error(s) in {}",
            errors.0.len(),
            config.rules_dir.display()
        )
    })?;
    println!(
        "ok: configuration valid, {} rules in {} (hash {})",
        rules.rule_count(),
        config.rules_dir.display(),
        rules.content_hash()
    );
    Ok(())
}

/// `mxguard greylist list|allow|purge`.
fn greylist(args: GreylistArgs) -> anyhow::Result<()> {
    use mxguard::store::{AllowTarget, GreyEntry, SystemClock};
    let (store_cfg, state) = args.store()?;
    runtime(false)?.block_on(async {
        let store = store_cfg
            .open(&state, std::sync::Arc::new(SystemClock))
            .await
            .map_err(|e| anyhow!("store {store_cfg}: {e}"))?;
        match &args.command {
            GreylistCommand::List => {
                let mut entries = store.list().await?;
                entries.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                for e in entries {
                    match e {
                        GreyEntry::Triplet { key, record } => println!(
                            "triplet {key} {} first_seen={} expires={}",
                            if record.passed { "passed" } else { "pending" },
                            record.first_seen / 1_000_000,
                            record.expires / 1_000_000
                        ),
                        GreyEntry::Network { net, record } => println!(
                            "network {net} passes={} expires={}",
                            record.passes,
                            record.expires / 1_000_000
                        ),
                    }
                }
            }
            GreylistCommand::Allow { key, ttl } => {
                let target = if key.contains('|') {
                    AllowTarget::Triplet(key.clone())
                } else {
                    let net: mxguard::config::IpNet =
                        key.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                    AllowTarget::Network(net.to_string())
                };
                store.allow(&target, *ttl).await?;
                println!("allowed {key}");
            }
            GreylistCommand::Purge { pattern } => {
                let n = store.purge(pattern.as_deref().unwrap_or("")).await?;
                println!("purged {n} entries");
            }
        }
        Ok(())
    })
}

/// `mxguard explain`: the offline run of every stage, printed.
fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let config = args.common.load()?;
    let rules = RuleSet::load(&config.rules_dir).map_err(|errors| anyhow!("{errors}"))?;
    let message = match &args.message {
        Some(path) => Some(std::fs::read(path).with_context(|| path.display().to_string())?),
        None => None,
    };
    let mut input = ExplainInput::new(args.client_ip, &args.helo, &args.from, args.to.clone());
    input.message = message.as_deref();
    input.tls = args.tls;
    input.auth_user = args.auth_user.as_deref();
    input.body_scan_limit = config.limits.body_scan_limit as usize;
    print!("{}", rules.explain_session(&input));
    Ok(())
}
