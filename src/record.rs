//! What flows through a lane: the source kinds we map and where a record came from.

use serde::Serialize;
use std::sync::Arc;

/// The audit sources auditnorm has mapping tables for. A closed set: adding one means a table
/// in `mappings/` and a variant here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    #[value(name = "cloudtrail")]
    CloudTrail,
    #[value(name = "gcp_audit")]
    GcpAudit,
    #[value(name = "azure_activity")]
    AzureActivity,
    #[value(name = "k8s_audit")]
    K8sAudit,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::CloudTrail,
        SourceKind::GcpAudit,
        SourceKind::AzureActivity,
        SourceKind::K8sAudit,
    ];

    /// The name used in tables, CLI flags, config and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::CloudTrail => "cloudtrail",
            SourceKind::GcpAudit => "gcp_audit",
            SourceKind::AzureActivity => "azure_activity",
            SourceKind::K8sAudit => "k8s_audit",
        }
    }

    pub fn from_name(s: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a record sits in its lane, precise enough to find it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    File {
        path: Arc<str>,
        /// 1-based line for line-framed input.
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<u64>,
        /// Byte offset of the unit (line or document) in the decompressed stream.
        offset: u64,
        /// Index of the record inside a carrier that holds many (`Records[i]`, `entries[i]`).
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
    Kinesis {
        stream: Arc<str>,
        shard: Arc<str>,
        /// The Kinesis sequence number (a decimal string of up to 129 digits).
        sequence: Arc<str>,
        /// Index of the record inside the unit: a KPL sub-record or a carrier's element.
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
}

impl Position {
    /// The same position, pointing at the i-th record inside this unit.
    pub fn with_index(&self, i: u32) -> Position {
        let mut p = self.clone();
        match &mut p {
            Position::File { index, .. }
            | Position::Kafka { index, .. }
            | Position::Kinesis { index, .. } => *index = Some(i),
        }
        p
    }

    pub fn index(&self) -> Option<u32> {
        match self {
            Position::File { index, .. }
            | Position::Kafka { index, .. }
            | Position::Kinesis { index, .. } => *index,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::File {
                path,
                line,
                offset,
                index,
            } => {
                write!(f, "{path}")?;
                match line {
                    Some(l) => write!(f, ":{l}")?,
                    None => write!(f, " @byte {offset}")?,
                }
                if let Some(i) = index {
                    write!(f, " [record {i}]")?;
                }
                Ok(())
            }
            Position::Kafka {
                topic,
                partition,
                offset,
                index,
            } => {
                write!(f, "{topic}/{partition}@{offset}")?;
                if let Some(i) = index {
                    write!(f, " [record {i}]")?;
                }
                Ok(())
            }
            Position::Kinesis {
                stream,
                shard,
                sequence,
                index,
            } => {
                write!(f, "{stream}/{shard}@{sequence}")?;
                if let Some(i) = index {
                    write!(f, " [record {i}]")?;
                }
                Ok(())
            }
        }
    }
}
