//! What a user reaches for on the command line: `--set` on run and plan (keyed, validated and
//! locked like the file's own values), progress lines in a log, and `compare`'s columns.

use crate::common::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ddp::engine::lockfile::{LockFile, LockedStage};
use ddp::engine::stage::Metrics;

/// A temporary directory with its own cache (downloads are not needed: fixtures are local).
struct Dir {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Dir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        Self {
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }

    fn recipe(&self, name: &str, body: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, body).unwrap();
        p
    }

    /// Runs `ddp-run` with this directory's cache and `env`: (exit code, stdout, stderr).
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ddp-run"))
            .args(["--cache", self.root.join("cache").to_str().unwrap()])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `plan`'s key (12 hex digits) per instance, with `extra` flags.
    fn keys(&self, recipe: &Path, extra: &[&str]) -> BTreeMap<String, String> {
        let mut args = vec!["plan", recipe.to_str().unwrap()];
        args.extend(extra);
        let (code, out, err) = self.run(&args, &[]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && f[1].len() == 12 && f[1].bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| (f[0].to_string(), f[1].to_string()))
            })
            .collect()
    }
}

/// stories260k loaded and tokenised into blocks: cheap (no model pass).
fn blocks_recipe() -> String {
    format!(
        r#"
[vars]
len = 32
[stages.load]
kind = "load"
model = "{model}"
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "{data}"
seq_len = "${{vars.len}}"
max_tokens = 1500
"#,
        model = fixtures().join("stories260k").display(),
        data = fixtures().join("corpora/sotu/*.txt").display(),
    )
}

#[test]
fn set_changes_the_key_the_result_and_is_in_plan_and_lock_file() {
    let d = Dir::new();
    let r = d.recipe("blocks.toml", &blocks_recipe());
    let rs = r.to_str().unwrap();
    let plain = d.keys(&r, &[]);
    let set = d.keys(&r, &["--set", "calibrate.max_tokens=800"]);
    assert_eq!(plain["load"], set["load"], "load is untouched");
    assert_ne!(
        plain["calibrate"], set["calibrate"],
        "the override is keyed"
    );
    let (_, out, _) = d.run(&["plan", rs, "--set", "calibrate.max_tokens=800"], &[]);
    assert!(
        out.contains("overrides: --set calibrate.max_tokens=800"),
        "{out}"
    );
    // A variable: `${vars.len}` feeds seq_len.
    let var = d.keys(&r, &["--set", "vars.len=16"]);
    assert_ne!(plain["calibrate"], var["calibrate"]);
    // As if written in the file: the same key as the recipe that says so.
    let written = d.recipe(
        "written.toml",
        &blocks_recipe().replace("max_tokens = 1500", "max_tokens = 800"),
    );
    assert_eq!(d.keys(&written, &[])["calibrate"], set["calibrate"]);

    let (code, _, err) = d.run(&[rs, "--set", "calibrate.max_tokens=800"], &[]);
    assert_eq!(code, 0, "{err}");
    let lock = LockFile::read(&r).expect("a lock file");
    assert_eq!(lock.overrides, ["calibrate.max_tokens=800"]);
    let cal = &lock.stages["calibrate"];
    assert_eq!(cal.params["max_tokens"], toml::Value::Integer(800));
    let tokens_set = cal.metrics["tokens"];
    assert!(tokens_set <= 800.0, "{tokens_set}");
    let text = fs::read_to_string(ddp::engine::lockfile::path_for(&r)).unwrap();
    assert!(
        text.contains("overrides = [\"calibrate.max_tokens=800\"]"),
        "{text}"
    );

    let (code, _, err) = d.run(&[rs], &[]);
    assert_eq!(code, 0, "{err}");
    let lock = LockFile::read(&r).unwrap();
    assert!(lock.overrides.is_empty(), "the last run had none");
    let tokens = lock.stages["calibrate"].metrics["tokens"];
    assert!(
        tokens > 800.0 && tokens <= 1500.0,
        "{tokens} vs {tokens_set}"
    );
}

#[test]
fn set_takes_bare_and_quoted_strings_for_choices_as_the_file_would() {
    let d = Dir::new();
    let topk = d.recipe("topk.toml", &recipes::stories("topk", false));
    let uniform = d.recipe("uniform.toml", &recipes::stories("uniform", false));
    let want = d.keys(&uniform, &[]);
    for flag in ["threshold.rule=uniform", "threshold.rule=\"uniform\""] {
        let got = d.keys(&topk, &["--set", flag]);
        assert_eq!(got["threshold"], want["threshold"], "{flag}");
        assert_eq!(
            got["slice"], want["slice"],
            "{flag}: downstream keys follow"
        );
    }
    // A list, parsed as TOML: as if written in the file.
    let sweep = recipes::sweep(&fixtures().join("corpora/moby-dick.txt").to_string_lossy());
    let r = d.recipe("sweep.toml", &sweep);
    let plain = d.keys(&r, &[]);
    let set = d.keys(&r, &["--set", "benchmark.prompt_lens=[8, 16]"]);
    let written = d.recipe(
        "written.toml",
        &sweep.replacen("prompt_lens = [16]", "prompt_lens = [8, 16]", 1),
    );
    assert_eq!(set, d.keys(&written, &[]));
    let b = "benchmark@sparsity=0.3";
    assert_ne!(set[b], plain[b]);
    assert_eq!(set["evaluate@sparsity=0.3"], plain["evaluate@sparsity=0.3"]);
}

#[test]
fn a_bad_set_exits_2_naming_the_flag_the_stage_the_key_and_what_was_expected() {
    let d = Dir::new();
    let r = d.recipe("stories.toml", &recipes::stories("topk", false));
    let rs = r.to_str().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "anneal-trian.steps=5",
            &["no stage `anneal-trian`", "did you mean `anneal-train`?"],
        ),
        (
            "anneal-train.stesp=5",
            &[
                "stage `anneal-train`",
                "no parameter `stesp`",
                "did you mean `steps`?",
            ],
        ),
        (
            "anneal-train.steps=many",
            &["parameter `steps`", "expected an integer", "\"many\""],
        ),
        (
            "anneal-train.steps=0",
            &["parameter `steps`", "expected an integer in [1,"],
        ),
        (
            "threshold.rule=topq",
            &["parameter `rule`", "\"topq\"", "(did you mean \"topk\"?)"],
        ),
        (
            "gate-insert.sparsity=1.5",
            &["parameter `sparsity`", "a number in [0"],
        ),
        (
            "calibrate.data=[\"a.txt\", \"b.txt\"]",
            &["parameter `data`", "expected a string, found a list"],
        ),
        ("steps", &["expected STAGE.PARAM=VALUE"]),
        (
            "model.sorce=x",
            &["[model] defines no `sorce`", "did you mean `source`?"],
        ),
        ("threshold.after=[]", &["--set changes parameters only"]),
    ];
    for (flag, wants) in cases {
        for cmd in ["plan", "run"] {
            let (code, out, err) = d.run(&[cmd, rs, "--set", flag], &[]);
            assert_eq!(code, 2, "{cmd} --set {flag}: {out}{err}");
            assert!(
                err.contains(&format!("--set {flag}: ")),
                "{cmd} --set {flag}: the message names the flag:\n{err}"
            );
            for w in *wants {
                assert!(err.contains(w), "{cmd} --set {flag}: no `{w}` in\n{err}");
            }
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // Several at once: every one reported.
    let (code, _, err) = d.run(
        &[
            "plan",
            rs,
            "--set",
            "anneal-train.steps=0",
            "--set",
            "slice.multipl=8",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("steps=0") && err.contains("multipl"), "{err}");
}

#[test]
fn a_swept_parameter_cannot_be_set() {
    let d = Dir::new();
    let r = d.recipe(
        "sweep.toml",
        &recipes::sweep(&fixtures().join("corpora/moby-dick.txt").to_string_lossy()),
    );
    let (code, _, err) = d.run(
        &[
            "plan",
            r.to_str().unwrap(),
            "--set",
            "gate-insert.sparsity=0.4",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("swept by [sweep] axis `sparsity`"), "{err}");
}

#[test]
fn long_stages_write_progress_lines_to_a_log() {
    let d = Dir::new();
    let r = d.recipe("training.toml", &recipes::training(100, "", ""));
    // stderr is a pipe here, not a terminal: no bars, log lines instead.
    let (code, _, err) = d.run(&[r.to_str().unwrap()], &[("DDP_PROGRESS_EVERY", "0.02")]);
    assert_eq!(code, 0, "{err}");
    // Before its bar has a length a stage is "running for T"; then position, share and rate.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("[ddp] prog  anneal-train: "))
        .filter(|l| !l.contains(": running for "))
        .collect();
    assert!(!lines.is_empty(), "no progress lines:\n{err}");
    for l in &lines {
        assert!(
            l.contains("/100 (") && l.contains("%), ") && l.contains("/s"),
            "{l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ETA ") && l.contains("(loss ")),
        "{lines:?}"
    );
    // The progress comes between the stage's start and end lines.
    let at = |p: &str| err.find(p).unwrap_or_else(|| panic!("no {p} in\n{err}"));
    assert!(at("[ddp] run   anneal-train") < at("[ddp] prog  anneal-train"));
    assert!(at("[ddp] prog  anneal-train") < at("[ddp] done  anneal-train"));
    // Turned off.
    let (code, _, err) = d.run(
        &[r.to_str().unwrap(), "--force", "anneal-train"],
        &[("DDP_PROGRESS_EVERY", "0")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("[ddp] prog"), "{err}");
}

/// Metrics like each stage kind records them (names as the stages write them).
fn metrics_of(kind: &str, pruned: bool, x: f64) -> Metrics {
    let m = |pairs: &[(&str, f64)]| -> Metrics {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    match kind {
        "load" => m(&[("params_total", 292800.0)]),
        "calibrate" => m(&[("train_blocks", 56.0), ("tokens", 4000.0)]),
        "gate-insert" => m(&[("units", 96.0), ("target_heads", x)]),
        "anneal-train" => m(&[("loss", 3.0 + x), ("kl", x), ("tokens_per_s", 900.0)]),
        "oneshot" => m(&[("scored_units", 96.0)]),
        "threshold" => m(&[("params_removed", 1000.0 * x), ("sparsity_heads", x)]),
        "slice" => m(&[("params_kept", 1.0 - x)]),
        "evaluate" if pruned => m(&[
            ("perplexity", 20.0 + 10.0 * x),
            ("delta.perplexity", 10.0 * x),
            ("perplexity_stderr", 0.5),
            ("cloze_mc_acc", 0.5 - x / 2.0),
            ("cloze_mc_acc_stderr", 0.1),
            ("delta.cloze_mc_acc", -x / 2.0),
            ("params_kept", 1.0 - x),
            ("params_total", 292800.0 * (1.0 - x)),
        ]),
        "evaluate" => m(&[
            ("perplexity", 20.0),
            ("perplexity_stderr", 0.5),
            ("cloze_mc_acc", 0.5),
            ("cloze_mc_acc_stderr", 0.1),
            ("params_total", 292800.0),
        ]),
        "benchmark" => m(&[
            ("speedup.decode.b1", 1.0 + x),
            ("ideal.decode", 1.0 + 2.0 * x),
            ("uncertainty.decode.b1", 0.05),
            ("decode_tok_s.b1", 100.0),
            ("dense.decode_tok_s.b1", 80.0),
        ]),
        "report" => m(&[("rows", 7.0)]),
        other => panic!("no metrics for {other}"),
    }
}

/// The shared sweep recipe with a lock file as a run of it records (every instance's metrics).
fn recorded_sweep(d: &Dir) -> PathBuf {
    let r = d.recipe(
        "sweep.toml",
        &recipes::sweep(&fixtures().join("corpora/moby-dick.txt").to_string_lossy()),
    );
    let recipe = ddp::recipe::load(&r, &ddp::stages::registry()).unwrap_or_else(|e| panic!("{e}"));
    let mut lock = LockFile {
        recipe: recipe.name.clone(),
        ..Default::default()
    };
    for i in &recipe.instances {
        let x = i
            .assignment
            .iter()
            .find(|(a, _)| a == "sparsity")
            .and_then(|(_, v)| v.as_float());
        let stage = LockedStage {
            kind: i.kind.clone(),
            key: format!("{:064}", lock.stages.len()),
            params: i.params.clone(),
            inputs: Default::default(),
            metrics: metrics_of(&i.kind, x.is_some(), x.unwrap_or(0.0)),
        };
        lock.stages.insert(i.name.clone(), stage);
    }
    lock.write(&r).unwrap();
    r
}

/// The header of the printed Markdown table, split into columns.
fn header(out: &str) -> Vec<String> {
    let line = out.lines().next().unwrap_or_default();
    line.trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_string())
        .collect()
}

/// The table's rows (Markdown lines after the separator), by their first cell.
fn table_rows(out: &str) -> BTreeMap<String, Vec<String>> {
    out.lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

#[test]
fn compare_shows_the_swept_values_and_headline_metrics_by_default() {
    let d = Dir::new();
    let r = recorded_sweep(&d);
    let rs = r.to_str().unwrap();
    let outdir = d.root.join("out");
    let out_s = outdir.to_str().unwrap();
    let (code, out, err) = d.run(&["compare", rs, "--out", out_s], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        header(&out),
        [
            "instance",
            "sparsity",
            "oneshot",
            "perplexity",
            "delta.perplexity",
            "cloze_mc_acc",
            "params_kept",
            "speedup.decode.b1",
            "ideal.decode"
        ],
        "{out}"
    );
    // One row per measured model: dense, 2 x DDP, 2 x 2 one-shot; evaluation and benchmark
    // of one model joined.
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 7, "{out}");
    assert_eq!(
        rows["slice@sparsity=0.5"],
        [
            "slice@sparsity=0.5",
            "0.5",
            "",
            "25",
            "5",
            "0.2500",
            "0.5000",
            "1.5000",
            "2"
        ]
    );
    assert_eq!(rows["load"][3], "20", "the dense model's perplexity: {out}");
    assert_eq!(
        rows["slice-oneshot@sparsity=0.3,oneshot=magnitude"][2],
        "magnitude"
    );
    // The CSV has the same columns; the JSON every metric.
    let csv = fs::read_to_string(outdir.join("sweep/compare.csv")).unwrap();
    assert!(
        csv.starts_with("instance,sparsity,oneshot,perplexity,"),
        "{csv}"
    );
    let json = fs::read_to_string(outdir.join("sweep/compare.json")).unwrap();
    assert!(json.contains("tokens_per_s"), "{json}");

    // Only the evaluations: no speed-up columns (they would be empty).
    let (_, out, _) = d.run(&["compare", rs, "--out", out_s, "--stage", "evaluate"], &[]);
    let h = header(&out);
    assert!(
        !h.iter().any(|c| c.starts_with("speedup") || c == "oneshot"),
        "{out}"
    );
    assert!(h.contains(&"perplexity".to_string()), "{out}");
    // With a baseline: deltas, and the dense row's are zero.
    let (code, out, err) = d.run(
        &[
            "compare",
            rs,
            "--out",
            out_s,
            "--baseline",
            "evaluate-dense",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(header(&out).contains(&"Δ perplexity".to_string()), "{out}");
    assert!(
        table_rows(&out)["slice@sparsity=0.5"].contains(&"+5".to_string()),
        "{out}"
    );
}

#[test]
fn compare_all_shows_every_metric_and_columns_chooses() {
    let d = Dir::new();
    let r = recorded_sweep(&d);
    let rs = r.to_str().unwrap();
    let out_s = d.root.join("out");
    let out_s = out_s.to_str().unwrap();
    let (_, default, _) = d.run(&["compare", rs, "--out", out_s], &[]);
    let (code, all, err) = d.run(&["compare", rs, "--out", out_s, "--all"], &[]);
    assert_eq!(code, 0, "{err}");
    let h = header(&all);
    assert!(h.len() > header(&default).len() + 10, "{all}");
    for c in [
        "loss",
        "units",
        "tokens_per_s",
        "uncertainty.decode.b1",
        "rows",
    ] {
        assert!(h.contains(&c.to_string()), "--all lacks {c}: {all}");
    }
    // One row per instance there.
    let n = ddp::recipe::load(&r, &ddp::stages::registry())
        .unwrap()
        .instances
        .len();
    assert_eq!(table_rows(&all).len(), n, "{all}");

    let (code, out, err) = d.run(
        &[
            "compare",
            rs,
            "--out",
            out_s,
            "--columns",
            "perplexity,sparsity,loss",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        header(&out),
        ["instance", "perplexity", "sparsity", "loss"],
        "{out}"
    );
    // The training has no `model` input: its rows are its own.
    let rows = table_rows(&out);
    assert_eq!(rows["anneal-train@sparsity=0.3"][3], "3.3000", "{out}");
    assert_eq!(rows["slice@sparsity=0.3"][3], "", "{out}");

    let (code, out, err) = d.run(
        &[
            "compare",
            rs,
            "--out",
            out_s,
            "--columns",
            "perplexty,sparsity,speedup",
        ],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("`perplexty` (did you mean `perplexity`?)") && err.contains("`speedup`"),
        "{err}"
    );
    assert!(
        !err.contains("`sparsity`"),
        "known columns are not named: {err}"
    );
}
