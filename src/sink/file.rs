//! Files and standard streams as sinks: one JSON document per line, buffered.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {target}: {source}; check the disk and the path's permissions")]
    Io {
        target: String,
        source: std::io::Error,
    },
}

/// Where a line-oriented sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Target {
        if s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Target::Stdout => "<stdout>".into(),
            Target::Stderr => "<stderr>".into(),
            Target::File(p) => p.display().to_string(),
        }
    }
}

pub struct LineSink {
    target: Target,
    w: BufWriter<Box<dyn Write + Send>>,
    pub lines: u64,
}

impl LineSink {
    pub fn open(target: Target) -> Result<LineSink, SinkError> {
        let w: Box<dyn Write + Send> = match &target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => {
                Box::new(std::fs::File::create(p).map_err(|source| SinkError::Io {
                    target: p.display().to_string(),
                    source,
                })?)
            }
        };
        Ok(LineSink {
            target,
            w: BufWriter::with_capacity(1 << 20, w),
            lines: 0,
        })
    }

    pub fn write_line(&mut self, json: &[u8]) -> Result<(), SinkError> {
        self.lines += 1;
        self.w
            .write_all(json)
            .and_then(|_| self.w.write_all(b"\n"))
            .map_err(|source| SinkError::Io {
                target: self.target.name(),
                source,
            })
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.w.flush().map_err(|source| SinkError::Io {
            target: self.target.name(),
            source,
        })
    }
}
