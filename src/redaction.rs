//! The redaction settings a user gives (rule files, where the hash key comes from, whether
//! dead letters keep raw bytes) and how they become a `Redactor`. The rules themselves and the
//! matching live in `redact.rs`.

use crate::redact::{Redactor, RuleSetError};
use std::path::PathBuf;

/// Command-line flags, shared by the commands that normalize records.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedactionArgs {
    /// A TOML file of redaction rules added to the built-in set (repeatable); it can also
    /// disable built-in rules by name.
    #[arg(long = "redaction-rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Use only the rules given with --redaction-rules, not the built-in set.
    #[arg(long)]
    pub no_builtin_redaction_rules: bool,
    /// Environment variable holding the key for keyed-hash replacements
    /// (`[REDACTED:<rule>:<8 hex>]`), so one secret can be correlated across events.
    #[arg(long, value_name = "VAR", conflicts_with = "redaction_hash_key_file")]
    pub redaction_hash_key_env: Option<String>,
    /// File holding that key (the config file itself never holds it).
    #[arg(long, value_name = "FILE")]
    pub redaction_hash_key_file: Option<PathBuf>,
    /// Keep dead letters' original bytes unredacted (for a locked-down dead-letter queue).
    #[arg(long)]
    pub keep_raw_dead_letters: bool,
    /// Turn redaction off entirely (benchmarks, mapping development on synthetic data).
    #[arg(long)]
    pub no_redaction: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RedactionSetupError {
    #[error("cannot read redaction rules {path}: {source}; check the path")]
    Rules {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("redaction hash key: environment variable {0} is not set or empty; export it or drop --redaction-hash-key-env")]
    KeyEnv(String),
    #[error(
        "cannot read redaction hash key file {path}: {source}; check the path and its permissions"
    )]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    RuleSet(#[from] RuleSetError),
}

impl RedactionArgs {
    /// The redactor these settings describe (`None` when redaction is off), and the notices a
    /// user must see at start (redaction off, raw dead letters).
    pub fn build(&self) -> Result<(Option<Redactor>, Vec<String>), RedactionSetupError> {
        let mut notices = Vec::new();
        if self.no_redaction {
            notices.push(
                "WARNING: redaction is OFF (--no-redaction): secrets in audit payloads go out as they are"
                    .to_string(),
            );
            return Ok((None, notices));
        }
        if self.keep_raw_dead_letters {
            notices.push(
                "WARNING: dead letters keep their raw, UNREDACTED bytes (--keep-raw-dead-letters): \
                 the dead-letter destination must be locked down"
                    .to_string(),
            );
        }
        let key = match (&self.redaction_hash_key_env, &self.redaction_hash_key_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                _ => return Err(RedactionSetupError::KeyEnv(var.clone())),
            },
            (None, Some(path)) => Some(
                std::fs::read(path)
                    .map(|mut k| {
                        while k.last().is_some_and(|b| b.is_ascii_whitespace()) {
                            k.pop();
                        }
                        k
                    })
                    .map_err(|source| RedactionSetupError::KeyFile {
                        path: path.clone(),
                        source,
                    })?,
            ),
            (None, None) => None,
        };
        if self.rules.is_empty() && !self.no_builtin_redaction_rules && key.is_none() {
            return Ok((Some(Redactor::builtin()), notices));
        }
        let mut overrides = Vec::new();
        for path in &self.rules {
            let text =
                std::fs::read_to_string(path).map_err(|source| RedactionSetupError::Rules {
                    path: path.clone(),
                    source,
                })?;
            overrides.push((path.display().to_string(), text));
        }
        let r = Redactor::from_sources(!self.no_builtin_redaction_rules, &overrides, key)?;
        Ok((Some(r), notices))
    }
}
