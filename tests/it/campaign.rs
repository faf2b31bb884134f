//! The crash-and-corruption campaign's process-level kinds (issue 14) as tests: the real
//! `ddp-run` binary runs a whole stories260k sweep, is killed with SIGKILL at random points, runs
//! as four processes at once on one cache (with and without `--copy-out`), and runs on a full or
//! read-only cache. After each, no entry looks complete without being complete, and the final
//! cache holds what an uninterrupted run's holds.

use crate::common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ddp::engine::cache::Cache;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Training steps of the campaign's sweep.
const STEPS: usize = 24;

/// The stories260k sweep of `recipes::sweep` with a training that checkpoints every 5 of its
/// 24 steps (so kills land in training and resume from a checkpoint) and a smaller evaluation.
fn sweep_recipe() -> String {
    let eval = fixtures().join("corpora/moby-dick.txt");
    let mut r = recipes::sweep(&eval.to_string_lossy());
    let steps = format!("steps = {STEPS}\ncheckpoint_every = 5\n");
    for (from, to) in [
        ("steps = 12\n", steps.as_str()),
        ("max_tokens = 1024", "max_tokens = 512"),
    ] {
        assert!(r.contains(from), "recipes::sweep no longer has `{from}`");
        r = r.replace(from, to);
    }
    r
}

// ---- running the binary ----------------------------------------------------------------------

/// A temporary directory holding a recipe, with the cache and out dir beside it by default.
struct Work {
    dir: tempfile::TempDir,
    recipe: PathBuf,
}

impl Work {
    fn new(recipe: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        fs::write(&path, recipe).unwrap();
        Work { dir, recipe: path }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ddp-run --cache CACHE run RECIPE --out OUT ARGS..`, stdout and stderr to `LOG.out` and
    /// `LOG.err` (files, so that nothing blocks and a failure can show them).
    fn spawn(&self, cache: &Path, out: &Path, args: &[&str], log: &str) -> Child {
        let file =
            |ext: &str| Stdio::from(File::create(self.path(&format!("{log}.{ext}"))).unwrap());
        Command::new(env!("CARGO_BIN_EXE_ddp-run"))
            .arg("--cache")
            .arg(cache)
            .arg("run")
            .arg(&self.recipe)
            .arg("--out")
            .arg(out)
            .args(args)
            .stdout(file("out"))
            .stderr(file("err"))
            .spawn()
            .unwrap()
    }

    /// What a run logged: (stdout, stderr).
    fn log(&self, log: &str) -> (String, String) {
        let read =
            |ext: &str| fs::read_to_string(self.path(&format!("{log}.{ext}"))).unwrap_or_default();
        (read("out"), read("err"))
    }

    /// Runs to the end; (success, stdout, stderr).
    fn run(&self, cache: &Path, out: &Path, args: &[&str], log: &str) -> (bool, String, String) {
        let ok = self.spawn(cache, out, args, log).wait().unwrap().success();
        let (o, e) = self.log(log);
        (ok, o, e)
    }

    /// `n` runs of the recipe at once on one cache and out dir (every other one with
    /// `--jobs 2`, so the processes take the keys in different orders); their logs.
    fn concurrently(
        &self,
        n: usize,
        cache: &Path,
        out: &Path,
        extra: &[&str],
        round: usize,
    ) -> Vec<(bool, String, String)> {
        let children: Vec<(String, Child)> = (0..n)
            .map(|i| {
                let log = format!("round{round}-p{i}");
                let mut args = vec!["--jobs", if i % 2 == 0 { "1" } else { "2" }];
                args.extend(extra);
                let c = self.spawn(cache, out, &args, &log);
                (log, c)
            })
            .collect();
        children
            .into_iter()
            .map(|(log, mut c)| {
                let ok = c.wait().unwrap().success();
                let (o, e) = self.log(&log);
                (ok, o, e)
            })
            .collect()
    }
}

/// `ddp-run --cache CACHE ARGS..`.
fn ddp(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddp-run"))
        .arg("--cache")
        .arg(cache)
        .args(args)
        .output()
        .unwrap()
}

/// Waits up to `secs` for the child; whether it exited.
fn exits_within(child: &mut Child, secs: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.try_wait().unwrap().is_some()
}

/// The result column of a run's table, by instance ("ran", "cached", "FAILED: ..").
fn outcomes(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| stage |"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() == 5)
        .map(|cells| (cells[0].to_string(), cells[2].to_string()))
        .collect()
}

/// The instance a killed run was working on: the last one its log says it started.
fn last_started(stderr: &str) -> &str {
    stderr
        .lines()
        .rfind(|l| l.starts_with("[ddp] run "))
        .map_or("(before the first stage)", |l| {
            l["[ddp] run ".len()..].trim()
        })
}

// ---- what the cache holds --------------------------------------------------------------------

/// One complete entry as the comparison sees it.
#[derive(Debug, Clone)]
struct Entry {
    kind: String,
    key: String,
    inputs: Vec<String>,
    files: BTreeMap<String, String>,
    metrics: BTreeMap<String, f64>,
    /// anneal-train's train_log.csv without its timing column.
    log: Vec<Vec<String>>,
}

/// The complete entries of a cache, by instance.
type Snapshot = BTreeMap<String, Entry>;

fn snapshot(root: &Path) -> Snapshot {
    let cache = Cache::open(root).unwrap();
    let entry = |m: ddp::engine::cache::Manifest| {
        let dir = cache.entry_dir(&m.kind, &m.key);
        let log = train_log(&dir.join("train_log.csv"));
        let files = m.files.into_iter().map(|(f, r)| (f, r.blake3)).collect();
        let inputs = m.inputs.into_values().collect();
        let e = Entry {
            kind: m.kind,
            key: m.key,
            inputs,
            files,
            metrics: m.metrics,
            log,
        };
        (m.instance, e)
    };
    cache.entries().into_iter().map(entry).collect()
}

/// The rows of a train_log.csv (empty if there is none), its `seconds` column left out.
fn train_log(path: &Path) -> Vec<Vec<String>> {
    let Ok(text) = fs::read_to_string(path) else {
        return vec![];
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let keep: Vec<bool> = header.iter().map(|h| *h != "seconds").collect();
    let row = |l: &str| {
        l.split(',')
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| c.to_string())
            .collect()
    };
    std::iter::once(row(&header.join(",")))
        .chain(lines.map(row))
        .collect()
}

/// Outputs that measure time, not results: compared by name only.
fn is_timing(kind: &str, metric: &str) -> bool {
    kind == "report"
        || [
            "tok_s",
            "tokens_per_s",
            "speedup",
            "uncertainty",
            "peak_rss",
        ]
        .iter()
        .any(|t| metric.contains(t))
}

/// The instances downstream of (or being) a training: burn's CPU backward is not promised to
/// be bit-reproducible, so these are compared within a tolerance.
fn trained(s: &Snapshot) -> BTreeSet<String> {
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = keys.len();
        for e in s.values() {
            if e.kind == "anneal-train" || e.inputs.iter().any(|k| keys.contains(k.as_str())) {
                keys.insert(&e.key);
            }
        }
        if keys.len() == before {
            break;
        }
    }
    s.iter()
        .filter(|(_, e)| keys.contains(e.key.as_str()))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Differences found, and the largest relative difference of a trained number let through.
struct Diffs {
    list: Vec<String>,
    worst: (f64, String),
    tol: f64,
}

impl Diffs {
    /// Two numbers of instance `name`: bit-equal, or (for a trained one) within `tol`, relative.
    fn num(&mut self, name: &str, fuzzy: bool, what: &str, a: f64, b: f64) {
        let rel = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
        if a.to_bits() == b.to_bits() || (fuzzy && rel <= self.tol) {
            if a != b && rel > self.worst.0 {
                self.worst = (rel, format!("{name}: {what} ({a} vs {b})"));
            }
        } else {
            self.list
                .push(format!("{name}: {what} is {a}, the reference {b}"));
        }
    }
}

/// The differences of `got` from `want`, and the largest relative difference of a trained
/// number (within `tol` or listed). Same instances, keys and file names; the same file contents
/// and metrics outside training and timing; `resumed_at` aside (it says how the result was
/// reached, not what it is).
fn compare(got: &Snapshot, want: &Snapshot, tol: f64) -> (Vec<String>, (f64, String)) {
    let mut d = Diffs {
        list: vec![],
        worst: (0.0, "none".into()),
        tol,
    };
    let (g, w) = (
        got.keys().collect::<BTreeSet<_>>(),
        want.keys().collect::<BTreeSet<_>>(),
    );
    if g != w {
        let only_g: Vec<_> = g.difference(&w).collect();
        let only_w: Vec<_> = w.difference(&g).collect();
        d.list.push(format!(
            "instances only here {only_g:?}, only in the reference {only_w:?}"
        ));
    }
    let trained = trained(want);
    for (name, w) in want {
        if let Some(g) = got.get(name) {
            compare_entry(&mut d, name, trained.contains(name), g, w);
        }
    }
    (d.list, d.worst)
}

/// One instance's differences into `d` (`fuzzy`: a trained one).
fn compare_entry(d: &mut Diffs, name: &str, fuzzy: bool, g: &Entry, w: &Entry) {
    if g.key != w.key {
        d.list
            .push(format!("{name}: key {} instead of {}", g.key, w.key));
    }
    for (m, b) in &w.metrics {
        match g.metrics.get(m) {
            _ if is_timing(&w.kind, m) || m == "resumed_at" => {}
            Some(a) => d.num(name, fuzzy, &format!("metric {m}"), *a, *b),
            None => d.list.push(format!("{name}: metric {m} is missing")),
        }
    }
    if g.files.keys().ne(w.files.keys()) {
        let (gf, wf) = (g.files.keys(), w.files.keys());
        d.list
            .push(format!("{name}: files {gf:?}, the reference {wf:?}"));
    }
    let exact = !fuzzy && w.kind != "benchmark" && w.kind != "report";
    for (f, digest) in w.files.iter().filter(|_| exact) {
        if g.files.get(f).is_some_and(|x| x != digest) {
            d.list
                .push(format!("{name}: {f} differs from the reference's"));
        }
    }
    if g.log.len() != w.log.len() {
        let (gl, wl) = (g.log.len(), w.log.len());
        d.list.push(format!(
            "{name}: train_log.csv has {gl} lines, the reference {wl}"
        ));
    }
    // The first line that differs (the ones after a doubled row all do).
    let before = d.list.len();
    for (i, (gr, wr)) in g.log.iter().zip(&w.log).enumerate() {
        let what = format!("train_log.csv line {}", i + 1);
        for (a, b) in gr.iter().zip(wr) {
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => d.num(name, fuzzy, &what, x, y),
                _ if a != b => d.list.push(format!("{name}: {what}: {a} vs {b}")),
                _ => {}
            }
        }
        if d.list.len() > before {
            d.list.truncate(before + 1);
            break;
        }
    }
}

/// An uninterrupted run's cache, the tolerance for trained numbers, the run's wall time.
struct Reference {
    snap: Snapshot,
    tol: f64,
    secs: f64,
}

/// Two uninterrupted runs in fresh caches (once per test binary): the first is the reference;
/// the tolerance is ten times their largest difference in a trained number, at least 1e-4.
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let w = Work::new(&sweep_recipe());
        let mut runs = vec![];
        for i in 0..2 {
            let t = Instant::now();
            let cache = w.path(&format!("cache{i}"));
            let (ok, _, err) = w.run(&cache, &w.path("out"), &[], &format!("ref{i}"));
            assert!(ok, "the uninterrupted run failed:\n{err}");
            runs.push((snapshot(&cache), t.elapsed().as_secs_f64()));
        }
        let (diffs, worst) = compare(&runs[1].0, &runs[0].0, f64::INFINITY);
        assert!(diffs.is_empty(), "two uninterrupted runs differ outside training:\n{}", diffs.join("\n"));
        let (snap, secs) = runs.swap_remove(0);
        let tol = (10.0 * worst.0).max(1e-4);
        let n = snap.len();
        eprintln!("reference: {n} instances in {secs:.1}s; two runs differ by {:e} (relative) at most in trained numbers, at {}; tolerance {tol:e}", worst.0, worst.1);
        Reference { snap, tol, secs }
    })
}

/// The cache holds what the reference holds.
fn assert_same_as_reference(root: &Path, what: &str) {
    let r = reference();
    let (diffs, worst) = compare(&snapshot(root), &r.snap, r.tol);
    eprintln!(
        "{what}: largest relative difference of a trained number {:e}, at {}",
        worst.0, worst.1
    );
    assert!(
        diffs.is_empty(),
        "{what}: the cache differs from an uninterrupted run's:\n{}",
        diffs.join("\n")
    );
}

/// The comparison the campaign relies on sees a changed result, and only that: a trained
/// number off by 1 %, a doubled train_log row, a changed file of a deterministic stage, a
/// missing instance; not a changed timing or `resumed_at`.
#[test]
fn the_comparison_with_the_reference_sees_changed_results() {
    let r = reference();
    let changed = |what: &str, edit: &dyn Fn(&mut Snapshot)| {
        let mut s = r.snap.clone();
        edit(&mut s);
        let (diffs, _) = compare(&s, &r.snap, r.tol);
        eprintln!("{what}: {diffs:?}");
        diffs.len()
    };
    let first = |s: &mut Snapshot, kind: &str| -> String {
        s.iter().find(|(_, e)| e.kind == kind).unwrap().0.clone()
    };
    assert_eq!(changed("nothing", &|_| {}), 0);
    let n = changed("a trained loss", &|s| {
        let i = first(s, "anneal-train");
        *s.get_mut(&i).unwrap().metrics.get_mut("loss").unwrap() *= 1.01;
    });
    assert_eq!(n, 1);
    let n = changed("a doubled train_log row", &|s| {
        let i = first(s, "anneal-train");
        let e = s.get_mut(&i).unwrap();
        let row = e.log[3].clone();
        e.log.insert(3, row);
    });
    assert!(n >= 1);
    let n = changed("a calibration file", &|s| {
        let i = first(s, "calibrate");
        let e = s.get_mut(&i).unwrap();
        e.files.values_mut().next().unwrap().push('0');
    });
    assert_eq!(n, 1);
    assert_eq!(changed("a missing instance", &|s| drop(s.pop_last())), 1);
    let n = changed("timings and resumed_at", &|s| {
        for e in s.values_mut() {
            for (m, v) in e.metrics.iter_mut() {
                if is_timing(&e.kind, m) || m == "resumed_at" {
                    *v += 1.0;
                }
            }
        }
    });
    assert_eq!(n, 0);
}

/// `cache verify` finds nothing damaged: no entry looks complete without being complete.
fn assert_intact(root: &Path, what: &str) {
    let v = ddp(root, &["cache", "verify"]);
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && out.contains(" 0 damaged"),
        "{what}: cache verify found damage:\n{out}{}",
        String::from_utf8_lossy(&v.stderr)
    );
}

/// Every committed train_log.csv has one row per (step, family), in step order.
fn assert_one_row_per_step_and_family(root: &Path) {
    for (name, e) in snapshot(root)
        .iter()
        .filter(|(_, e)| e.kind == "anneal-train")
    {
        assert!(!e.log.is_empty(), "{name}: no train_log.csv");
        let rows: Vec<(&str, &str)> = e.log[1..]
            .iter()
            .map(|r| (r[0].as_str(), r[6].as_str()))
            .collect();
        let want: Vec<(String, &str)> = (1..=STEPS)
            .flat_map(|s| [(s.to_string(), "heads"), (s.to_string(), "channels")])
            .collect();
        let want: Vec<(&str, &str)> = want.iter().map(|(s, f)| (s.as_str(), *f)).collect();
        assert_eq!(
            e.log[0][6], "family",
            "{name}: train_log.csv columns {:?}",
            e.log[0]
        );
        assert_eq!(
            rows, want,
            "{name}: train_log.csv must have one row per step and family"
        );
    }
}

/// Files named like a temporary of process PID (`.NAME.tmpPID`, `digests.tmpPID`) in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    let is_tmp = |n: &str| {
        n.rsplit_once(".tmp")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    };
    let names = fs::read_dir(dir).into_iter().flatten().flatten();
    names
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_tmp(n))
        .collect()
}

// ---- kill -9 ---------------------------------------------------------------------------------

/// Kills of one campaign at most; the run after them goes to the end.
const MAX_KILLS: usize = 6;

/// Runs the sweep, SIGKILLing it after delays drawn from `seed` (up to half an uninterrupted
/// run) until a run completes; checks the cache after every kill and the end result.
fn kill_campaign(seed: u64, jobs: &str) {
    let r = reference();
    let w = Work::new(&sweep_recipe());
    let (cache, out) = (w.path("cache"), w.path("out"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = 0;
    loop {
        let log = format!("attempt{kills}");
        let mut child = w.spawn(&cache, &out, &["--jobs", jobs], &log);
        let delay = rng.random_range(0.05..0.5 * r.secs);
        if kills < MAX_KILLS && !exits_within(&mut child, delay) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            let during = last_started(&w.log(&log).1).to_string();
            eprintln!("seed {seed}: kill {kills} after {delay:.2}s, during {during}");
            assert_intact(
                &cache,
                &format!("seed {seed}, after kill {kills} (during {during})"),
            );
            continue;
        }
        let ok = child.wait().unwrap().success();
        let (o, e) = w.log(&log);
        assert!(
            ok,
            "seed {seed}: the run after {kills} kills failed:\n{o}\n{e}"
        );
        eprintln!("seed {seed}: completed after {kills} kills");
        break;
    }
    assert_intact(&cache, &format!("seed {seed}, at the end"));
    assert_one_row_per_step_and_family(&cache);
    assert_same_as_reference(&cache, &format!("seed {seed} ({kills} kills)"));
    for dir in [cache.clone(), out.join("sweep"), w.path("")] {
        let left = temporaries(&dir);
        if !left.is_empty() {
            eprintln!(
                "seed {seed}: temporaries of killed runs left in {}: {left:?}",
                dir.display()
            );
        }
    }
}

#[test]
fn a_sweep_killed_at_random_points_ends_as_an_uninterrupted_run_seed_1() {
    kill_campaign(1, "1");
}

#[test]
fn a_sweep_killed_at_random_points_ends_as_an_uninterrupted_run_seed_2() {
    kill_campaign(2, "2");
}

#[test]
fn a_sweep_killed_at_random_points_ends_as_an_uninterrupted_run_seed_3() {
    kill_campaign(3, "1");
}

// ---- concurrent runs -------------------------------------------------------------------------

/// Processes of one round.
const N: usize = 4;

/// All runs of a round succeeded; on an empty cache, each instance ran in exactly one of them
/// (the others found it cached or reused it).
fn assert_round(runs: &[(bool, String, String)], round: usize, fresh: bool) {
    for (i, (ok, o, e)) in runs.iter().enumerate() {
        assert!(ok, "round {round}: process {i} failed:\n{o}\n{e}");
    }
    let tables: Vec<_> = runs.iter().map(|(_, o, _)| outcomes(o)).collect();
    let ran = |name: &str| {
        tables
            .iter()
            .filter(|t| t.get(name).map(String::as_str) == Some("ran"))
            .count()
    };
    let names: BTreeSet<&String> = tables.iter().flat_map(|t| t.keys()).collect();
    assert_eq!(
        names.len(),
        reference().snap.len(),
        "round {round}: instances {names:?}"
    );
    let twice: Vec<_> = names.iter().filter(|n| ran(n) > 1).collect();
    let never: Vec<_> = names.iter().filter(|n| fresh && ran(n) == 0).collect();
    eprintln!(
        "round {round}: {N} processes succeeded; ran per process {:?}",
        tables
            .iter()
            .map(|t| t.values().filter(|v| *v == "ran").count())
            .collect::<Vec<_>>()
    );
    assert!(
        twice.is_empty(),
        "round {round}: instances run by more than one process: {twice:?}"
    );
    assert!(
        never.is_empty(),
        "round {round}: instances no process ran: {never:?}"
    );
}

#[test]
fn concurrent_runs_on_one_cache_run_each_key_once() {
    reference();
    for round in 1..=2 {
        let w = Work::new(&sweep_recipe());
        let (cache, out) = (w.path("cache"), w.path("out"));
        let runs = w.concurrently(N, &cache, &out, &[], round);
        assert_round(&runs, round, true);
        assert_intact(&cache, &format!("round {round}"));
        assert_same_as_reference(&cache, &format!("round {round}"));
        for dir in [cache, out.join("sweep"), w.path("")] {
            assert_eq!(
                temporaries(&dir),
                Vec::<String>::new(),
                "round {round}: temporaries left in {}",
                dir.display()
            );
        }
    }
}

/// The files under `dir`, relative paths to contents.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let files = walkdir::WalkDir::new(dir).into_iter().flatten();
    files
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Every complete entry is copied to `out/sweep/<instance>/` as a directory with the same
/// files, byte for byte; nothing else is there but hidden files that are not temporaries.
fn assert_complete_copies(cache: &Path, out: &Path, round: usize) {
    let c = Cache::open(cache).unwrap();
    let mut want = BTreeSet::new();
    for m in c.entries() {
        let (src, dst) = (c.entry_dir(&m.kind, &m.key), out.join(&m.instance));
        let what = format!("round {round}: {}", dst.display());
        assert!(dst.is_dir() && !dst.is_symlink(), "{what} is not a copy");
        let (a, b) = (files_under(&dst), files_under(&src));
        let differ: Vec<_> = b
            .keys()
            .chain(a.keys())
            .filter(|f| a.get(*f) != b.get(*f))
            .collect();
        assert!(
            differ.is_empty(),
            "{what} is not a complete copy of {}: {differ:?}",
            src.display()
        );
        want.insert(m.instance.clone());
    }
    let names = fs::read_dir(out).unwrap().flatten();
    let have: BTreeSet<String> = names
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let tmp = temporaries(out);
    let extra: Vec<_> = have
        .difference(&want)
        .filter(|n| !n.starts_with('.') || tmp.contains(n))
        .collect();
    assert!(
        extra.is_empty(),
        "round {round}: {} holds more than the results: {extra:?}",
        out.display()
    );
}

/// Round 1 runs and copies from an empty cache; the others only copy (cached), which is where
/// the processes race to replace one another's copies (issue 14 #5).
#[test]
fn concurrent_copy_out_runs_leave_complete_copies_and_no_temporaries() {
    reference();
    let w = Work::new(&sweep_recipe());
    let (cache, out) = (w.path("cache"), w.path("out"));
    for round in 1..=5 {
        let runs = w.concurrently(N, &cache, &out, &["--copy-out"], round);
        assert_round(&runs, round, round == 1);
        assert_complete_copies(&cache, &out.join("sweep"), round);
        assert_eq!(
            temporaries(&w.path("")),
            Vec::<String>::new(),
            "round {round}: temporaries next to the lock file"
        );
    }
    assert_intact(&cache, "after the copy-out rounds");
    assert_same_as_reference(&cache, "after the copy-out rounds");
}

// ---- full and read-only caches ---------------------------------------------------------------

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one (`mount -o OPTIONS`), or says why not.
    fn mount(dir: &Path, options: &str) -> Result<Self, String> {
        fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Ok(Tmpfs(dir.to_path_buf())),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn remount(&self, options: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "remount {options}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A failed run: exit status 1, an error on a line that names a path in the cache and says
/// `cause`, no panic; (the line, the instance the run was on).
fn assert_fails_naming(
    run: (bool, String, String),
    cache: &Path,
    cause: &str,
    what: &str,
) -> String {
    let (ok, o, e) = run;
    let all = format!("{o}\n{e}");
    assert!(!ok, "{what}: the run succeeded:\n{all}");
    assert!(!all.contains("panicked"), "{what}: a panic:\n{all}");
    let line = all.lines().find(|l| l.contains(cause));
    let line = line.unwrap_or_else(|| panic!("{what}: no error says `{cause}`:\n{all}"));
    assert!(
        line.contains(&*cache.to_string_lossy()),
        "{what}: the error names no path in the cache:\n{line}"
    );
    line.to_string()
}

#[test]
fn a_full_or_read_only_cache_fails_with_the_path_and_a_rerun_with_space_succeeds() {
    let w = Work::new(&sweep_recipe());
    let (cache, out) = (w.path("cache"), w.path("out"));
    let fs_ = match Tmpfs::mount(&cache, "size=256k") {
        Ok(m) => m,
        Err(why) => {
            return eprintln!(
                "skipped: cannot mount a tmpfs at {} ({why})",
                cache.display()
            )
        }
    };
    // Each size is below the sweep's ~7 MB, so each run fails, further on than the last.
    for size in ["256k", "1m", "3m"] {
        fs_.remount(&format!("size={size}"));
        let run = w.run(&cache, &out, &[], &format!("full-{size}"));
        let line = assert_fails_naming(
            run,
            &cache,
            "No space left on device",
            &format!("a {size} cache"),
        );
        eprintln!("{size} cache: {}", line.trim());
        assert_intact(&cache, &format!("after filling a {size} cache"));
    }
    fs_.remount("size=64m");
    let (ok, o, e) = w.run(&cache, &out, &[], "space");
    assert!(ok, "the rerun with space failed:\n{o}\n{e}");
    assert_intact(&cache, "after the rerun with space");
    assert_same_as_reference(&cache, "after the rerun with space");
    // Checked at the end, so that the read-only cases run whatever this finds.
    let dirs = [cache.clone(), cache.join(".locks"), w.path("")];
    let left: Vec<String> = dirs.iter().flat_map(|d| temporaries(d)).collect();
    // Read-only: what is cached is still served; what needs a write fails naming the path.
    fs_.remount("ro");
    let (ok, o, e) = w.run(&cache, &out, &[], "ro-cached");
    assert!(
        ok,
        "a fully cached run on a read-only cache failed:\n{o}\n{e}"
    );
    let other = sweep_recipe().replace("sparsity = [0.3, 0.5]", "sparsity = [0.3, 0.4]");
    fs::write(&w.recipe, other).unwrap();
    let run = w.run(&cache, &out, &[], "ro-new");
    let line = assert_fails_naming(
        run,
        &cache,
        "Read-only file system",
        "a new key on a read-only cache",
    );
    eprintln!("read-only cache: {}", line.trim());
    drop(fs_);
    // A read-only cache that was never opened: it cannot even be set up.
    let fresh = w.path("fresh");
    let _ro = Tmpfs::mount(&fresh, "size=1m,ro").unwrap();
    let run = w.run(&fresh, &out, &[], "ro-fresh");
    let line = assert_fails_naming(
        run,
        &fresh,
        "Read-only file system",
        "an empty read-only cache",
    );
    eprintln!("empty read-only cache: {}", line.trim());
    assert!(
        left.is_empty(),
        "temporaries of the failed runs left in the cache or beside the lock file: {left:?}"
    );
}
