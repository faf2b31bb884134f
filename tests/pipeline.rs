//! The DDP pipeline end to end on stories260k through the engine: load -> gate-insert ->
//! calibrate -> anneal-train -> threshold -> slice, and the sliced model loads and runs.

mod common;
use common::*;

use std::fs;

use ddp::engine::{self, cache::Cache, Options, Outcome};

fn recipe(rule: &str, uniform: bool) -> String {
    format!(
        r#"
name = "stories"
[model]
source = "{model}"
[data]
calibration = "{data}"
[stages.load]
kind = "load"
model = "${{model.source}}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
sparsity = 0.4
[stages.calibrate]
kind = "calibrate"
after = ["load"]
data = "${{data.calibration}}"
seq_len = 64
max_tokens = 8000
[stages.anneal-train]
kind = "anneal-train"
after = ["gate-insert", "calibrate"]
steps = 30
warmup = 3
lr_lambda = 0.1
mu_end = 0.5
checkpoint_every = 10
[stages.threshold]
kind = "threshold"
after = ["anneal-train"]
rule = "{rule}"
multiple = 8
[stages.slice]
kind = "slice"
after = ["threshold"]
uniform = {uniform}
multiple = 8
"#,
        model = fixtures().join("stories260k").display(),
        data = fixtures().join("corpora/sotu/*.txt").display(),
    )
}

#[test]
fn stories260k_pipeline_runs_end_to_end_and_the_result_loads() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("stories.toml");
    fs::write(&path, recipe("topk", false)).unwrap();
    let reg = ddp::stages::registry();
    let r = ddp::recipe::load(&path, &reg).unwrap_or_else(|e| panic!("{e}"));
    let cache = Cache::open(&d.path().join("cache")).unwrap();
    let opts = Options {
        out_root: Some(d.path().join("out")),
        ..Default::default()
    };
    let s = engine::run(&r, &reg, &cache, &opts).unwrap();
    for res in &s.results {
        assert_eq!(res.outcome, Outcome::Ran, "{}: {:?}", res.name, res.outcome);
    }
    let m = |name: &str| &s.results.iter().find(|x| x.name == name).unwrap().metrics;
    // Training moved the expected sparsity from ~0 (z starts near 1) toward the 0.4 target.
    for fam in ["heads", "channels"] {
        assert!(
            m("anneal-train")[&format!("expected_sparsity_{fam}")] > 0.01,
            "{:?}",
            m("anneal-train")
        );
    }
    // topk removes exactly the budget.
    assert!(
        (m("threshold")["sparsity_channels"] - 0.4).abs() < 0.01,
        "{:?}",
        m("threshold")
    );
    // FLOPs per token of the sliced shapes: fewer than dense (the LM head is never pruned).
    let fk = m("threshold")["flops_kept"];
    assert!(fk < 1.0 && fk > 0.4, "flops kept {fk}");
    let kept = m("slice")["params_kept"];
    assert!(kept < 0.8 && kept > 0.4, "params kept {kept}");
    // The sliced model is a loadable HF directory that generates.
    let model_dir = d.path().join("out/stories/slice/model");
    let files = ddp::io::open_model(&model_dir).unwrap();
    let (ids, _, _) = golden("stories260k.safetensors");
    let logits = logits(&model(&files), &ids);
    assert!(logits.iter().all(|x| x.is_finite()));
    // A second run is entirely cached; a changed threshold rule reruns only threshold and slice.
    let s2 = engine::run(&r, &reg, &cache, &opts).unwrap();
    assert_eq!(s2.executed(), 0);
    fs::write(&path, recipe("uniform", true)).unwrap();
    let r = ddp::recipe::load(&path, &reg).unwrap();
    let s3 = engine::run(&r, &reg, &cache, &opts).unwrap();
    let ran: Vec<&str> = s3
        .results
        .iter()
        .filter(|x| x.outcome == Outcome::Ran)
        .map(|x| x.name.as_str())
        .collect();
    assert_eq!(ran, vec!["threshold", "slice"]);
    let uniform = ddp::io::open_model(&model_dir).unwrap();
    assert!(
        uniform.config.layer_shapes.is_none(),
        "uniform rule gives a standard config"
    );
    assert_eq!(uniform.config.intermediate_size % 8, 0);
    let log = fs::read_to_string(d.path().join("out/stories/anneal-train/train_log.csv")).unwrap();
    assert_eq!(
        log.lines().count(),
        1 + 30 * 2,
        "a header and one row per step and family"
    );
}
