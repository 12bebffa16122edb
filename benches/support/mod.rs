//! Helpers shared by the benches that measure a child process (kafka_throughput.rs,
//! kinesis_throughput.rs): [`Child`] (spawn with stderr to a log, peak RSS and CPU time so far,
//! stop with SIGTERM) and the /proc readings behind it; the service [`Script`] that starts the
//! broker or the emulators; the ~1.1 KB CloudTrail templates; settings from the environment.
//!
//! Included with `#[path = "support/mod.rs"] mod support;` (a subdirectory, so that Cargo does
//! not make it a bench target of its own). Each bench uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether the filter given to the bench (its first argument that is not a flag: `cargo bench`
/// passes `--bench`) leaves out the bench `name`: then it does not run.
pub fn filtered_out(name: &str) -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|filter| !name.contains(&filter))
}

/// A number from the environment variable `name`, else `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The ~1.1 KB ones of the fixtures' CloudTrail records (`templates()` of
/// tests/support/records.rs).
pub fn small_templates(templates: Vec<String>) -> Vec<String> {
    let t: Vec<String> = templates
        .into_iter()
        .filter(|l| (1000..1250).contains(&l.len()))
        .collect();
    assert!(!t.is_empty(), "no ~1.1 KB template");
    t
}

/// A service script of the repository (`scripts/kafka-broker.sh`, `scripts/kinesis-services.sh`):
/// `start`, `stop`, `status`.
pub struct Script(pub &'static str);

impl Script {
    fn command(&self, cmd: &str) -> std::process::Command {
        let mut c = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(self.0));
        c.arg(cmd);
        c
    }

    /// Runs `script cmd` quietly: whether it succeeded.
    pub fn ok(&self, cmd: &str) -> bool {
        self.command(cmd)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `script cmd`: its standard output, trimmed; panics with its stderr if it fails.
    pub fn run(&self, cmd: &str) -> String {
        let out = self
            .command(cmd)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.0));
        assert!(
            out.status.success(),
            "{} {cmd}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

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
    proc_status_kib(pid, "VmHWM:")
}

/// A `/proc/<pid>/status` size field (`VmHWM:`, `VmRSS:`, ...) in KiB.
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
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
