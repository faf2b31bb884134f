//! Bad evaluation and calibration text, through `ddp-run eval` and through a recipe's
//! calibrate and evaluate stages: every case fails with a message that names the file (or the
//! source) and the cause, never hangs or panics; text that is merely odd (NUL bytes, control
//! characters) is text and scores a finite perplexity.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ddp::engine::{self, cache::Cache, Options, Outcome};

/// One bad source: its spec (relative to the case directory) and what the message must say.
struct Case {
    spec: &'static str,
    cause: &'static str,
}

/// Writes the bad sources into `d`; the cases' messages name `spec` and `cause`.
fn bad_sources(d: &Path) -> Vec<Case> {
    let w = |name: &str, bytes: &[u8]| fs::write(d.join(name), bytes).unwrap();
    w(
        "latin1.txt",
        b"Once upon a time there was a caf\xe9 by the sea.\n",
    );
    w("empty.txt", b"");
    w("blank.txt", b"  \n\t\n   \r\n");
    w("short.txt", b"Once upon a time.");
    w(
        "broken.jsonl",
        b"{\"text\": \"Once upon a time.\"}\nnot json\n",
    );
    w(
        "untexted.jsonl",
        b"{\"text\": \"Once upon a time.\"}\n{\"body\": \"x\"}\n",
    );
    w(
        "numeric.jsonl",
        b"{\"text\": \"Once upon a time.\"}\n{\"text\": 5}\n",
    );
    fs::create_dir_all(d.join("notes")).unwrap();
    w("notes/a.md", b"Once upon a time.");
    vec![
        Case {
            spec: "latin1.txt",
            cause: "not UTF-8 text: invalid byte 0xE9 at offset 32 (line 1)",
        },
        Case {
            spec: "empty.txt",
            cause: "empty.txt is empty",
        },
        Case {
            spec: "blank.txt",
            cause: "holds only whitespace",
        },
        Case {
            spec: "short.txt",
            cause: "tokens: fewer than one perplexity window of",
        },
        Case {
            spec: "broken.jsonl",
            cause: "line 2: invalid JSON",
        },
        Case {
            spec: "untexted.jsonl",
            cause: "line 2: no field `text`",
        },
        Case {
            spec: "numeric.jsonl",
            cause: "line 2: `text` is a number, expected a string",
        },
        Case {
            spec: "notes",
            cause: "no .txt files under",
        },
        Case {
            spec: "notes/*.txt",
            cause: "no .txt files under",
        },
    ]
}

fn stories() -> String {
    fixtures().join("stories260k").display().to_string()
}

fn moby() -> String {
    fixtures()
        .join("corpora/moby-dick.txt")
        .display()
        .to_string()
}

/// `ddp-run eval` on `text` (64-token windows of the first 1000 tokens, unless `extra` says
/// otherwise), killed after 10 s: its stdout, or its stderr when it fails.
fn eval_cli(text: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["--text", text];
    for (flag, default) in [("--seq-len", "64"), ("--max-tokens", "1000")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddp-run"))
        .args([
            "--cache",
            cache().to_str().unwrap(),
            "eval",
            "--model",
            &stories(),
        ])
        .args(args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            return Err(format!("ddp-run eval --text {text} {extra:?} hangs"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    if out.status.success() {
        Ok(s(out.stdout))
    } else {
        Err(s(out.stderr))
    }
}

/// Load, then calibrate on `calib` and evaluate on `eval` (independent branches).
fn recipe(calib: &str, eval: &str) -> String {
    format!(
        r#"
name = "bad-text"
[stages.load]
kind = "load"
model = "{model}"
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "{calib}"
seq_len = 32
max_tokens = 2000
[stages.evaluate]
kind = "evaluate"
after = ["load"]
data = "{eval}"
seq_len = 32
max_tokens = 500
cloze_items = 0
"#,
        model = stories(),
    )
}

/// Runs the recipe in-process in `dir` (cache `dir/cache`), within 10 s: each stage's outcome,
/// or the planning error.
fn run_stages(dir: &Path, calib: &str, eval: &str) -> Result<Vec<(String, Outcome)>, String> {
    let path = dir.join("bad-text.toml");
    fs::write(&path, recipe(calib, eval)).unwrap();
    let (cache, out) = (dir.join("cache"), dir.join("out"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reg = ddp::stages::registry();
        let r = ddp::recipe::load(&path, &reg).map_err(|e| format!("{e:#}"));
        let opts = Options {
            keep_going: true,
            out_root: Some(out),
            ..Default::default()
        };
        let cache = Cache::open(&cache).unwrap();
        let s = r.and_then(|r| engine::run(&r, &reg, &cache, &opts).map_err(|e| e.chain()));
        let _ = tx.send(s.map(|s| s.results.into_iter().map(|d| (d.name, d.outcome)).collect()));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| Err(format!("the recipe on {calib} / {eval} hangs")))
}

/// The message `stage` failed with (its outcome's, or the planning error's), or its outcome.
fn stage(dir: &Path, calib: &str, eval: &str, stage: &str) -> Result<String, String> {
    let res = run_stages(dir, calib, eval)?;
    match res.into_iter().find(|(n, _)| n == stage) {
        Some((_, Outcome::Failed(e))) => Err(e),
        other => Ok(format!("{other:?}")),
    }
}

/// The cases that did not fail as they should, reported together at the end.
#[derive(Default)]
struct Misses(Vec<String>);

impl Misses {
    /// A miss unless `result` is a failure whose message names `spec` and `cause`.
    fn check(&mut self, what: &str, result: Result<String, String>, spec: &str, cause: &str) {
        match result {
            Ok(out) => self.0.push(format!("{what} on {spec} succeeded: {out}")),
            Err(e) if e.contains(spec) && e.contains(cause) && !e.contains("panicked") => {}
            Err(e) => self.0.push(format!(
                "{what}: expected a message naming {spec} and `{cause}`, got: {e}"
            )),
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{}", self.0.join("\n"));
    }
}

#[test]
fn eval_command_refuses_bad_text_naming_the_file_and_cause() {
    let d = tempfile::tempdir().unwrap();
    let mut misses = Misses::default();
    for c in bad_sources(d.path()) {
        let spec = d.path().join(c.spec).display().to_string();
        misses.check("ddp-run eval", eval_cli(&spec, &[]), &spec, c.cause);
    }
    // Fewer tokens than one window, because the cap says so.
    let r = eval_cli(&moby(), &["--seq-len", "512", "--max-tokens", "100"]);
    misses.check("ddp-run eval", r, "max_tokens 100", "less than seq_len 512");
    misses.assert_none();
}

#[test]
fn calibrate_and_evaluate_stages_refuse_bad_text_naming_the_file_and_cause() {
    let d = tempfile::tempdir().unwrap();
    let (good, mut misses) = (moby(), Misses::default());
    for c in bad_sources(d.path()) {
        let spec = d.path().join(c.spec).display().to_string();
        let cause = match c.spec {
            "short.txt" => "only 7 tokens: not one training block of 32",
            _ => c.cause,
        };
        let r = stage(d.path(), &spec, &good, "calibrate");
        misses.check("calibrate", r, &spec, cause);
        let r = stage(d.path(), &good, &spec, "evaluate");
        misses.check("evaluate", r, &spec, c.cause);
    }
    misses.assert_none();
}

#[test]
fn fifos_as_text_are_refused_not_read_forever() {
    let d = tempfile::tempdir().unwrap();
    let mkfifo = |p: &Path| {
        Command::new("mkfifo")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success())
    };
    let fifo = d.path().join("story.txt");
    if !mkfifo(&fifo) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    // A directory of texts with a FIFO among them: refused by name, not skipped nor read.
    let dir = d.path().join("stories");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(moby(), dir.join("a.txt")).unwrap();
    let inner = dir.join("b.txt");
    assert!(mkfifo(&inner));
    let task = d.path().join("task.jsonl");
    assert!(mkfifo(&task));
    let (good, mut misses) = (moby(), Misses::default());
    const CAUSE: &str = "a FIFO, not a regular file";
    for (spec, named) in [
        (fifo.clone(), fifo.clone()),
        (dir.clone(), inner.clone()),
        (dir.join("*.txt"), inner.clone()),
    ] {
        let (spec, named) = (spec.display().to_string(), named.display().to_string());
        misses.check("ddp-run eval", eval_cli(&spec, &[]), &named, CAUSE);
        let r = stage(d.path(), &spec, &good, "calibrate");
        misses.check("calibrate", r, &named, CAUSE);
        let r = stage(d.path(), &good, &spec, "evaluate");
        misses.check("evaluate", r, &named, CAUSE);
    }
    // A task file is read the same way.
    let task = task.display().to_string();
    let r = eval_cli(&good, &["--task", &task]);
    misses.check("ddp-run eval --task", r, &task, CAUSE);
    misses.assert_none();
}

#[test]
fn nul_bytes_and_control_characters_are_text_with_a_finite_perplexity() {
    let d = tempfile::tempdir().unwrap();
    let text: String = fs::read_to_string(moby())
        .unwrap()
        .chars()
        .take(20_000)
        .collect();
    // NUL, BEL, ESC, DEL and a C1 control among the words: valid UTF-8, byte-fallback tokens.
    let odd = text
        .replace(", ", ",\0 ")
        .replace(". ", ".\x07\x1b ")
        .replace(" the ", " the\x7f\u{85} ");
    let path = d.path().join("odd.txt");
    fs::write(&path, &odd).unwrap();
    let spec = path.display().to_string();
    let out = eval_cli(&spec, &["--json"]).unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = v["perplexity"]["perplexity"].as_f64().unwrap();
    assert!(p.is_finite() && p > 1.0, "perplexity {p}");
    let res = run_stages(d.path(), &spec, &spec).unwrap();
    for (name, outcome) in &res {
        assert_eq!(*outcome, Outcome::Ran, "{name}");
    }
}

#[test]
fn symlinked_text_files_in_a_directory_are_read() {
    let d = tempfile::tempdir().unwrap();
    let link: PathBuf = d.path().join("moby.txt");
    std::os::unix::fs::symlink(moby(), &link).unwrap();
    let files =
        ddp::data::source_files(&d.path().display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files, vec![link]);
}
