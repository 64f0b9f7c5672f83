//! Supervision of the long-lived layer tasks: a task that fails (panics, fails to start, or
//! ends before it was asked to stop) is marked not ready and restarted with exponential
//! backoff; after `max_failures` failures in a row the process gives up, so that its own
//! supervisor (systemd, Kubernetes) restarts it.
//!
//! ```text
//!  start(cancel) ─► task ─┬─ cancel fired ─► await the task's own shutdown ─► done
//!                         └─ ended / panicked ─► not ready ─► after_exit(failures, ran_for)
//!                                   ├─ Restart(delay) ─► sleep ─► start again
//!                                   └─ GiveUp ─► fatal (the process exits non-zero)
//! ```
//!
//! The restart decision is the pure [`after_exit`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_serving::Readiness;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How failed tasks are restarted.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// The first restart waits this long; each further one twice as long, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Failures in a row before the process gives up.
    pub max_failures: u32,
    /// A task that ran this long before failing starts a new series of failures.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_failures: 5,
            healthy_after: Duration::from_secs(300),
        }
    }
}

/// What to do after a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Restart after the delay; `failures` in a row so far.
    Restart {
        delay: Duration,
        failures: u32,
    },
    GiveUp {
        failures: u32,
    },
}

/// Decides after a failure, given the failures in a row before it and how long the task ran.
pub fn after_exit(previous_failures: u32, ran_for: Duration, policy: &RestartPolicy) -> Next {
    let failures = if ran_for >= policy.healthy_after {
        1
    } else {
        previous_failures.saturating_add(1)
    };
    if failures >= policy.max_failures {
        return Next::GiveUp { failures };
    }
    let doublings = (failures - 1).min(16);
    let delay = policy
        .backoff
        .saturating_mul(1 << doublings)
        .min(policy.max_backoff);
    Next::Restart { delay, failures }
}

/// Why the process gave up; set once, when the first task gives up.
#[derive(Debug, Clone, Default)]
pub struct Fatal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Fatal {
    fn give_up(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.token.cancel();
    }

    /// Completes with the reason when a task has given up.
    pub async fn wait(&self) -> String {
        self.token.cancelled().await;
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

/// Starts and restarts the process's layer tasks.
#[derive(Debug, Clone)]
pub struct Supervisor {
    readiness: Readiness,
    policy: RestartPolicy,
    fatal: Fatal,
}

impl Supervisor {
    pub fn new(readiness: Readiness, policy: RestartPolicy) -> Self {
        Self {
            readiness,
            policy,
            fatal: Fatal::default(),
        }
    }

    pub fn fatal(&self) -> Fatal {
        self.fatal.clone()
    }

    /// Runs `start` as the task `name` until `cancel` fires, restarting it when it fails.
    /// `start` builds one run of the task; an `Err` from it, an `Err` from the task, a panic,
    /// or the task ending before `cancel` fired counts as a failure.
    pub async fn run<F, Fut>(self, name: &'static str, mut start: F, cancel: CancellationToken)
    where
        F: FnMut(CancellationToken) -> Result<Fut, String>,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let mut failures = 0;
        loop {
            let started = Instant::now();
            let run = cancel.child_token();
            let failure = match start(run.clone()) {
                Err(err) => format!("{name} could not start: {err}"),
                Ok(task) => {
                    self.readiness.ready(name);
                    let mut handle = tokio::spawn(task);
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            match handle.await {
                                Ok(Ok(())) => {}
                                Ok(Err(err)) => tracing::error!(task = name, err, "task failed while stopping"),
                                Err(err) => tracing::error!(task = name, %err, "task failed while stopping"),
                            }
                            return;
                        }
                        ended = &mut handle => match ended {
                            Ok(Ok(())) => format!("{name} stopped unexpectedly"),
                            Ok(Err(err)) => format!("{name} failed: {err}"),
                            Err(err) => format!("{name} failed: {err}"),
                        },
                    }
                }
            };
            if cancel.is_cancelled() {
                return;
            }
            metrics::counter!("tandem_task_failures_total", "task" => name).increment(1);
            match after_exit(failures, started.elapsed(), &self.policy) {
                Next::Restart {
                    delay,
                    failures: now,
                } => {
                    failures = now;
                    let reason = format!(
                        "{failure}; restart {now} of {} in {delay:?}",
                        self.policy.max_failures - 1
                    );
                    tracing::error!(task = name, reason, "task failed");
                    self.readiness.not_ready(name, reason);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Next::GiveUp { failures } => {
                    let reason = format!("{failure}; giving up after {failures} failures in a row");
                    tracing::error!(task = name, reason, "task failed");
                    self.readiness.not_ready(name, reason.clone());
                    self.fatal.give_up(reason);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_gives_up_after_max_failures() {
        let policy = RestartPolicy {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
            max_failures: 4,
            healthy_after: Duration::from_secs(60),
        };
        let quick = Duration::from_secs(1);
        let delays: Vec<Next> = (0..4).map(|n| after_exit(n, quick, &policy)).collect();
        assert_eq!(
            delays,
            [
                Next::Restart {
                    delay: Duration::from_secs(1),
                    failures: 1
                },
                Next::Restart {
                    delay: Duration::from_secs(2),
                    failures: 2
                },
                Next::Restart {
                    delay: Duration::from_secs(3),
                    failures: 3
                },
                Next::GiveUp { failures: 4 },
            ]
        );
        // A long healthy run forgives earlier failures.
        assert_eq!(
            after_exit(3, Duration::from_secs(120), &policy),
            Next::Restart {
                delay: Duration::from_secs(1),
                failures: 1
            }
        );
    }

    fn quick_policy(max_failures: u32) -> RestartPolicy {
        RestartPolicy {
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_failures,
            healthy_after: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_marked_not_ready_meanwhile() {
        let readiness = Readiness::new(["worker"]);
        let supervisor = Supervisor::new(readiness.clone(), quick_policy(5));
        let starts = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let counter = Arc::clone(&starts);
        let task = tokio::spawn(supervisor.clone().run(
            "worker",
            move |stop: CancellationToken| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                Ok(async move {
                    if n < 2 {
                        panic!("run {n} fails");
                    }
                    stop.cancelled().await;
                    Ok(())
                })
            },
            cancel.clone(),
        ));
        // The third run stays up: ready again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while starts.load(Ordering::SeqCst) < 3 || !readiness.reasons().is_empty() {
            assert!(Instant::now() < deadline, "{:?}", readiness.reasons());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(!supervisor.fatal().token.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_keeps_failing_makes_the_process_give_up() {
        let readiness = Readiness::new(["archive"]);
        let supervisor = Supervisor::new(readiness.clone(), quick_policy(3));
        let fatal = supervisor.fatal();
        let cancel = CancellationToken::new();
        supervisor
            .run(
                "archive",
                |_stop| {
                    Err::<std::future::Ready<Result<(), String>>, _>(
                        "broker unreachable".to_owned(),
                    )
                },
                cancel,
            )
            .await;
        let reason = fatal.wait().await;
        assert!(
            reason.contains("archive could not start: broker unreachable")
                && reason.contains("3 failures"),
            "{reason}"
        );
        let reasons = readiness.reasons();
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].reason, reason);
    }
}
