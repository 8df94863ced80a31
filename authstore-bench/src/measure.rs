//! Runs one operation from N concurrent tasks and records throughput and latency.
//!
//! Benchmark timing uses `std::time::Instant`: it is measurement, not domain time (domain
//! time comes from the store's clock).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Largest latency recorded exactly (longer ones count as this): one minute, in ns.
const MAX_NS: u64 = 60_000_000_000;

/// One operation, run many times. `task` is the index of the running task (0..concurrency),
/// for per-task resources such as a raw reader connection; `item` the index of the item to
/// use (for operations that consume what they touch, each item is used once).
pub(crate) trait Job: Send + Sync + 'static {
    /// Runs the operation once.
    fn run(&self, task: usize, item: usize) -> impl Future<Output = Result<(), String>> + Send;
}

/// A latency histogram in nanoseconds.
pub(crate) fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_NS, 3) {
        Ok(h) => h,
        // hdrhistogram refuses only bounds below 1, a high bound under twice the low one, or
        // more than 5 significant digits: these constants are none of those.
        Err(e) => unreachable!("constant histogram bounds refused: {e:?}"),
    }
}

/// What one measurement found.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// Operations completed in the measured phase (failed ones included).
    pub(crate) ops: u64,
    /// Wall time of the measured phase.
    pub(crate) seconds: f64,
    /// Per-operation latency, ns.
    pub(crate) hist: Histogram<u64>,
    /// Operations that returned an error.
    pub(crate) errors: u64,
    /// The first error, for the report.
    pub(crate) first_error: Option<String>,
    /// Whether the run ended because the items ran out, before its time was up.
    pub(crate) exhausted: bool,
    /// Machine-wide CPU time spent during the measured phase (every process: this one,
    /// the database server, and anything else running), in seconds.
    pub(crate) cpu_seconds: f64,
}

impl Measured {
    /// Operations per second.
    pub(crate) fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Machine-wide CPU microseconds per operation (see [`Measured::cpu_seconds`]).
    pub(crate) fn cpu_us_per_op(&self) -> f64 {
        if self.ops == 0 {
            return 0.0;
        }
        self.cpu_seconds * 1e6 / self.ops as f64
    }

    /// A latency quantile in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// CPU time the whole machine has spent busy since boot (/proc/stat: user, nice, system,
/// irq, softirq, steal), in seconds; 0 where unknown.
pub(crate) fn busy_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 per second on Linux).
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    busy as f64 / 100.0
}

struct TaskResult {
    ops: u64,
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `job` from `concurrency` tasks: first a warm-up of `warm` (not recorded: opens
/// connections, prepares statements, fills caches), then the measured phase of `run`.
/// Items are handed out once each from a shared counter; with `budget` items a phase also
/// ends when they run out. Every task runs at least one operation per phase while items
/// last.
pub(crate) async fn measure<J: Job>(
    job: Arc<J>,
    concurrency: usize,
    warm: Duration,
    run: Duration,
    budget: usize,
) -> Measured {
    let mut r = Runner::new(job, concurrency, budget);
    r.warm(warm).await;
    r.slice(run).await;
    r.finish()
}

/// A measurement taken in slices, so that two sides can take turns (what disturbs the
/// machine for a moment then disturbs both alike). Items carry on from slice to slice.
pub(crate) struct Runner<J> {
    job: Arc<J>,
    concurrency: usize,
    budget: usize,
    next: Arc<AtomicUsize>,
    total: Measured,
}

impl<J: Job> Runner<J> {
    /// A measurement of `job` from `concurrency` tasks over `budget` items.
    pub(crate) fn new(job: Arc<J>, concurrency: usize, budget: usize) -> Self {
        Self {
            job,
            concurrency,
            budget,
            next: Arc::new(AtomicUsize::new(0)),
            total: Measured {
                ops: 0,
                seconds: 0.0,
                hist: histogram(),
                errors: 0,
                first_error: None,
                exhausted: false,
                cpu_seconds: 0.0,
            },
        }
    }

    /// Runs for `length` without recording, on at most a tenth of the items (the rest are
    /// for the measurement).
    pub(crate) async fn warm(&mut self, length: Duration) {
        if length.is_zero() || self.total.exhausted {
            return;
        }
        let start = self.next.load(Ordering::Relaxed);
        let limit = start
            .saturating_add(self.budget / 10)
            .saturating_add(self.concurrency)
            .min(self.budget);
        let _ = phase(
            &self.job,
            self.concurrency,
            length,
            limit,
            &self.next,
            false,
        )
        .await;
        // Tasks that found the warm-up's items gone still moved the counter on.
        self.next.fetch_min(limit, Ordering::Relaxed);
    }

    /// Runs and records for `length` (nothing once the items ran out).
    pub(crate) async fn slice(&mut self, length: Duration) {
        if self.total.exhausted || self.next.load(Ordering::Relaxed) >= self.budget {
            self.total.exhausted = true;
            return;
        }
        let cpu = busy_cpu_seconds();
        let started = Instant::now();
        let results = phase(
            &self.job,
            self.concurrency,
            length,
            self.budget,
            &self.next,
            true,
        )
        .await;
        let elapsed = started.elapsed();
        let m = &mut self.total;
        m.seconds += elapsed.as_secs_f64();
        m.cpu_seconds += (busy_cpu_seconds() - cpu).max(0.0);
        m.exhausted = self.next.load(Ordering::Relaxed) >= self.budget && elapsed < length;
        for r in results {
            m.ops += r.ops;
            m.errors += r.errors;
            let _ = m.hist.add(&r.hist);
            if m.first_error.is_none() {
                m.first_error = r.first_error;
            }
        }
    }

    /// What the slices measured together.
    pub(crate) fn finish(self) -> Measured {
        self.total
    }
}

async fn phase<J: Job>(
    job: &Arc<J>,
    concurrency: usize,
    length: Duration,
    budget: usize,
    next: &Arc<AtomicUsize>,
    record: bool,
) -> Vec<TaskResult> {
    let deadline = Instant::now() + length;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(concurrency);
    for task in 0..concurrency.max(1) {
        let job = Arc::clone(job);
        let next = Arc::clone(next);
        let stop = Arc::clone(&stop);
        handles.push(tokio::spawn(async move {
            let mut r = TaskResult {
                ops: 0,
                hist: histogram(),
                errors: 0,
                first_error: None,
            };
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= budget {
                    break;
                }
                let t0 = Instant::now();
                let out = job.run(task, item).await;
                let t1 = Instant::now();
                if record {
                    r.ops += 1;
                    let ns = u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX);
                    r.hist.saturating_record(ns.clamp(1, MAX_NS));
                    if let Err(e) = out {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
                if t1 >= deadline || stop.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            r
        }));
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(r) => out.push(r),
            Err(e) => out.push(TaskResult {
                ops: 0,
                hist: histogram(),
                errors: 1,
                first_error: Some(format!("benchmark task failed: {e}")),
            }),
        }
    }
    out
}

/// A task that runs `job` in a loop until told to stop, recording latencies: the
/// background load of a measurement of something else (validation while cleanup runs).
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(TaskResult, f64)>,
}

impl Background {
    /// Starts `job` on one task, with items `0, 1, 2, …` modulo `items`.
    pub(crate) fn start<J: Job>(job: Arc<J>, items: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut r = TaskResult {
                ops: 0,
                hist: histogram(),
                errors: 0,
                first_error: None,
            };
            let mut i = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let out = job.run(0, i % items.max(1)).await;
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                r.hist.saturating_record(ns.clamp(1, MAX_NS));
                r.ops += 1;
                if let Err(e) = out {
                    r.errors += 1;
                    r.first_error.get_or_insert(e);
                }
                i = i.wrapping_add(1);
                // Lets the other tasks of this worker run between operations that do not
                // yield by themselves (SQLite reads run inline).
                tokio::task::yield_now().await;
            }
            (r, started.elapsed().as_secs_f64())
        });
        Self { stop, handle }
    }

    /// Stops the task and returns what it measured.
    pub(crate) async fn finish(self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.await {
            Ok((r, seconds)) => Measured {
                ops: r.ops,
                seconds,
                hist: r.hist,
                errors: r.errors,
                first_error: r.first_error,
                exhausted: false,
                cpu_seconds: 0.0,
            },
            Err(e) => Measured {
                ops: 0,
                seconds: 0.0,
                hist: histogram(),
                errors: 1,
                first_error: Some(format!("background task failed: {e}")),
                exhausted: false,
                cpu_seconds: 0.0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy;

    impl Job for Sleepy {
        async fn run(&self, _task: usize, item: usize) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if item == 3 {
                Err("item 3".into())
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_ops_errors_and_stops_at_the_budget() {
        let m = measure(
            Arc::new(Sleepy),
            2,
            Duration::ZERO,
            Duration::from_secs(10),
            10,
        )
        .await;
        assert_eq!(m.ops, 10);
        assert_eq!(m.errors, 1);
        assert_eq!(m.first_error.as_deref(), Some("item 3"));
        assert!(m.exhausted);
        assert!(m.quantile_us(0.5) >= 1000.0, "{}", m.quantile_us(0.5));
        assert!(m.seconds < 5.0);
    }
}
