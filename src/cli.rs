//! The command line: `run`, `check`, and `explain`.
//!
//! Flags override the configuration file, which overrides the defaults; the flags below
//! are relied on by operators' scripts and by the test-suite, so their names are stable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, UpstreamConfig};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "mxguard",
    version,
    about = "SMTP filtering proxy in front of Postfix or Sendmail"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(RunArgs),
    /// Validate the configuration and rules; exit 1 with every error located.
    Check(CheckArgs),
    /// Run a client, an envelope and optionally a message through the rules offline and
    /// print every rule evaluated at each stage, whether it matched and why.
    Explain(ExplainArgs),
    /// Inspect and edit greylisting state (a file store only while the server is
    /// stopped: redb locks its file; Redis at any time).
    Greylist(GreylistArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The client's address.
    #[arg(long)]
    pub client_ip: std::net::IpAddr,
    /// The HELO/EHLO name.
    #[arg(long)]
    pub helo: String,
    /// The MAIL FROM address (`""` for the null sender).
    #[arg(long)]
    pub from: String,
    /// A recipient (repeat for several).
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// A message file (.eml) for the `data` stage.
    #[arg(long)]
    pub message: Option<PathBuf>,
    /// Pretend the session is under TLS.
    #[arg(long)]
    pub tls: bool,
    /// Pretend the client authenticated as this user.
    #[arg(long)]
    pub auth_user: Option<String>,
    /// Ask the configured content filters (milters, rspamd) about `--message` too, and
    /// show each one's verdict and modifications; the `data` rules then see them.
    #[arg(long, requires = "message")]
    pub filters: bool,
    /// The listener the session arrives on (for filters limited to listeners); default:
    /// the first configured one.
    #[arg(long)]
    pub listener: Option<String>,
    /// DNS server `ADDR:PORT` for the checks (replaces `dns.servers`); with it, every
    /// check runs and is printed, not only those the rules test.
    #[arg(long)]
    pub dns: Option<SocketAddr>,
}

/// `mxguard check` takes the options every subcommand shares.
pub type CheckArgs = CommonArgs;

/// Options every subcommand shares.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Configuration file (YAML). Without it, built-in defaults apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rules directory (overrides `rules_dir`).
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Listen address (replaces the address of the first listener).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Upstream MTA `host:port` (replaces the configured upstream list).
    #[arg(long)]
    pub upstream: Option<String>,
    /// State directory (spool files, embedded store).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Host name for the banner, EHLO and Received headers.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Greylist and rate-limit store: `memory:`, `file:PATH` (`file:` = the state
    /// directory's `mxguard.redb`), `redis://host:port/db`,
    /// `redis+sentinel://host:port,…/master/db` or `redis+cluster://host:port,…`
    /// (overrides `store`).
    #[arg(long)]
    pub store: Option<crate::store::StoreConfig>,
    /// DNS server `ADDR:PORT` for every check (replaces `dns.servers`).
    #[arg(long)]
    pub dns: Option<SocketAddr>,
}

/// `mxguard greylist`: inspect and edit the greylist store.
#[derive(Debug, Args, Clone)]
pub struct GreylistArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The store (overrides the configuration), as for `run --store`.
    #[arg(long)]
    pub store: Option<crate::store::StoreConfig>,
    /// State directory (for the default file store).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Ask a running server instead (its `metrics` address, with `admin_endpoints: true`):
    /// the way to edit a file store the server has locked.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    #[command(subcommand)]
    pub command: GreylistCommand,
}

#[derive(Debug, Subcommand, Clone)]
pub enum GreylistCommand {
    /// Print every live triplet and client network, one per line.
    List,
    /// Let a triplet (`net|sender|recipient`) or a client network (`192.0.2.0/24`) pass
    /// greylisting for `--ttl`.
    Allow {
        /// A triplet key as `list` prints it, or a client network.
        key: String,
        /// How long the entry lasts.
        #[arg(long, default_value = "35d", value_parser = crate::config::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Remove entries whose key contains PATTERN (every entry without one).
    Purge { pattern: Option<String> },
}

impl GreylistCommand {
    pub fn to_admin(&self) -> crate::admin::AdminCommand {
        use crate::admin::AdminCommand;
        match self {
            GreylistCommand::List => AdminCommand::List,
            GreylistCommand::Allow { key, ttl } => AdminCommand::Allow {
                key: key.clone(),
                ttl: *ttl,
            },
            GreylistCommand::Purge { pattern } => AdminCommand::Purge {
                pattern: pattern.clone().unwrap_or_default(),
            },
        }
    }
}

impl GreylistArgs {
    /// The effective store setting and state directory.
    pub fn store(&self) -> Result<(crate::store::StoreConfig, PathBuf), ConfigError> {
        let cfg = self.common.load()?;
        let store = self.store.clone().unwrap_or(cfg.store);
        let state = self.state.clone().unwrap_or(cfg.state_dir);
        Ok((store, state))
    }
}

impl CommonArgs {
    /// The configuration file (or defaults) with `--rules` applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(rules) = &self.rules {
            cfg.rules_dir = rules.clone();
        }
        Ok(cfg)
    }
}

impl RunArgs {
    /// The effective configuration: file, then flags.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut cfg = self.common.load()?;
        if let Some(listen) = self.listen {
            cfg.listeners[0].address = listen;
        }
        if let Some(up) = &self.upstream {
            let template = cfg.upstreams.first().cloned().unwrap_or_default();
            cfg.upstreams = vec![UpstreamConfig {
                address: up.clone(),
                ..template
            }];
        }
        if let Some(state) = &self.state {
            cfg.state_dir = state.clone();
        }
        if let Some(h) = &self.hostname {
            cfg.hostname = h.clone();
        }
        if let Some(m) = self.metrics {
            cfg.metrics = Some(m);
        }
        if let Some(s) = &self.store {
            cfg.store = s.clone();
        }
        if let Some(dns) = self.dns {
            cfg.dns.servers = vec![dns];
        }
        cfg.validate().map_err(ConfigError)?;
        Ok(cfg)
    }
}
