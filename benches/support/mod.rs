//! Helpers shared by the benches that measure a child process (kafka_throughput.rs,
//! kinesis_throughput.rs): [`Child`] (spawn with stderr to a log, peak RSS and CPU time so far,
//! stop with SIGTERM), and the /proc readings behind it.
//!
//! Included with `#[path = "support/mod.rs"] mod support;` (a subdirectory, so that Cargo does
//! not make it a bench target of its own). Each bench uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CPU seconds (utime + stime) and state of a process, from /proc/PID/stat.
pub fn proc_stat(pid: &str) -> Option<(f64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((ticks / 100.0, state))
}

/// Peak RSS (VmHWM) in KiB.
pub fn proc_hwm(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A child process under measurement.
pub struct Child {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Child {
    /// Starts `cmd` with no standard input or output and its stderr in `log`.
    pub fn spawn(cmd: &mut std::process::Command, log: &Path) -> Child {
        let err = std::fs::File::create(log).expect("log");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Child {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// (peak RSS in KiB, CPU seconds) so far.
    pub fn usage(&self) -> (u64, f64) {
        let pid = self.pid();
        (
            proc_hwm(&pid).unwrap_or(0),
            proc_stat(&pid).map_or(0.0, |(c, _)| c),
        )
    }

    /// SIGTERM, then SIGKILL (with a warning) if it has not exited within 60 s.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("warning: {} did not stop on SIGTERM", self.log.display());
    }
}
