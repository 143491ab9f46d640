//! The `regwatch` command line.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use regwatch::{config, daemon};

/// Watches container image registries and publishes a CloudEvent to Kafka (or stdout) for every
/// new tag and every tag that moves to a new digest.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format on stderr (default: pretty on a terminal, plain text otherwise). Filter with RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Text,
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        env = "REGWATCH_CONFIG",
        value_name = "FILE"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll every registry and publish changes until SIGTERM.
    Run(ConfigArg),
    /// Scan every registry once, deliver the events, and exit.
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the events that would be emitted; store nothing and publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the live tags of a repository, with digests.
    Tags {
        #[command(flatten)]
        config: ConfigArg,
        /// Registry name from the config.
        registry: String,
        /// Repository path.
        repo: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the repositories a registry's watch set resolves to, live.
    Repos {
        #[command(flatten)]
        config: ConfigArg,
        /// Registry name from the config.
        registry: String,
        /// Print JSON instead of a list.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config, then test each registry's connection and credentials.
    Check(ConfigArg),
}

fn init_logging(format: Option<LogFormat>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Dependencies that log secrets are silenced by a filter of their own, whatever RUST_LOG says
    // (an EnvFilter directive would lose to a more specific one, `yup_oauth2::service_account=debug`,
    // or to a span directive):
    // - yup-oauth2's debug output: Google's token responses and the signed JWT assertion;
    // - the AWS SDK's TRACE events: signed requests whole, session tokens and the container
    //   credentials endpoint's Authorization header;
    // - aws-config's WARNs about a container authorization token that is not a valid header value
    //   (a token file ending in a newline): its container provider prints it as `token`, and
    //   quotes it in its error, which the default chain prints as `error`. regwatch's own error
    //   says why the source failed, without the token.
    let secret_logs = tracing_subscriber::filter::filter_fn(|m| {
        let target = m.target();
        let has = |field: &str| m.fields().field(field).is_some();
        let yup = target.starts_with("yup_oauth2") && *m.level() > tracing::Level::INFO;
        let aws = target.starts_with("aws_") && *m.level() == tracing::Level::TRACE;
        let container_token = (target.starts_with("aws_config::ecs") && has("token"))
            || (target.starts_with("aws_config::meta::credentials::chain") && has("error"));
        !(yup || aws || container_token)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let terminal = std::io::stderr().is_terminal();
    match format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Text
    }) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(secret_logs)
            .init(),
        LogFormat::Pretty => builder
            .with_ansi(terminal)
            .finish()
            .with(secret_logs)
            .init(),
        LogFormat::Text => builder.with_ansi(false).finish().with(secret_logs).init(),
    }
}

fn load(arg: &ConfigArg) -> Result<config::Config, ExitCode> {
    config::load(&arg.config).map_err(|e| {
        eprintln!("regwatch: {}: {e}", arg.config.display());
        ExitCode::from(2)
    })
}

/// Writes a listing to stdout through `print`. A reader that closed the pipe early (`| head`) got
/// what it wanted, so that ends the command quietly and successfully, as with any Unix tool; any
/// other write error is a failure.
fn emit(print: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    match print(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("regwatch: cannot write to stdout: {e}");
            Err(ExitCode::FAILURE)
        }
        _ => Ok(()),
    }
}

fn print_repos(out: &mut dyn Write, repos: &[String], json: bool) -> io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::Value::from(repos.to_vec()));
    }
    if io::stdout().is_terminal() {
        writeln!(out, "REPOSITORY")?;
    }
    for r in repos {
        writeln!(out, "{r}")?;
    }
    Ok(())
}

fn print_tags(out: &mut dyn Write, tags: &[regwatch::registry::Tag], json: bool) -> io::Result<()> {
    let pushed = |t: &regwatch::registry::Tag| {
        t.pushed_at
            .filter(|p| regwatch::event::representable(*p))
            .map(|p| humantime::format_rfc3339_seconds(p).to_string())
    };
    if json {
        let rows: Vec<serde_json::Value> = tags
            .iter()
            .map(|t| serde_json::json!({ "tag": t.name, "digest": t.digest, "pushed_at": pushed(t) }))
            .collect();
        return writeln!(out, "{}", serde_json::Value::from(rows));
    }
    let width = tags.iter().map(|t| t.name.len()).max().unwrap_or(0).max(3);
    if io::stdout().is_terminal() {
        writeln!(out, "{:width$}  {:71}  PUSHED", "TAG", "DIGEST")?;
    }
    for t in tags {
        let digest = t.digest.as_deref().unwrap_or("-");
        match pushed(t) {
            Some(p) => writeln!(out, "{:width$}  {digest:71}  {p}", t.name)?,
            None => writeln!(out, "{:width$}  {digest}", t.name)?,
        }
    }
    Ok(())
}

/// The daemon gets a worker per core, so a slow task never stalls the admin endpoint or the
/// publisher. One-shot commands are a single I/O-bound loop: one thread avoids cross-thread
/// wake-ups and leaves the other cores to the registry when it runs on the same host.
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Run(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regwatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let failed = |e: daemon::RuntimeError| {
            eprintln!("regwatch: {e}");
            ExitCode::FAILURE
        };
        match cli.command {
            Command::Run(c) => {
                let config = load(&c)?;
                daemon::run(&c.config, config).await.map_err(failed)
            }
            Command::Once { config, dry_run } => {
                let config = load(&config)?;
                daemon::once(config, dry_run).await.map_err(failed)
            }
            Command::Check(c) => {
                let config = load(&c)?;
                daemon::check(&config).await.map_err(failed)
            }
            Command::Repos {
                config,
                registry,
                json,
            } => {
                let config = load(&config)?;
                let repos = daemon::repos(&config, &registry).await.map_err(failed)?;
                emit(|out| print_repos(out, &repos, json))
            }
            Command::Tags {
                config,
                registry,
                repo,
                json,
            } => {
                let config = load(&config)?;
                let tags = daemon::tags(&config, &registry, &repo)
                    .await
                    .map_err(failed)?;
                emit(|out| print_tags(out, &tags, json))
            }
        }
    });
    // Dropping the runtime would wait for every blocking task without limit: a librdkafka call
    // stuck on a broker that went away (cluster mode's leave, a producer's last flush) would keep
    // a stopped daemon alive. What such a task had not finished is either in the outbox or, in
    // cluster mode, not recorded and detected again.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
