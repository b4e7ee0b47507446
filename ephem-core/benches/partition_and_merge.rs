//! Benchmarks of the two pure-CPU hot spots of a large CI matrix:
//!
//! a. planning 100,000 tests into 50 shards by duration (every matrix job
//!    computes the full plan, so its cost is paid 50 times);
//! b. merging the 64 JUnit reports of a matrix into one, in process and
//!    through the CLI (`cargo-ephem junit merge`), with the CLI's peak RSS.
//!
//! Run with `cargo bench -p ephem-core --bench partition_and_merge`.
//! `harness = false`: a plain `main` printing medians, no criterion, so the
//! figures are easy to paste and the bench builds with no extra dependency.
//! Inputs are pseudo-random but deterministic (xorshift with a fixed seed),
//! so every run measures the same work.
//!
//! Environment: `EPHEM_BENCH_ITERS` (default 10) iterations per measurement;
//! `EPHEM_BIN` the cargo-ephem binary for the CLI part (default
//! `target/release/cargo-ephem`; skipped with a note when it is missing).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use ephem_core::partition::{PartitionItem, PartitionKind, ShardPlan, Timings};
use ephem_core::report::junit::{merge_reports, write_report};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

const TESTS: usize = 100_000;
const BINARIES: usize = 200;
const SHARDS: u32 = 50;
const FILES: usize = 64;
const PLAN_TARGET: Duration = Duration::from_millis(50);
const MERGE_TARGET: Duration = Duration::from_secs(1);

/// xorshift64*: deterministic, good enough for spreading fake data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Log-normal duration: median 5 ms, sigma 1.5, so most tests take
    /// milliseconds and a few take seconds, as in real suites; capped at 120 s.
    fn duration(&mut self) -> Duration {
        let z = (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos();
        let micros = (5_000f64.ln() + 1.5 * z).exp().clamp(1.0, 120e6);
        Duration::from_micros(micros as u64)
    }
}

/// The fake test suite: `(binary_id, name, duration)`, 500 tests per binary.
fn workload() -> Vec<(String, String, Duration)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..TESTS)
        .map(|i| {
            let b = i % BINARIES;
            let binary = format!("crate-{:02}::bin_{b:03}", b % 37);
            let name = format!("module_{}::case_{i:06}", rng.next() % 23);
            (binary, name, rng.duration())
        })
        .collect()
}

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
    /// Median CPU time of the whole process (all threads) per iteration:
    /// on a busy machine wall time swings with other jobs, CPU time much
    /// less, so it tells noise from a real slowdown.
    cpu: Duration,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:>9.3} ms  (min {:.3}, max {:.3}; cpu {:.3})",
            ms(self.median),
            ms(self.min),
            ms(self.max),
            ms(self.cpu)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    }
}

/// CPU time of this process, all threads (children not included).
fn process_cpu() -> Duration {
    // SAFETY: clock_gettime only writes into the struct we pass.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the children waited for so far (user + system).
fn children_cpu() -> Duration {
    let usage = children_rusage();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn children_rusage() -> libc::rusage {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    }
}

fn load_average() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

/// Runs `f` once to warm up, then `iters` times, timing each run.
fn measure<T>(iters: usize, f: impl FnMut() -> T) -> (Stats, T) {
    measure_with(iters, process_cpu, f)
}

/// `measure`, with CPU time read from `cpu_clock`.
fn measure_with<T>(
    iters: usize,
    cpu_clock: fn() -> Duration,
    mut f: impl FnMut() -> T,
) -> (Stats, T) {
    let mut last = f();
    let mut wall = Vec::with_capacity(iters);
    let mut cpu = Vec::with_capacity(iters);
    for _ in 0..iters {
        let (start, start_cpu) = (Instant::now(), cpu_clock());
        last = f();
        wall.push(start.elapsed());
        cpu.push(cpu_clock() - start_cpu);
    }
    let stats = Stats {
        median: median(&mut wall),
        min: wall[0],
        max: wall[iters - 1],
        cpu: median(&mut cpu),
    };
    (stats, last)
}

fn verdict(d: Duration, target: Duration) -> &'static str {
    if d <= target {
        "ok"
    } else {
        "OVER TARGET"
    }
}

fn bench_partition(iters: usize, tests: &[(String, String, Duration)]) {
    let items: Vec<PartitionItem<'_>> = tests
        .iter()
        .map(|(b, n, _)| PartitionItem {
            binary_id: b,
            name: n,
            runs: true,
        })
        .collect();
    // 90% of the tests have a past duration; the rest are "new" and get the
    // mean, as the planner does.
    let mut rng = Rng(42);
    let mut timings = Timings::default();
    let mut known = vec![false; tests.len()];
    for (i, (b, n, d)) in tests.iter().enumerate() {
        if rng.next() % 10 < 9 {
            timings.insert(b, n, *d);
            known[i] = true;
        }
    }

    let (time, plan) = measure(iters, || {
        ShardPlan::new(&items, SHARDS, PartitionKind::Duration, &timings)
    });

    // Check the plan, and how good it is: the makespan (longest shard)
    // against the lower bound max(total / shards, longest test), with the
    // weights the planner uses (integer micros, mean for unknown tests).
    let mut seen = vec![false; items.len()];
    for &i in plan.shards.iter().flatten() {
        assert!(!seen[i], "test {i} is in two shards");
        seen[i] = true;
    }
    assert!(seen.iter().all(|&s| s), "a test is in no shard");
    let micros: Vec<u64> = tests.iter().map(|t| t.2.as_micros() as u64).collect();
    let known_sum: u128 = (0..tests.len())
        .filter(|&i| known[i])
        .map(|i| micros[i] as u128)
        .sum();
    let known_count = known.iter().filter(|&&k| k).count();
    let mean = (known_sum / known_count as u128) as u64;
    let weights: Vec<u64> = (0..tests.len())
        .map(|i| if known[i] { micros[i] } else { mean })
        .collect();
    let total: u64 = weights.iter().sum();
    let longest = *weights.iter().max().unwrap();
    let bound = (total / SHARDS as u64).max(longest);
    let makespan = plan.predicted.iter().max().unwrap().as_micros() as u64;
    let shortest = plan.predicted.iter().min().unwrap().as_micros() as u64;

    println!(
        "a. ShardPlan::new({} tests / {} binaries, {} shards, duration; {} with timings)",
        items.len(),
        BINARIES,
        SHARDS,
        timings.len()
    );
    println!(
        "   {time}   target < {} ms: {}",
        PLAN_TARGET.as_millis(),
        verdict(time.median, PLAN_TARGET)
    );
    println!(
        "   makespan {:.6} s, lower bound {:.6} s, ratio {:.6}; shortest shard {:.6} s",
        makespan as f64 / 1e6,
        bound as f64 / 1e6,
        makespan as f64 / bound as f64,
        shortest as f64 / 1e6
    );
}

/// Writes the 64 shard reports: test `i` goes to file `i % 64` (as a slice
/// partition would), so every file holds a suite for most binaries and the
/// same suite names recur across files. ~1% of the tests fail, with a
/// message, a panic text and captured output.
fn write_inputs(dir: &Utf8PathBuf, tests: &[(String, String, Duration)]) -> Vec<Utf8PathBuf> {
    let mut rng = Rng(7);
    let timestamp = chrono::DateTime::parse_from_rfc3339("2025-11-25T02:00:00+00:00").unwrap();
    let mut files: Vec<std::collections::BTreeMap<&str, TestSuite>> =
        (0..FILES).map(|_| Default::default()).collect();
    for (i, (binary, name, time)) in tests.iter().enumerate() {
        let status = if rng.next() % 100 < 1 {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message("assertion `left == right` failed")
                .set_type("test failure")
                .set_description(format!(
                    "thread '{name}' panicked at tests/it.rs:{}:9:\nassertion `left == right` failed\n  left: {}\n right: 2",
                    rng.next() % 900 + 10,
                    rng.next() % 100
                ));
            s
        } else {
            TestCaseStatus::success()
        };
        let failed = matches!(status, TestCaseStatus::NonSuccess { .. });
        let mut case = TestCase::new(name.as_str(), status);
        case.set_classname(binary.as_str()).set_time(*time);
        if failed {
            case.set_system_out(format!(
                "running 1 test\nconnecting to 127.0.0.1:5432 ...\n{}\ntest {name} ... FAILED\n",
                "log line with some <xml> & \"escapes\"\n".repeat(20)
            ));
            case.set_system_err(format!(
                "thread '{name}' panicked at tests/it.rs:1:1:\nnote: run with `RUST_BACKTRACE=1`\n"
            ));
        }
        files[i % FILES]
            .entry(binary)
            .or_insert_with(|| {
                let mut s = TestSuite::new(binary.as_str());
                s.set_timestamp(timestamp);
                s
            })
            .add_test_case(case);
    }
    files
        .into_iter()
        .enumerate()
        .map(|(k, suites)| {
            let mut report = Report::new("cargo-ephem");
            report.add_test_suites(suites.into_values());
            let path = dir.join(format!("junit-shard-{}.xml", k + 1));
            write_report(&report, &path).unwrap();
            path
        })
        .collect()
}

fn bench_merge(iters: usize, tests: &[(String, String, Duration)]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    let inputs = write_inputs(&dir, tests);
    let input_bytes: u64 = inputs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let out = dir.join("merged.xml");

    let (parse_merge, _) = measure(iters, || merge_reports("merged", &inputs).unwrap());
    let (report, stats) = merge_reports("merged", &inputs).unwrap();
    let (write, ()) = measure(iters, || write_report(&report, &out).unwrap());
    drop(report);
    let (both, (_, stats2)) = measure(iters, || {
        let (report, stats) = merge_reports("merged", &inputs).unwrap();
        write_report(&report, &out).unwrap();
        (report, stats)
    });
    assert_eq!(
        (stats.files, stats.tests, stats.suites, stats.duplicates),
        (FILES, TESTS, BINARIES, 0)
    );
    assert_eq!(stats2.tests, TESTS);

    println!(
        "b. merge {} JUnit files ({:.1} MB, {} cases, {} suites, ~{} failures) into {:.1} MB",
        stats.files,
        input_bytes as f64 / 1e6,
        stats.tests,
        stats.suites,
        TESTS / 100,
        std::fs::metadata(&out).unwrap().len() as f64 / 1e6
    );
    println!("   merge_reports              {parse_merge}");
    println!("   write_report               {write}");
    println!(
        "   merge_reports+write_report {both}   target < {} ms: {}",
        MERGE_TARGET.as_millis(),
        verdict(both.median, MERGE_TARGET)
    );
    bench_cli(iters, &inputs, &dir.join("merged-cli.xml"));
}

/// `cargo-ephem junit merge -o OUT files...` end to end: process start,
/// parsing, merging, writing. Peak RSS from getrusage(RUSAGE_CHILDREN),
/// which is the largest resident set of any child waited for so far; all
/// children here run the same command, so it is that command's peak.
fn bench_cli(iters: usize, inputs: &[Utf8PathBuf], out: &Utf8PathBuf) {
    let bin = std::env::var_os("EPHEM_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/cargo-ephem")
        });
    let bin = bin.canonicalize().unwrap_or(bin);
    if !bin.exists() {
        println!(
            "   CLI: skipped, no binary at {} (cargo build --release -p cargo-ephem, or set EPHEM_BIN)",
            bin.display()
        );
        return;
    }
    let (time, ()) = measure_with(iters, children_cpu, || {
        let status = Command::new(&bin)
            .args(["junit", "merge", "-o", out.as_str()])
            .args(inputs.iter().map(|p| p.as_str()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{} junit merge failed: {status}",
            bin.display()
        );
    });
    let maxrss_kb = children_rusage().ru_maxrss;
    println!(
        "   CLI {} junit merge -o OUT <{} files>",
        bin.display(),
        inputs.len()
    );
    println!(
        "       {time}   peak RSS {:.1} MiB",
        maxrss_kb as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a harness-less bench may ignore it.
    // `cargo test --benches` runs it too: skip the work there.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let iters = std::env::var("EPHEM_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(10);
    let tests = workload();
    println!(
        "partition_and_merge: {iters} iterations per figure, after one warm-up run; load average {}",
        load_average()
    );
    bench_partition(iters, &tests);
    bench_merge(iters, &tests);
    println!("load average after: {}", load_average());
    println!("reproduce: cargo bench -p ephem-core --bench partition_and_merge");
}
