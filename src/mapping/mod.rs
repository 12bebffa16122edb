//! Mapping tables: loading (built-in, or a directory that overrides them), compiling into
//! plans, and picking the plan for a record.
//!
//! `table.rs` is the file format, `plan.rs` compiles it, `engine.rs` runs it.

pub mod engine;
pub mod extract;
pub mod plan;
pub mod skeleton;
pub mod table;

pub use engine::{Input, Scratch};
pub use plan::{Plan, TableError};

use crate::record::SourceKind;
use std::path::{Path, PathBuf};

/// The tables built into the binary, so that it runs with no files beside it.
fn builtin(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::CloudTrail => include_str!("../../mappings/cloudtrail.toml"),
        SourceKind::GcpAudit => include_str!("../../mappings/gcp_audit.toml"),
        SourceKind::AzureActivity => include_str!("../../mappings/azure_activity.toml"),
        SourceKind::K8sAudit => include_str!("../../mappings/k8s_audit.toml"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("cannot read mapping table {path}: {source}; check --mappings points at a directory of <source>.toml files")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One compiled plan per source kind that has a table.
#[derive(Debug)]
pub struct Mappings {
    plans: Vec<Plan>,
}

impl Mappings {
    /// Loads the built-in tables; a table file in `dir` (named `<source>.toml`) replaces the
    /// built-in one of its source.
    pub fn load(dir: Option<&Path>) -> Result<Mappings, LoadError> {
        let mut plans = Vec::new();
        for kind in SourceKind::ALL {
            let file = format!("{}.toml", kind.as_str());
            if let Some(path) = dir.map(|d| d.join(&file)).filter(|p| p.exists()) {
                let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                    path: path.clone(),
                    source,
                })?;
                plans.push(plan::compile(kind, &path.display().to_string(), &text)?);
            } else {
                plans.push(plan::compile(
                    kind,
                    &format!("mappings/{file}"),
                    builtin(kind),
                )?);
            }
        }
        Ok(Mappings { plans })
    }

    pub fn plan(&self, kind: SourceKind) -> Option<&Plan> {
        self.plans.iter().find(|p| p.source == kind)
    }

    /// The first table whose `detect` condition accepts the record.
    pub fn detect(&self, input: Input<'_, '_>) -> Option<&Plan> {
        self.plans.iter().find(|p| p.detects(input))
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }
}
