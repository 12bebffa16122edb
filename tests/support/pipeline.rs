//! A pipeline run in-process, for the tests that drive `pipeline::run` themselves (the Kafka
//! tests through `kafka_common.rs`, `kinesis_input.rs`): [`Running`] starts one on a runtime of
//! its own and stops it like SIGTERM does; [`wait_until`] polls for what it should have done.
//!
//! Included with `#[path = "support/pipeline.rs"] mod pipeline;` from a file in tests/ (a
//! subdirectory, so that Cargo does not make it a test target of its own).
#![allow(dead_code)]

use auditnorm::config;
use auditnorm::mapping::Mappings;
use auditnorm::pipeline::{self, PipelineError, Summary};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A multi-threaded runtime with `workers` worker threads, timers and I/O enabled.
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A pipeline running on a runtime of its own; `stop` ends it like SIGTERM does.
pub struct Running {
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<Summary, PipelineError>>>,
}

impl Running {
    /// Runs the config `yaml` on a runtime of 3 worker threads.
    pub fn start(yaml: &str) -> Running {
        Running::start_on(runtime(3), yaml)
    }

    /// Runs the config `yaml` on `runtime`.
    pub fn start_on(runtime: tokio::runtime::Runtime, yaml: &str) -> Running {
        Running::start_with(runtime, yaml, |_| {})
    }

    /// Runs the config `yaml` on `runtime`, with a change to the resolved plan (settings the
    /// config file does not offer).
    pub fn start_with(
        runtime: tokio::runtime::Runtime,
        yaml: &str,
        change: impl FnOnce(&mut config::Plan),
    ) -> Running {
        let mut plan = config::parse(yaml)
            .unwrap_or_else(|p| panic!("config:\n{p}"))
            .resolve(Path::new("."))
            .unwrap_or_else(|p| panic!("config:\n{p}"));
        change(&mut plan);
        let mappings = Arc::new(Mappings::load(None).expect("tables"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            pipeline::run(&plan, mappings, async {
                let _ = rx.await;
            })
            .await
        });
        Running {
            runtime,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the pipeline to end by itself (a failure), at most `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Summary, PipelineError> {
        let task = self.task.take().expect("running");
        let r = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, task).await })
            .expect("pipeline ended in time")
            .expect("pipeline task");
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        r
    }

    /// Stops it (drain, commit, leave) and returns how it ended.
    pub fn stop(mut self) -> Result<Summary, PipelineError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.wait(Duration::from_secs(60))
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}
