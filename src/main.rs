//! The `auditnorm` command line. Exit codes: 0 when every record became an event or a dead
//! letter, 1 for I/O failures, 2 for usage and configuration errors.

use auditnorm::mapping::Mappings;
use auditnorm::pipeline;
use auditnorm::record::SourceKind;
use auditnorm::replay::{self, ReplayError, ReplayOptions};
use auditnorm::sink::file::Target;
use auditnorm::telemetry::{event, LogFormat};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "auditnorm",
    version,
    about = "Cloud audit logs to OCSF 1.8.0 events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SourceArg {
    Auto,
    #[value(name = "cloudtrail")]
    CloudTrail,
    #[value(name = "gcp_audit")]
    GcpAudit,
    #[value(name = "azure_activity")]
    AzureActivity,
    #[value(name = "k8s_audit")]
    K8sAudit,
}

impl SourceArg {
    fn kind(self) -> Option<SourceKind> {
        match self {
            SourceArg::Auto => None,
            SourceArg::CloudTrail => Some(SourceKind::CloudTrail),
            SourceArg::GcpAudit => Some(SourceKind::GcpAudit),
            SourceArg::AzureActivity => Some(SourceKind::AzureActivity),
            SourceArg::K8sAudit => Some(SourceKind::K8sAudit),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormatArg {
    Json,
    Text,
    Auto,
}

impl LogFormatArg {
    fn format(self) -> LogFormat {
        match self {
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Auto => LogFormat::Auto,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Replay archived audit logs (files, directories, `-` for stdin) into OCSF events.
    Replay {
        /// Files or directories (walked recursively, in sorted order); `-` reads stdin.
        /// Without any, replays the shipped samples in ./samples.
        paths: Vec<String>,
        /// Source of the records; `auto` detects it per record.
        #[arg(long, value_enum, default_value = "auto")]
        source: SourceArg,
        /// Where OCSF events go, one per line; `-` is stdout.
        #[arg(long, short, default_value = "-")]
        output: String,
        /// Where dead letters go, one JSON object per line; stderr when not given.
        #[arg(long)]
        dlq: Option<String>,
        /// A directory of mapping tables (`<source>.toml`) that replace the built-in ones.
        #[arg(long)]
        mappings: Option<PathBuf>,
        /// Never draw a progress bar, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        #[command(flatten)]
        redaction: auditnorm::redaction::RedactionArgs,
    },
    /// Run the always-on pipeline described by a config file (Kafka in, OCSF events out) until
    /// SIGTERM or Ctrl-C. Exit status 1 when a destination stayed unavailable past the retry
    /// budget (nothing committed past it), 2 for configuration errors.
    Run {
        /// The YAML config file (schema: schemas/config.schema.json).
        #[arg(long, short)]
        config: PathBuf,
        /// Log lines on standard error: `json` (one object per line), `text`, or `auto` (text
        /// on a terminal, JSON otherwise). Level: AUDITNORM_LOG or RUST_LOG (default `info`).
        #[arg(long, value_enum, default_value = "auto")]
        log_format: LogFormatArg,
    },
    /// Check the mapping tables (built-in, or those in --mappings) and, with --config, a config
    /// file; lists every problem found and exits non-zero if there is any.
    Validate {
        /// A config file for `auditnorm run`; its `mappings` directory is checked too.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A directory of mapping tables (overrides the config file's `mappings`).
        #[arg(long)]
        mappings: Option<PathBuf>,
    },
    /// Write the JSON Schemas auditnorm publishes into a directory: the config file, the
    /// mapping-table format, the dead-letter format, and the OCSF classes events are checked
    /// against (ocsf/<version>/<class>.json).
    Schema {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

fn load(dir: Option<&std::path::Path>) -> Result<Arc<Mappings>, ExitCode> {
    Mappings::load(dir).map(Arc::new).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay {
            paths,
            source,
            output,
            dlq,
            mappings,
            no_progress,
            redaction,
        } => {
            let mappings = match load(mappings.as_deref()) {
                Ok(m) => m,
                Err(code) => return code,
            };
            let (redactor, notices) = match redaction.build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for n in notices {
                eprintln!("{n}");
            }
            let paths = if paths.is_empty() {
                vec!["samples".to_string()]
            } else {
                paths
            };
            let opts = ReplayOptions {
                paths,
                source: source.kind(),
                output: Target::parse(&output),
                dlq: dlq.as_deref().map(Target::parse).unwrap_or(Target::Stderr),
                progress: !no_progress && std::io::stderr().is_terminal(),
                redactor,
                keep_raw_dead_letters: redaction.keep_raw_dead_letters,
            };
            match replay::run(&opts, mappings) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e @ (ReplayError::Source(_) | ReplayError::Sink(_))) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { config, log_format } => {
            auditnorm::telemetry::init_logging(log_format.format());
            run(&config)
        }
        Command::Validate { config, mappings } => validate(config.as_deref(), mappings),
        Command::Schema { dir } => {
            for (name, schema) in auditnorm::published_schemas() {
                let path = dir.join(name);
                if let Some(parent) = path.parent() {
                    if let Err(e) = std::fs::create_dir_all(parent) {
                        eprintln!("error: cannot create {}: {e}", parent.display());
                        return ExitCode::from(1);
                    }
                }
                match std::fs::write(&path, schema) {
                    Ok(()) => eprintln!("wrote {}", path.display()),
                    Err(e) => {
                        eprintln!("error: cannot write {}: {e}", path.display());
                        return ExitCode::from(1);
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// `auditnorm run --config FILE`.
fn run(config: &std::path::Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("auditnorm")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(event = event::FAILED, error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    // Watch the signals first: a SIGTERM during start-up must stop the pipeline, not kill it.
    let signals = {
        let _enter = runtime.enter();
        Signals::watch()
    };
    let plan = match auditnorm::config::load(config) {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems.0 {
                tracing::error!(
                    event = event::CONFIG_INVALID,
                    config = %config.display(),
                    at = %p.at,
                    problem = %p.message,
                    "not a valid config"
                );
            }
            return ExitCode::from(2);
        }
    };
    for n in &plan.notices {
        tracing::warn!(event = event::CONFIG_NOTICE, "{n}");
    }
    let mappings = match Mappings::load(plan.mappings.as_deref()) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            tracing::error!(event = event::CONFIG_INVALID, error = %e, "mapping tables");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        event = event::STARTING,
        version = env!("CARGO_PKG_VERSION"),
        output = %pipeline::describe(&plan.output),
        dead_letter = %pipeline::describe(&plan.dead_letter),
        metrics = %plan.metrics.as_ref().map_or("off".to_string(), |m| m.listen.to_string()),
        "auditnorm starting"
    );
    let result = runtime.block_on(pipeline::run(&plan, mappings, signals.first()));
    // Lanes and clients are closed by now; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(summary) => {
            tracing::info!(
                event = event::STOPPED,
                records = summary.records,
                events = summary.events,
                dead_letters = summary.dead_letters,
                skipped = summary.skipped,
                lanes = summary.lanes,
                retries = summary.retries,
                elapsed_seconds = summary.elapsed.as_secs_f64(),
                "{summary}"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(event = event::FAILED, error = %e, "pipeline failed");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), watched from start-up on.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must be called inside the runtime.
    fn watch() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind, name| {
            signal(kind)
                .map_err(
                    |e| tracing::warn!(event = event::FAILED, error = %e, "cannot watch {name}"),
                )
                .ok()
        };
        Signals {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            int: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }

    /// Resolves on the first signal; a second one exits at once (status 130).
    async fn first(mut self) {
        self.next().await;
        tracing::info!(
            event = event::STOPPING,
            "stopping: draining in-flight records, then committing (signal again to exit at once)"
        );
        tokio::spawn(async move {
            self.next().await;
            tracing::error!(
                event = event::STOPPED,
                "stopped without draining; uncommitted records will be read again"
            );
            std::process::exit(130);
        });
    }
}

/// `auditnorm validate [--config FILE] [--mappings DIR]`: every problem, then the verdict.
fn validate(config: Option<&std::path::Path>, mappings: Option<PathBuf>) -> ExitCode {
    let mut problems: Vec<String> = Vec::new();
    let mut dir = mappings;
    if let Some(path) = config {
        match auditnorm::config::load(path) {
            Ok(plan) => {
                eprintln!("ok: {}", path.display());
                dir = dir.or(plan.mappings);
            }
            Err(found) => {
                problems.extend(found.0.iter().map(|p| format!("{}: {p}", path.display())));
                // Still check the tables the file names, if it could be read that far.
                if dir.is_none() {
                    dir = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|t| auditnorm::config::parse(&t).ok())
                        .and_then(|c| c.mappings)
                        .map(|m| path.parent().unwrap_or(std::path::Path::new(".")).join(m))
                        .filter(|d| d.is_dir());
                }
            }
        }
    }
    match Mappings::load(dir.as_deref()) {
        Ok(m) => {
            for p in m.plans() {
                eprintln!("ok: {} ({} classes)", p.origin, p.classes.len());
            }
        }
        Err(e) => problems.push(format!("mapping tables: {e}")),
    }
    if problems.is_empty() {
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    eprintln!("{} problem(s) found", problems.len());
    ExitCode::from(2)
}
