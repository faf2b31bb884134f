//! anneal-train after a kill, and a collapsed training: the committed train_log.csv always
//! matches the state it resumed from, a rerun after the final checkpoint commits the
//! uninterrupted metrics, a resume says so, and a collapse is flagged by anneal-train, stopped by
//! threshold and explained by slice.

use crate::common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Int, Tensor, TensorData};
use ddp::engine::{self, cache::Cache, stage::Metrics, Done, Observer, Options, Outcome};
use ddp::model::Logits;
use indicatif::ProgressBar;

/// Training steps of the small runs, and the families stories260k gets by default.
const STEPS: usize = 6;
const FAMILIES: [&str; 2] = ["heads", "channels"];

/// The training prefix with this module's step count.
fn recipe(train: &str, tail: &str) -> String {
    recipes::training(STEPS, train, tail)
}

/// What a run told its observer: `note INSTANCE: MSG` and `warn MSG` lines.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Observer for Recorder {
    fn running(&self, _: &str, _: &str) {}
    fn finished(&self, _: &Done, _: &ProgressBar) {}
    fn warn(&self, message: &str) {
        self.0.lock().unwrap().push(format!("warn {message}"));
    }
    fn note(&self, instance: &str, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("note {instance}: {message}"));
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Env {
    dir: tempfile::TempDir,
    recipe: PathBuf,
}

impl Env {
    fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("resume.toml");
        fs::write(&recipe, body).unwrap();
        Self { dir, recipe }
    }
    fn cache(&self) -> Cache {
        Cache::open(&self.dir.path().join("cache")).unwrap()
    }
    /// Runs the recipe (`force`: stages to rerun), reporting to `obs`.
    fn run(&self, force: &[&str], obs: &Recorder) -> Vec<Done> {
        let reg = ddp::stages::registry();
        let r = ddp::recipe::load(&self.recipe, &reg).unwrap_or_else(|e| panic!("{e}"));
        let opts = Options {
            force: force.iter().map(|s| s.to_string()).collect(),
            out_root: Some(self.dir.path().join("out")),
            ..Default::default()
        };
        engine::run_observed(&r, &reg, &self.cache(), &opts, obs)
            .unwrap()
            .results
    }
    fn train(&self, results: &[Done]) -> Done {
        results
            .iter()
            .find(|d| d.name == "anneal-train")
            .unwrap()
            .clone()
    }
    /// anneal-train's temporary directory: what a killed attempt leaves behind.
    fn tmp(&self, key: &str) -> PathBuf {
        let t = self.cache().temp_dir("anneal-train", key);
        fs::create_dir_all(&t).unwrap();
        t
    }
    fn entry(&self, key: &str) -> PathBuf {
        self.cache().entry_dir("anneal-train", key)
    }
}

/// The steps of train_log.csv's rows, after checking its header comes once, first.
fn log_steps(path: &Path) -> Vec<usize> {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("step,loss,"), "{text}");
    lines
        .map(|l| {
            l.split(',')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a row: {l:?} in\n{text}"))
        })
        .collect()
}

/// One row per step and family, steps 1..=STEPS in order.
fn one_row_per_step_and_family() -> Vec<usize> {
    (1..=STEPS)
        .flat_map(|s| std::iter::repeat_n(s, FAMILIES.len()))
        .collect()
}

/// The header and the rows of steps `1..=n` of a log.
fn rows_up_to(log: &str, n: usize) -> String {
    log.lines()
        .take(1 + n * FAMILIES.len())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_kill_before_the_first_checkpoint_leaves_no_rows_in_the_rerun_log() {
    let env = Env::new(&recipe("checkpoint_every = 4", ""));
    let first = env.train(&env.run(&[], &Recorder::default()));
    let key = first.key.clone();
    let log = fs::read_to_string(env.entry(&key).join("train_log.csv")).unwrap();
    // As a kill at step 3 (or a failed first checkpoint) leaves it: rows, a torn row, no
    // checkpoint.
    fs::write(
        env.tmp(&key).join("train_log.csv"),
        rows_up_to(&log, 3) + "4,0.5",
    )
    .unwrap();
    let obs = Recorder::default();
    let again = env.train(&env.run(&["anneal-train"], &obs));
    assert_eq!(again.outcome, Outcome::Ran);
    assert_eq!(again.metrics["resumed_at"], 0.0);
    assert_eq!(
        log_steps(&env.entry(&key).join("train_log.csv")),
        one_row_per_step_and_family()
    );
    assert!(
        !obs.lines().iter().any(|l| l.contains("resuming")),
        "a fresh start is no resume: {:?}",
        obs.lines()
    );
}

#[test]
fn a_resume_says_so_and_drops_the_rows_after_its_checkpoint() {
    let env = Env::new(&recipe("checkpoint_every = 3", ""));
    let first = env.train(&env.run(&[], &Recorder::default()));
    let key = first.key.clone();
    let entry = env.entry(&key);
    let log = fs::read_to_string(entry.join("train_log.csv")).unwrap();
    // A checkpoint at step 3 (the final gates relabelled: a valid state), and the log a kill
    // during step 6 leaves: rows of steps 1..=5 and a torn row whose step reads as 1.
    let gates = fs::read_to_string(entry.join("gates.json")).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&gates).unwrap();
    state["step"] = 3.into();
    let tmp = env.tmp(&key);
    fs::write(tmp.join("checkpoint.json"), state.to_string()).unwrap();
    fs::write(tmp.join("train_log.csv"), rows_up_to(&log, 5) + "1").unwrap();
    let obs = Recorder::default();
    let again = env.train(&env.run(&["anneal-train"], &obs));
    assert_eq!(again.outcome, Outcome::Ran);
    assert_eq!(again.metrics["resumed_at"], 3.0);
    let want = format!("note anneal-train: resuming anneal-train from step 3 of {STEPS}");
    assert!(obs.lines().contains(&want), "{:?}", obs.lines());
    assert_eq!(
        log_steps(&entry.join("train_log.csv")),
        one_row_per_step_and_family()
    );
    // Rows up to the checkpoint are the killed attempt's, unchanged.
    let now = fs::read_to_string(entry.join("train_log.csv")).unwrap();
    assert_eq!(rows_up_to(&now, 3), rows_up_to(&log, 3));
}

#[test]
fn a_kill_after_the_final_checkpoint_commits_the_uninterrupted_metrics() {
    let env = Env::new(&recipe("checkpoint_every = 3", ""));
    let first = env.train(&env.run(&[], &Recorder::default()));
    let key = first.key.clone();
    let entry = env.entry(&key);
    // The final checkpoint is the final state; the log is complete.
    let tmp = env.tmp(&key);
    fs::copy(entry.join("gates.json"), tmp.join("checkpoint.json")).unwrap();
    fs::copy(entry.join("train_log.csv"), tmp.join("train_log.csv")).unwrap();
    let obs = Recorder::default();
    let again = env.train(&env.run(&["anneal-train"], &obs));
    assert_eq!(again.outcome, Outcome::Ran);
    assert_eq!(again.metrics["resumed_at"], STEPS as f64);
    let want = format!("note anneal-train: resuming anneal-train from step {STEPS} of {STEPS}");
    assert!(obs.lines().contains(&want), "{:?}", obs.lines());
    let without = |m: &Metrics| {
        let mut m = m.clone();
        m.remove("tokens_per_s");
        m.remove("resumed_at");
        m
    };
    assert_eq!(without(&again.metrics), without(&first.metrics));
    for fam in FAMILIES {
        for m in [
            "expected_sparsity",
            "lambda1",
            "lambda2",
            "lambda3",
            "binarity",
        ] {
            assert!(
                first.metrics.contains_key(&format!("{m}_{fam}")),
                "{m}_{fam}"
            );
        }
    }
    for m in ["loss", "ce", "kl", "tokens_per_s"] {
        assert!(again.metrics.contains_key(m), "{m}: {:?}", again.metrics);
    }
    assert_eq!(
        log_steps(&entry.join("train_log.csv")),
        one_row_per_step_and_family()
    );
}

#[test]
fn a_checkpoint_whose_rows_the_log_lacks_starts_over_with_a_warning() {
    let env = Env::new(&recipe("checkpoint_every = 3", ""));
    let first = env.train(&env.run(&[], &Recorder::default()));
    let key = first.key.clone();
    let entry = env.entry(&key);
    let log = fs::read_to_string(entry.join("train_log.csv")).unwrap();
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(entry.join("gates.json")).unwrap()).unwrap();
    state["step"] = 3.into();
    let tmp = env.tmp(&key);
    fs::write(tmp.join("checkpoint.json"), state.to_string()).unwrap();
    // Step 2's rows are missing: resuming would commit a log with a hole.
    let holed: String = log
        .lines()
        .filter(|l| !l.starts_with("2,"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(tmp.join("train_log.csv"), holed).unwrap();
    let obs = Recorder::default();
    let again = env.train(&env.run(&["anneal-train"], &obs));
    assert_eq!(again.outcome, Outcome::Ran);
    assert_eq!(again.metrics["resumed_at"], 0.0);
    assert!(
        obs.lines()
            .iter()
            .any(|l| l.contains("checkpoint.json is at step 3") && l.contains("starts over")),
        "{:?}",
        obs.lines()
    );
    assert_eq!(
        log_steps(&entry.join("train_log.csv")),
        one_row_per_step_and_family()
    );
}

/// The campaign's collapse: det-hard-concrete with rates the parameter ranges accept.
const COLLAPSE: &str = r#"method = "det-hard-concrete"
lr_z = 10.0
eta = 100.0
lr_lambda = 10.0
lr_lambda2 = 10.0"#;

const THRESHOLD_SLICE: &str = r#"
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "topk"
[stages.slice]
kind = "slice"
after = ["threshold"]
"#;

#[test]
fn a_collapsed_training_is_flagged_and_threshold_refuses_to_remove_everything() {
    let env = Env::new(&recipe(COLLAPSE, THRESHOLD_SLICE));
    let obs = Recorder::default();
    let results = env.run(&[], &obs);
    let train = env.train(&results);
    assert_eq!(train.outcome, Outcome::Ran);
    // anneal-train names the family, its figures and the likely cause.
    let warns: Vec<String> = obs
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("warn anneal-train: "))
        .collect();
    for fam in FAMILIES {
        let q = train.metrics[&format!("expected_sparsity_{fam}")];
        assert!(q >= 0.99, "{fam} did not collapse: {:?}", train.metrics);
        assert_eq!(train.metrics[&format!("sparsity_gap_{fam}")], q - 0.5);
        let w = warns
            .iter()
            .find(|w| w.contains(&format!(" {fam} ")))
            .unwrap_or_else(|| panic!("no warning about {fam}: {warns:?}"));
        for part in ["collapsed", "target 0.50", "learning rates", "lr_z"] {
            assert!(w.contains(part), "{part:?} not in {w}");
        }
        assert!(w.contains(&format!("{q:.2}")), "{w}");
    }
    // threshold stops with the stage, the family, the figures and the cause.
    let th = results.iter().find(|d| d.name == "threshold").unwrap();
    let Outcome::Failed(e) = &th.outcome else {
        panic!("threshold must fail on a collapse: {:?}", th.outcome)
    };
    for part in [
        "stage threshold",
        "training collapsed",
        "heads",
        "every layer",
        "target 0.50",
        "anneal-train",
    ] {
        assert!(e.contains(part), "{part:?} not in {e}");
    }
    let sl = results.iter().find(|d| d.name == "slice").unwrap();
    assert!(matches!(sl.outcome, Outcome::NotRun(_)), "{:?}", sl.outcome);
}

#[test]
fn a_training_short_of_its_target_is_told_so_not_called_a_collapse() {
    // The paper's per-step rates (the adaptations off) over a few steps barely move the gates:
    // the gap is recorded and the warning says the target was not reached.
    let paper = "lr_steps_ref = 0\nz_travel = 0.0\nmu_hold_tol = 0.0\nlambda_scale = \"none\"";
    let env = Env::new(&recipe(paper, ""));
    let obs = Recorder::default();
    let train = env.train(&env.run(&[], &obs));
    for fam in FAMILIES {
        let gap = train.metrics[&format!("sparsity_gap_{fam}")];
        assert!(gap < -0.05, "{fam}: {gap}");
    }
    let warns = obs.lines();
    assert!(warns.iter().all(|w| !w.contains("collapsed")), "{warns:?}");
    assert!(
        warns.iter().any(|w| w.contains("below its target")),
        "{warns:?}"
    );
}

/// stories260k's final mask with every head of `layers` removed.
fn without_heads(files: &ddp::io::ModelFiles, layers: &[usize]) -> ddp::prune::mask::FinalMask {
    let c = &files.config;
    let units: Vec<_> = (0..c.num_hidden_layers)
        .map(|i| ddp::model::accounting::units(c, i))
        .collect();
    let mut m = ddp::prune::mask::FinalMask::keep_all(&units);
    for &l in layers {
        m.layers[l].heads.fill(0.0);
    }
    m
}

#[test]
fn slicing_away_every_head_names_the_layers_and_what_to_do() {
    let files = fixture("stories260k");
    let n = files.config.num_hidden_layers;
    let all: Vec<usize> = (0..n).collect();
    for uniform in [false, true] {
        let e = ddp::prune::slice::slice(
            &files.config,
            files.weights.as_ref(),
            &without_heads(&files, &all),
            uniform,
            1,
        )
        .err()
        .unwrap_or_else(|| panic!("uniform={uniform}: a model with no head cannot be sliced"))
        .to_string();
        for part in [
            "every attention head",
            "layers 0-4",
            "threshold",
            "anneal-train",
        ] {
            assert!(e.contains(part), "uniform={uniform}: {part:?} not in {e}");
        }
    }
    // One layer without attention is a model ddp slices (that layer's shape has no head), and
    // pads with zero-gated heads under uniform shapes: both give the gated model's logits.
    let mask = without_heads(&files, &[2]);
    let (ids, _, _) = golden("stories260k.safetensors");
    let gated = {
        let m = model(&files);
        let t = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.clone(), [1, ids.len()]),
            &NdArrayDevice::Cpu,
        );
        m.forward(t, None, Some(&gates_of(&files.config, &mask)), Logits::All)
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    };
    for uniform in [false, true] {
        let s = ddp::prune::slice::slice(&files.config, files.weights.as_ref(), &mask, uniform, 1)
            .unwrap_or_else(|e| panic!("uniform={uniform}: {e}"));
        assert_eq!(s.config.layer(2).num_attention_heads == 0, !uniform);
        let d = tempfile::tempdir().unwrap();
        ddp::io::export::write_hf_dir(d.path(), &s.config, &s.tensors, files.tokenizer.as_ref())
            .unwrap();
        let sliced = logits(&model(&ddp::io::open_model(d.path()).unwrap()), &ids);
        let diff = max_abs_diff(&sliced, &gated);
        assert!(
            diff < 1e-4,
            "uniform={uniform}: sliced vs gated differ by {diff}"
        );
    }
}

#[test]
fn an_unconverged_training_is_flagged_with_its_cause() {
    // 30 steps of the shared training recipe, without the multipliers' restart, end near the
    // 0.5 targets but a family 1-5 % over it: not converged (the paper's 1 %), and the warning
    // names the family and the cause.
    let env = Env::new(&recipes::training(30, "lambda_restart = false", ""));
    let obs = Recorder::default();
    let m = env.train(&env.run(&[], &obs)).metrics;
    assert_eq!(m["converged"], 0.0, "{m:?}");
    let warns = obs.lines();
    let over: Vec<&str> = FAMILIES
        .into_iter()
        .filter(|f| {
            // Scores that did not harden are named first (mu_end 0.5 here).
            (0.01..0.05).contains(&(m[&format!("expected_sparsity_{f}")] - 0.5))
                && m[&format!("binarity_{f}")] <= 0.01
        })
        .collect();
    assert!(!over.is_empty(), "{m:?}");
    for fam in over {
        assert!(
            warns
                .iter()
                .any(|w| w.contains(&format!("{fam} not converged"))
                    && w.contains("overshot")
                    && w.contains("lambda_scale sqrt-units")),
            "{fam}: {warns:?}"
        );
    }
}

#[test]
fn a_training_whose_scores_stay_soft_is_told_to_lower_mu_end() {
    // The shared training recipe keeps mu at 0.5: the families reach their targets, but the
    // scores never harden, and the relu rule removes less than the expected sparsity says.
    let env = Env::new(&recipes::training(30, "", ""));
    let obs = Recorder::default();
    let m = env.train(&env.run(&[], &obs)).metrics;
    assert_eq!(m["converged"], 0.0, "{m:?}");
    let warns = obs.lines();
    let soft: Vec<&str> = FAMILIES
        .into_iter()
        .filter(|f| m[&format!("binarity_{f}")] > 0.01)
        .collect();
    assert!(!soft.is_empty(), "{m:?}");
    for fam in soft {
        assert!(
            warns
                .iter()
                .any(|w| w.contains(&format!("{fam} not converged"))
                    && w.contains("did not harden")
                    && w.contains("mu_end 0.5")),
            "{fam}: {warns:?}"
        );
    }
}
