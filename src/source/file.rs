//! Archived files (replay): paths expanded to files in sorted order, gzip detected by content,
//! and each file framed into units: one per line for NDJSON, else the whole document.

use crate::error::{ErrorCode, RecordError, Stage};
use crate::record::Position;
use flate2::read::MultiGzDecoder;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}; check the path exists and is readable")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// One input to replay: a file or standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFile {
    Stdin,
    Path(PathBuf),
}

impl InputFile {
    pub fn name(&self) -> String {
        match self {
            InputFile::Stdin => "<stdin>".to_string(),
            InputFile::Path(p) => p.display().to_string(),
        }
    }
}

/// Expands the command-line paths: `-` is stdin, a directory is walked recursively with its
/// entries in sorted order (so a replay is deterministic), hidden entries skipped.
pub fn expand(paths: &[String]) -> Result<Vec<InputFile>, SourceError> {
    let mut out = Vec::new();
    for p in paths {
        if p == "-" {
            out.push(InputFile::Stdin);
            continue;
        }
        walk(Path::new(p), &mut out)?;
    }
    Ok(out)
}

fn walk(p: &Path, out: &mut Vec<InputFile>) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: p.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(p).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort();
        for e in entries {
            let hidden = e
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                walk(&e, out)?;
            }
        }
    } else {
        out.push(InputFile::Path(p.to_path_buf()));
    }
    Ok(())
}

/// What a file reader hands on: a unit of bytes with its position, or a failure of the file's
/// own encoding (a truncated gzip stream) with the bytes that could be read.
pub trait UnitSink {
    fn unit(&mut self, bytes: &[u8], pos: Position);
    fn broken(&mut self, error: RecordError, bytes: &[u8], pos: Position);
    /// Compressed bytes consumed so far in this file, for progress reporting.
    fn progress(&mut self, _bytes: u64) {}
}

/// Counts bytes read from the underlying file (before decompression).
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Reads one input and frames it into units. Returns the number of units.
pub fn read(file: &InputFile, sink: &mut dyn UnitSink) -> Result<u64, SourceError> {
    let name: Arc<str> = file.name().into();
    let io = |source| SourceError::Io {
        path: name.to_string(),
        source,
    };
    let raw: Box<dyn Read> = match file {
        InputFile::Stdin => Box::new(std::io::stdin().lock()),
        InputFile::Path(p) => Box::new(std::fs::File::open(p).map_err(io)?),
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, raw);
    let head = buffered.fill_buf().map_err(io)?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn BufRead> = if gzip {
        Box::new(BufReader::with_capacity(
            256 * 1024,
            MultiGzDecoder::new(Counting {
                inner: buffered,
                n: 0,
            }),
        ))
    } else {
        Box::new(buffered)
    };
    frame(reader, gzip, name.clone(), sink).map_err(io)
}

fn pos(path: &Arc<str>, line: Option<u64>, offset: u64) -> Position {
    Position::File {
        path: path.clone(),
        line,
        offset,
        index: None,
    }
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_whitespace())
}

/// A complete JSON value on one line means the file is line-framed (NDJSON); otherwise the
/// whole file is one document (pretty-printed JSON, a delivery file, garbage).
fn is_json_line(line: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
}

fn frame(
    mut r: Box<dyn BufRead>,
    gzip: bool,
    path: Arc<str>,
    sink: &mut dyn UnitSink,
) -> std::io::Result<u64> {
    let truncated = |e: &std::io::Error| {
        RecordError::new(
            ErrorCode::TruncatedGzip,
            Stage::Decode,
            format!("gzip stream is truncated or corrupt: {e}"),
        )
    };
    let mut line = Vec::with_capacity(8192);
    let mut offset = 0u64;
    let mut lineno = 0u64;
    let mut units = 0u64;
    // Find the first non-blank line to decide the framing.
    loop {
        line.clear();
        let n = match r.read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) if gzip => {
                sink.broken(truncated(&e), &line, pos(&path, None, offset));
                return Ok(units + 1);
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(units);
        }
        lineno += 1;
        if !is_blank(&line) {
            break;
        }
        offset += n as u64;
    }
    if !is_json_line(&line) {
        // Whole-document mode.
        let mut doc = std::mem::take(&mut line);
        let start = offset;
        match r.read_to_end(&mut doc) {
            Ok(_) => sink.unit(&doc, pos(&path, None, start)),
            Err(e) if gzip => sink.broken(truncated(&e), &doc, pos(&path, None, start)),
            Err(e) => return Err(e),
        }
        return Ok(1);
    }
    loop {
        let n = line.len() as u64;
        if !is_blank(&line) {
            let end = line
                .iter()
                .rposition(|c| !c.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            sink.unit(&line[..end], pos(&path, Some(lineno), offset));
            units += 1;
        }
        offset += n;
        if units.is_multiple_of(1024) {
            sink.progress(offset);
        }
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => lineno += 1,
            Err(e) if gzip => {
                sink.broken(truncated(&e), &line, pos(&path, Some(lineno + 1), offset));
                units += 1;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(units)
}
