//! The machine, the readable table, the targets, and the JSON file.

use std::fmt::Write as _;
use std::process::Command;

use serde::Serialize;

use crate::bench::Row;
use crate::scale::{CleanupRun, ScalePoint};

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// Logical cores available to this process.
    pub(crate) cores: usize,
    /// /proc/sys/kernel/osrelease.
    pub(crate) kernel: String,
    /// The compiler that built this binary.
    pub(crate) rustc: String,
    /// `git rev-parse HEAD` of the source tree.
    pub(crate) git_commit: String,
    /// /proc/loadavg when the run started.
    pub(crate) load_before: String,
    /// /proc/loadavg when the run ended.
    pub(crate) load_after: String,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The load average now (/proc/loadavg, first three fields).
pub(crate) fn load_average() -> String {
    read("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// Looks at this machine.
    pub(crate) fn detect() -> Self {
        let cpu_model = read("/proc/cpuinfo")
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let git_commit = Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            rustc: env!("AUTHSTORE_BENCH_RUSTC").to_owned(),
            git_commit,
            load_before: load_average(),
            load_after: String::new(),
        }
    }
}

/// One target of issue 6, checked against this run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is measured.
    pub(crate) what: String,
    /// Concurrency.
    pub(crate) concurrency: usize,
    /// The figure.
    pub(crate) value: f64,
    /// The bar.
    pub(crate) bar: String,
    /// Whether the figure meets it.
    pub(crate) met: bool,
}

/// Checks the targets the rows allow.
pub(crate) fn targets(rows: &[Row]) -> Vec<Target> {
    let mut out = Vec::new();
    for r in rows {
        match (r.backend, r.op) {
            ("memory", "validate") if r.concurrency == 1 => {
                let ns = if r.ours_ops_per_sec > 0.0 {
                    1e9 / r.ours_ops_per_sec
                } else {
                    f64::INFINITY
                };
                out.push(Target {
                    what: "memory validate, ns per call (1 task, wall time / calls)".into(),
                    concurrency: 1,
                    value: ns,
                    bar: "<= 1000 ns".into(),
                    met: ns <= 1000.0,
                });
            }
            ("sqlite", "validate") => out.push(ratio_target(
                r,
                "sqlite validate / raw rusqlite lookup",
                0.8,
            )),
            ("postgres", "validate") => out.push(ratio_target(
                r,
                "postgres validate / raw tokio-postgres lookup",
                0.9,
            )),
            ("sqlite", "issue_pair") => out.push(ratio_target(
                r,
                "sqlite durable pair issuance / raw single-row insert",
                1.0,
            )),
            ("postgres", "issue_pair") if r.concurrency == 16 => out.push(ratio_target(
                r,
                "postgres durable pair issuance / raw single-row autocommit insert",
                3.0,
            )),
            _ => {}
        }
    }
    out
}

fn ratio_target(r: &Row, what: &str, bar: f64) -> Target {
    Target {
        what: what.into(),
        concurrency: r.concurrency,
        value: r.ratio,
        bar: format!(">= {bar}x"),
        met: r.ratio >= bar,
    }
}

/// `1234567.8` as `1,234,568`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The readable table of a run.
pub(crate) fn table(
    rows: &[Row],
    scale: &[ScalePoint],
    cleanup: &[CleanupRun],
    targets: &[Target],
    settings: &[(String, String)],
) -> String {
    let mut s = String::new();
    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "{:<9}{:<13}{:>5}{:>13}{:>13}{:>9}{:>21}{:>21}{:>16}",
            "backend",
            "op",
            "conc",
            "ours ops/s",
            "raw ops/s",
            "ours/raw",
            "ours p50/p99 µs",
            "raw p50/p99 µs",
            "cpu µs/op o/r"
        );
        for r in rows {
            let mut flag = match (r.ours_errors + r.raw_errors, r.exhausted) {
                (0, false) => String::new(),
                (0, true) => "  (items ran out early)".into(),
                (n, _) => format!("  {n} ERRORS: {}", r.first_error.as_deref().unwrap_or("")),
            };
            if let Some(b) = r.pg_issuance_batch_mean {
                let _ = write!(flag, "  ({b:.1} issuances per commit)");
            }
            let _ = writeln!(
                s,
                "{:<9}{:<13}{:>5}{:>13}{:>13}{:>9.2}{:>21}{:>21}{:>16}{flag}",
                r.backend,
                r.op,
                r.concurrency,
                thousands(r.ours_ops_per_sec),
                thousands(r.raw_ops_per_sec),
                r.ratio,
                format!("{} / {}", us(r.ours_p50_us), us(r.ours_p99_us)),
                format!("{} / {}", us(r.raw_p50_us), us(r.raw_p99_us)),
                format!("{} / {}", us(r.ours_cpu_us_per_op), us(r.raw_cpu_us_per_op)),
            );
        }
        let _ = writeln!(s);
        let mut seen = Vec::new();
        for r in rows {
            if seen.contains(&(r.backend, r.op)) {
                continue;
            }
            seen.push((r.backend, r.op));
            let _ = writeln!(s, "{:<9}{:<13}ours: {}", r.backend, r.op, r.ours_does);
            let _ = writeln!(s, "{:<22}raw:  {}", "", r.raw_does);
        }
    }
    if !settings.is_empty() {
        let _ = writeln!(s, "\nsettings:");
        for (k, v) in settings {
            let _ = writeln!(s, "  {k}: {v}");
        }
    }
    if !scale.is_empty() {
        let _ = writeln!(
            s,
            "\nscale (validation through the façade, 1 task):\n{:<9}{:>11}{:>15}{:>12}{:>10}{:>10}{:>11}{:>13}{:>15}",
            "backend",
            "tokens",
            "load+settle s",
            "ops/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "B/token",
            "B/token+grant"
        );
        for p in scale {
            let _ = writeln!(
                s,
                "{:<9}{:>11}{:>15.1}{:>12}{:>10}{:>10}{:>11}{:>13.0}{:>15.0}{}",
                p.backend,
                thousands(p.tokens as f64),
                p.load_seconds,
                thousands(p.validate_ops_per_sec),
                us(p.validate_p50_us),
                us(p.validate_p99_us),
                us(p.validate_p999_us),
                p.access_bytes_per_token,
                p.bytes_per_token_with_grants,
                if p.errors > 0 { "  ERRORS" } else { "" }
            );
        }
    }
    for c in cleanup {
        let _ = writeln!(
            s,
            "\n{} cleanup: {} expired tokens (+{} live): {:.1} s in {} calls, deleted {} tokens and {} grants; validation while it ran: p50 {} µs, p99 {} µs, max {} µs over {} calls (p99 without cleanup: {} µs){}",
            c.backend,
            thousands(c.expired_tokens as f64),
            thousands(c.live_tokens as f64),
            c.cleanup_seconds,
            c.calls,
            thousands(c.deleted_access_tokens as f64),
            thousands(c.deleted_grants as f64),
            us(c.validate_during_p50_us),
            us(c.validate_during_p99_us),
            us(c.validate_during_max_us),
            thousands(c.validations_during as f64),
            us(c.validate_before_p99_us),
            match &c.first_error {
                Some(e) => format!("  ERROR: {e}"),
                None => String::new(),
            }
        );
    }
    if !targets.is_empty() {
        let _ = writeln!(s, "\ntargets:");
        for t in targets {
            let _ = writeln!(
                s,
                "  {:<4} {:<66} c={:<3} {:>9.2}  (bar {})",
                if t.met { "ok" } else { "MISS" },
                t.what,
                t.concurrency,
                t.value,
                t.bar
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
