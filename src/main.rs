//! The `auditnorm` command line. Exit codes: 0 when every record became an event or a dead
//! letter, 1 for I/O failures, 2 for usage and configuration errors.

use auditnorm::mapping::Mappings;
use auditnorm::record::SourceKind;
use auditnorm::replay::{self, ReplayError, ReplayOptions};
use auditnorm::sink::file::Target;
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
    /// Check the mapping tables (built-in, or those in --mappings) and exit.
    Validate {
        #[arg(long)]
        mappings: Option<PathBuf>,
    },
    /// Write the JSON Schemas auditnorm publishes (the dead-letter format) into a directory.
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
        Command::Validate { mappings } => match load(mappings.as_deref()) {
            Ok(m) => {
                for p in m.plans() {
                    eprintln!("ok: {} ({} classes)", p.origin, p.classes.len());
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Schema { dir } => {
            let path = dir.join("dead-letter.schema.json");
            match std::fs::write(&path, auditnorm::dlq::json_schema()) {
                Ok(()) => {
                    eprintln!("wrote {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}
