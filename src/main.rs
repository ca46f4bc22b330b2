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
    }
}

/// `mxguard explain`: the offline run of every stage, printed.
fn explain(args: mxguard::cli::ExplainArgs) -> ExitCode {
    let mut config = match args.common.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dns) = args.dns {
        config.dns.servers = vec![dns];
    }
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
    match explain_checks(&config, &rules, &args, message.as_deref()) {
        Ok(auth) => input.auth = auth,
        Err(e) => {
            eprintln!("mxguard: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    print!("{}", rules.explain_session(&input));
    ExitCode::SUCCESS
}

/// The DNS checks for `explain`: every check with `--dns`, otherwise those the rules
/// test. Runs them once, for all stages.
fn explain_checks(
    config: &mxguard::config::Config,
    rules: &RuleSet,
    args: &mxguard::cli::ExplainArgs,
    message: Option<&[u8]>,
) -> anyhow::Result<mxguard::envelope::AuthFacts> {
    use mxguard::envelope::{AuthFacts, Checks, Stage};
    let mut want = Stage::ALL
        .into_iter()
        .fold(Checks::NONE, |w, s| w | rules.needs(s));
    if args.dns.is_some() {
        want = Checks::ALL;
    }
    let mut facts = AuthFacts::default();
    if want.is_empty() {
        return Ok(facts);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = std::sync::Arc::new(config.clone());
        let metrics = std::sync::Arc::new(mxguard::telemetry::Metrics::new());
        let dns = mxguard::dns::Dns::new(&config.dns, metrics.clone())?;
        let checker = mxguard::checks::Checker::new(config.clone(), dns, metrics);
        // Files on disk often have LF line ends; DKIM hashes the CRLF form.
        let crlf = message.map(mxguard::checks::dkim::to_crlf);
        let from = args.from.trim();
        let from = from
            .strip_prefix('<')
            .and_then(|f| f.strip_suffix('>'))
            .unwrap_or(from);
        let input = mxguard::checks::CheckInput {
            ip: args.client_ip,
            helo: Some(&args.helo),
            sender: Some(from),
            message: crlf.as_deref(),
        };
        checker.run(want, &input, &mut facts).await;
        anyhow::Ok(())
    })?;
    Ok(facts)
}
