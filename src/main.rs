use std::process::ExitCode;

use clap::Parser;
use mxguard::cli::{Cli, Command};
use mxguard::policy::{ExplainInput, RuleSet};
use mxguard::server::Server;
use mxguard::telemetry::{LogFormat, init_logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log_format);
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("mxguard: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mxguard: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result: anyhow::Result<()> = runtime.block_on(async {
                let server = Server::start(config).await?;
                server.run().await?;
                Ok(())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("mxguard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            init_logging(LogFormat::Text);
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            for l in &config.listeners {
                if let Some(files) = &l.tls
                    && let Err(e) = mxguard::tls::ReloadableCert::load(files)
                {
                    eprintln!("listeners {}: {e}", l.name);
                    return ExitCode::FAILURE;
                }
            }
            match RuleSet::load(&config.rules_dir) {
                Ok(rules) => {
                    println!(
                        "ok: configuration valid, {} rules in {} (hash {})",
                        rules.rule_count(),
                        config.rules_dir.display(),
                        rules.content_hash()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain(args) => explain(args),
        Command::Greylist(args) => greylist(args),
    }
}

/// `mxguard greylist list|allow|purge`.
fn greylist(args: mxguard::cli::GreylistArgs) -> ExitCode {
    use mxguard::cli::GreylistCommand;
    use mxguard::store::{AllowTarget, GreyEntry, SystemClock};
    let (store_cfg, state) = match args.store() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mxguard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let store = store_cfg
            .open(&state, std::sync::Arc::new(SystemClock))
            .await
            .map_err(|e| anyhow::anyhow!("store {store_cfg}: {e}"))?;
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
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `mxguard explain`: the offline run of every stage, printed.
fn explain(args: mxguard::cli::ExplainArgs) -> ExitCode {
    let config = match args.common.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rules = match RuleSet::load(&config.rules_dir) {
        Ok(r) => r,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let message = match &args.message {
        Some(path) => match std::fs::read(path) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let mut input = ExplainInput::new(args.client_ip, &args.helo, &args.from, args.to.clone());
    input.message = message.as_deref();
    input.tls = args.tls;
    input.auth_user = args.auth_user.as_deref();
    input.body_scan_limit = config.limits.body_scan_limit as usize;
    print!("{}", rules.explain_session(&input));
    ExitCode::SUCCESS
}
