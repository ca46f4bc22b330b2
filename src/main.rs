use std::process::ExitCode;

use clap::Parser;
use mxguard::cli::{Cli, Command};
use mxguard::server::{Server, load_rules};
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
            match load_rules(&config.rules_dir) {
                Ok(rules) => {
                    println!(
                        "ok: configuration valid, {} rules in {}",
                        rules.rule_count(),
                        config.rules_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
