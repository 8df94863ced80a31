//! `authstore-bench`: the store benchmark.
//!
//! For each backend (memory, SQLite, PostgreSQL) and each concurrency it measures the
//! throughput and p50/p99 latency of five operations through the `Authstore` façade, and,
//! in the same run, beside each, the raw driver doing the operation's statement on the same
//! database and tables (rusqlite, tokio-postgres through a pool of the store's size; for
//! memory, hash maps behind a lock). It prints a table, checks the targets of issue 6, and
//! with `--json FILE` writes every figure with the machine it ran on.
//!
//! `--scale` adds the scale curves (validation latency with 10 k and 1 M live tokens,
//! `--scale-max 10m` for 10 M; bytes per stored token; cleanup of 1 M expired tokens with
//! validation beside it).
//!
//! `scripts/bench` builds it, starts a throwaway PostgreSQL (durable settings on), runs it
//! and stops the server.

mod bench;
mod measure;
mod memory;
mod postgres;
mod report;
mod rows;
mod scale;
mod sqlite;
mod tokens;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::bench::{BackendKind, Op, Plan, Row, Target};
use crate::scale::{CleanupRun, ScalePlan, ScalePoint};

/// PostgreSQL durability for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Durability {
    /// Leave the server's settings as they are.
    AsIs,
    /// `fsync`, `synchronous_commit` and `full_page_writes` on (ALTER SYSTEM; superuser).
    On,
    /// All three off (throwaway data only).
    Off,
}

/// The store benchmark: every backend beside its raw driver in one run.
#[derive(Debug, Parser)]
#[command(name = "authstore-bench", version, args_override_self = true)]
struct Args {
    /// Short run (0.4 s per measurement, 20,000 live tokens): under two minutes for all
    /// three backends on a 2-core machine.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Backends: memory, sqlite, postgres or all (comma-separated).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    backend: Vec<String>,
    /// Concurrent tasks per measurement (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Operations: validate, issue_pair, redeem_code, refresh, revoke_grant (comma-separated;
    /// default all).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Measured seconds per measurement (default 3; 0.4 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Live access tokens validation picks from (default 100,000; 20,000 with --quick).
    #[arg(long)]
    tokens: Option<usize>,
    /// Also run the scale curves (SQLite and PostgreSQL).
    #[arg(long)]
    scale: bool,
    /// Run only the scale curves.
    #[arg(long)]
    scale_only: bool,
    /// Largest scale point: 10k, 100k, 1m or 10m (points are 10k, 1m, 10m up to it).
    #[arg(long, default_value = "1m")]
    scale_max: String,
    /// Measured seconds per scale point (default 5).
    #[arg(long, default_value_t = 5.0)]
    scale_seconds: f64,
    /// PostgreSQL server (plain TCP on 127.0.0.1); default AUTHSTORE_TEST_POSTGRES_URL.
    #[arg(long, env = "AUTHSTORE_BENCH_POSTGRES_URL")]
    pg_url: Option<String>,
    /// Turn the PostgreSQL store's group commit of issuance off (`batch_issuance=false`), to
    /// see what it brings.
    #[arg(long)]
    pg_no_batch: bool,
    /// PostgreSQL durability settings to run with.
    #[arg(long, value_enum, default_value = "as-is")]
    pg_durability: Durability,
    /// Run SQLite (store and raw) with `synchronous=NORMAL` instead of the store's default
    /// `FULL` (to see what durability costs; the targets are for `FULL`).
    #[arg(long)]
    sqlite_normal: bool,
    /// SQLite `mmap_size` in MiB on both sides (the store's default: 0, off).
    #[arg(long, default_value_t = 0)]
    sqlite_mmap_mib: u64,
    /// The SQLite store's reader connections (its default: 4).
    #[arg(long, default_value_t = 4)]
    sqlite_readers: usize,
    /// Directory for the SQLite files (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Everything the JSON file holds.
#[derive(Debug, Serialize)]
struct Report {
    machine: report::Machine,
    command: Vec<String>,
    quick: bool,
    seconds_per_measurement: f64,
    warm_up_seconds: f64,
    tokio_worker_threads: usize,
    settings: Vec<(String, String)>,
    rows: Vec<Row>,
    scale: Vec<ScalePoint>,
    cleanup: Vec<CleanupRun>,
    targets: Vec<report::Target>,
    total_seconds: f64,
}

fn parse_backends(list: &[String]) -> Result<Vec<BackendKind>, String> {
    let mut out = Vec::new();
    for b in list {
        let add: &[BackendKind] = match b.trim() {
            "all" => &[
                BackendKind::Memory,
                BackendKind::Sqlite,
                BackendKind::Postgres,
            ],
            "memory" => &[BackendKind::Memory],
            "sqlite" => &[BackendKind::Sqlite],
            "postgres" => &[BackendKind::Postgres],
            other => {
                return Err(format!(
                    "unknown backend {other:?}: use memory, sqlite, postgres or all"
                ));
            }
        };
        for k in add {
            if !out.contains(k) {
                out.push(*k);
            }
        }
    }
    Ok(out)
}

fn parse_ops(list: &[String]) -> Result<Vec<Op>, String> {
    if list.is_empty() {
        return Ok(Op::ALL.to_vec());
    }
    list.iter()
        .map(|s| {
            Op::ALL
                .iter()
                .copied()
                .find(|o| o.name() == s.trim())
                .ok_or_else(|| {
                    format!(
                        "unknown operation {s:?}: use validate, issue_pair, redeem_code, refresh or revoke_grant"
                    )
                })
        })
        .collect()
}

fn parse_scale_max(s: &str) -> Result<Vec<u64>, String> {
    let max = match s.to_ascii_lowercase().as_str() {
        "10k" => 10_000,
        "100k" => 100_000,
        "1m" => 1_000_000,
        "10m" => 10_000_000,
        _ => return Err(format!("--scale-max {s:?}: use 10k, 100k, 1m or 10m")),
    };
    Ok([10_000u64, 100_000, 1_000_000, 10_000_000]
        .into_iter()
        .filter(|&p| p <= max && (p != 100_000 || max == 100_000))
        .collect())
}

fn progress(started: Instant) -> impl Fn(&str) {
    move |msg: &str| eprintln!("[{:>7.1}s] {msg}", started.elapsed().as_secs_f64())
}

fn pg_url(args: &Args) -> Result<String, String> {
    args.pg_url
        .clone()
        .or_else(|| std::env::var("AUTHSTORE_TEST_POSTGRES_URL").ok())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            "no PostgreSQL server: run scripts/bench (it starts a throwaway one), pass --pg-url \
             postgres://USER@127.0.0.1:PORT/DB, or leave postgres out with --backend memory,sqlite"
                .to_owned()
        })
}

fn schema_name(what: &str) -> String {
    format!(
        "bench_{what}_{}_{}",
        std::process::id(),
        uuid::Uuid::now_v7()
            .simple()
            .to_string()
            .get(20..)
            .unwrap_or("0")
    )
}

async fn main_async(args: Args, threads: usize) -> Result<bool, String> {
    let started = Instant::now();
    let say = progress(started);
    let backends = parse_backends(&args.backend)?;
    let ops = parse_ops(&args.ops)?;
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err("--concurrency needs numbers of at least 1, e.g. 1,4,16".into());
    }
    let seconds = args.seconds.unwrap_or(if args.quick { 0.4 } else { 3.0 });
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("--seconds must be between 0 and 3600".into());
    }
    let run_ops = !args.scale_only;
    let run_scale = args.scale || args.scale_only;
    let plan = Plan {
        ops,
        concurrency: args.concurrency.clone(),
        warm: Duration::from_secs_f64((seconds / 8.0).min(0.5)),
        run: Duration::from_secs_f64(seconds),
        rounds: if args.quick { 2 } else { 4 },
        tokens: args
            .tokens
            .unwrap_or(if args.quick { 20_000 } else { 100_000 })
            .max(1),
        max_items: if args.quick { 50_000 } else { 200_000 },
        min_items: 200,
    };
    let max_c = plan.concurrency.iter().copied().max().unwrap_or(1);
    let mut machine = report::Machine::detect();
    let mut settings: Vec<(String, String)> =
        vec![("tokio worker threads".into(), threads.to_string())];
    let tmp_parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("authstore-bench-")
        .tempdir_in(&tmp_parent)
        .map_err(|e| format!("cannot make a directory in {}: {e}", tmp_parent.display()))?;
    let url = if backends.contains(&BackendKind::Postgres) {
        let url = pg_url(&args)?;
        match args.pg_durability {
            Durability::AsIs => {}
            Durability::On => postgres::set_durability(&url, true).await?,
            Durability::Off => postgres::set_durability(&url, false).await?,
        }
        settings.push((
            "postgres pool size (store and raw)".into(),
            max_c.to_string(),
        ));
        settings.push((
            "postgres store group commit of issuance".into(),
            if args.pg_no_batch {
                "off (--pg-no-batch)"
            } else {
                "on (default)"
            }
            .into(),
        ));
        for (k, v) in postgres::settings(&url).await? {
            settings.push((format!("postgres {k}"), v));
        }
        Some(url)
    } else {
        None
    };
    let mut rows = Vec::new();
    if run_ops {
        for &kind in &backends {
            let target = target(
                kind,
                tmp.path(),
                url.as_deref(),
                "ops",
                max_c,
                sqlite::Tuning {
                    normal: args.sqlite_normal,
                    mmap_mib: args.sqlite_mmap_mib,
                    readers: args.sqlite_readers,
                },
                !args.pg_no_batch,
            )?;
            say(&format!("{}: setting up", kind.name()));
            let fx = Arc::new(bench::fixture(&target, max_c).await?);
            if let bench::Raw::Sqlite(r) = &fx.raw {
                let o = sqlite::Tuning {
                    normal: args.sqlite_normal,
                    mmap_mib: args.sqlite_mmap_mib,
                    readers: args.sqlite_readers,
                }
                .options();
                settings.push((
                    "sqlite store options".into(),
                    format!(
                        "synchronous {:?}, mmap_size {} MiB, cache {} MiB per connection, {} readers",
                        o.synchronous,
                        o.mmap_size / (1024 * 1024),
                        o.cache_size_kib / 1024,
                        o.readers
                    ),
                ));
                settings.extend(r.settings().await?);
            }
            rows.extend(bench::run(Arc::clone(&fx), &plan, &say).await?);
            drop(fx);
            if let Target::Postgres { url, schema, .. } = &target {
                postgres::drop_schema(url, schema).await;
            }
        }
    }
    let mut scale_points = Vec::new();
    let mut cleanups = Vec::new();
    if run_scale {
        let points = parse_scale_max(&args.scale_max)?;
        let splan = ScalePlan {
            expired: points
                .iter()
                .copied()
                .filter(|&p| p <= 1_000_000)
                .max()
                .unwrap_or(0),
            points,
            warm: Duration::from_millis(300),
            run: Duration::from_secs_f64(args.scale_seconds.clamp(0.01, 3600.0)),
        };
        let largest = splan.points.iter().copied().max().unwrap_or(0);
        if backends.contains(&BackendKind::Sqlite) {
            check_space(tmp.path(), largest + splan.expired)?;
        }
        for &kind in backends.iter().filter(|k| **k != BackendKind::Memory) {
            let target = target(
                kind,
                tmp.path(),
                url.as_deref(),
                "scale",
                4,
                sqlite::Tuning {
                    normal: args.sqlite_normal,
                    mmap_mib: args.sqlite_mmap_mib,
                    readers: args.sqlite_readers,
                },
                !args.pg_no_batch,
            )?;
            let (p, c) = scale::run(&target, &splan, &say).await?;
            scale_points.extend(p);
            cleanups.extend(c);
        }
    }
    machine.load_after = report::load_average();
    let targets = report::targets(&rows);
    let out = report::table(&rows, &scale_points, &cleanups, &targets, &settings);
    let total = started.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "\nauthstore-bench on {} ({} cores), kernel {}, {}, commit {}\nload average before {} after {}; {:.1} s in all\n\n{out}",
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        machine.rustc,
        machine.git_commit,
        machine.load_before,
        machine.load_after,
        total
    );
    let failed = rows.iter().any(|r| r.ours_errors + r.raw_errors > 0)
        || scale_points.iter().any(|p| p.errors > 0)
        || cleanups.iter().any(|c| c.errors > 0);
    if let Some(path) = &args.json {
        let report = Report {
            machine,
            command: std::env::args().collect(),
            quick: args.quick,
            seconds_per_measurement: seconds,
            warm_up_seconds: plan.warm.as_secs_f64(),
            tokio_worker_threads: threads,
            settings,
            rows,
            scale: scale_points,
            cleanup: cleanups,
            targets,
            total_seconds: total,
        };
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        say(&format!("figures written to {}", path.display()));
    }
    Ok(!failed)
}

/// Bytes a scale load needs per token on disk (measured: about 350 B of token table and
/// indexes, 65 B of grants, plus room for the write-ahead log and the cleanup run).
const SCALE_BYTES_PER_TOKEN: u64 = 600;

/// Free space a scale run leaves for everything else on the machine.
const SCALE_HEADROOM: u64 = 2_000_000_000;

/// Refuses a scale run whose SQLite file would not fit in `dir` with
/// [`SCALE_HEADROOM`] to spare (free space from `df`; nothing is checked where `df` is
/// missing).
fn check_space(dir: &Path, tokens: u64) -> Result<(), String> {
    let Ok(out) = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
    else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let need = tokens * SCALE_BYTES_PER_TOKEN + SCALE_HEADROOM;
    match free_kib {
        Some(kib) if kib * 1024 < need => Err(format!(
            "the scale run needs about {:.1} GB free in {} for SQLite (2 GB of it left for others) \
             and has {:.1} GB: free some space, pass --dir on a larger disk, or a smaller --scale-max",
            need as f64 / 1e9,
            dir.display(),
            (kib * 1024) as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

fn target(
    kind: BackendKind,
    dir: &Path,
    url: Option<&str>,
    what: &str,
    pool: usize,
    tuning: sqlite::Tuning,
    batch: bool,
) -> Result<Target, String> {
    Ok(match kind {
        BackendKind::Memory => Target::Memory,
        BackendKind::Sqlite => Target::Sqlite {
            path: dir.join(format!("{what}.db")),
            tuning,
        },
        BackendKind::Postgres => Target::Postgres {
            url: url.ok_or("no PostgreSQL URL")?.to_owned(),
            schema: schema_name(what),
            pool,
            batch,
        },
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authstore-bench: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(args, threads)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("authstore-bench: some operations failed (see ERRORS above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("authstore-bench: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_plan() -> Plan {
        Plan {
            ops: Op::ALL.to_vec(),
            concurrency: vec![1, 2],
            warm: Duration::ZERO,
            run: Duration::from_millis(5),
            rounds: 2,
            tokens: 20,
            max_items: 4,
            min_items: 4,
        }
    }

    async fn every_op_once(target: Target) {
        let fx = Arc::new(bench::fixture(&target, 2).await.unwrap());
        let rows = bench::run(fx, &tiny_plan(), &|_| {}).await.unwrap();
        assert_eq!(rows.len(), 2 * Op::ALL.len());
        for r in &rows {
            assert!(
                r.ours_errors == 0 && r.raw_errors == 0,
                "{} {} c={}: {:?}",
                r.backend,
                r.op,
                r.concurrency,
                r.first_error
            );
            assert!(r.ours_ops >= 1 && r.raw_ops >= 1, "{r:?}");
            assert!(
                r.ratio > 0.0 && r.ours_p99_us > 0.0 && r.raw_p99_us > 0.0,
                "{r:?}"
            );
        }
        let table = report::table(&rows, &[], &[], &report::targets(&rows), &[]);
        assert!(table.contains("redeem_code"), "{table}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_op_runs_on_memory() {
        every_op_once(Target::Memory).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_op_runs_on_sqlite_and_a_tiny_scale_run_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        every_op_once(Target::Sqlite {
            path: dir.path().join("ops.db"),
            tuning: sqlite::Tuning::default(),
        })
        .await;
        let plan = ScalePlan {
            points: vec![40, 100],
            expired: 100,
            warm: Duration::ZERO,
            run: Duration::from_millis(5),
        };
        let (points, cleanup) = scale::run(
            &Target::Sqlite {
                path: dir.path().join("scale.db"),
                tuning: sqlite::Tuning::default(),
            },
            &plan,
            &|_| {},
        )
        .await
        .unwrap();
        assert_eq!(points.len(), 2);
        assert!(points.iter().all(|p| p.errors == 0 && p.access_bytes > 0));
        let c = cleanup.unwrap();
        assert_eq!(c.deleted_access_tokens, 100, "{c:?}");
        assert_eq!(c.deleted_grants, 25, "{c:?}");
        assert_eq!(c.errors, 0, "{c:?}");
    }

    /// The throwaway server's URL (scripts/test sets it); fails loudly without it, like the
    /// other PostgreSQL tests.
    fn test_pg_url() -> String {
        match std::env::var("AUTHSTORE_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => panic!(
                "AUTHSTORE_TEST_POSTGRES_URL is not set: run ./scripts/test (it starts a throwaway \
                 PostgreSQL and sets it), or point it at a disposable server"
            ),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_op_runs_on_postgres_and_a_tiny_scale_run_cleans_up() {
        let url = test_pg_url();
        let schema = schema_name("test");
        every_op_once(Target::Postgres {
            url: url.clone(),
            schema: schema.clone(),
            pool: 2,
            batch: true,
        })
        .await;
        postgres::drop_schema(&url, &schema).await;
        let plan = ScalePlan {
            points: vec![40, 100],
            expired: 100,
            warm: Duration::ZERO,
            run: Duration::from_millis(5),
        };
        let target = Target::Postgres {
            url,
            schema: schema_name("testscale"),
            pool: 2,
            batch: true,
        };
        let (points, cleanup) = scale::run(&target, &plan, &|_| {}).await.unwrap();
        assert!(points.iter().all(|p| p.errors == 0 && p.access_bytes > 0));
        let c = cleanup.unwrap();
        assert_eq!(c.deleted_access_tokens, 100, "{c:?}");
        assert_eq!(c.deleted_grants, 25, "{c:?}");
    }

    #[test]
    fn arguments_parse() {
        assert_eq!(
            parse_backends(&["memory".into(), "all".into()]).unwrap(),
            [
                BackendKind::Memory,
                BackendKind::Sqlite,
                BackendKind::Postgres
            ]
        );
        assert!(parse_backends(&["mysql".into()]).is_err());
        assert_eq!(parse_ops(&[]).unwrap().len(), 5);
        assert_eq!(parse_ops(&["refresh".into()]).unwrap(), [Op::Refresh]);
        assert_eq!(parse_scale_max("1m").unwrap(), [10_000, 1_000_000]);
        assert_eq!(
            parse_scale_max("10M").unwrap(),
            [10_000, 1_000_000, 10_000_000]
        );
        assert_eq!(parse_scale_max("100k").unwrap(), [10_000, 100_000]);
        assert!(parse_scale_max("5").is_err());
        Args::try_parse_from(["authstore-bench", "--quick", "--concurrency", "1,16"]).unwrap();
    }
}
