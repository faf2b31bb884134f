//! The DDP pipeline end to end on stories260k through the engine: load -> gate-insert ->
//! calibrate -> anneal-train -> threshold -> slice, and the sliced model loads and runs.

use crate::common::*;

use std::fs;

use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Int, Tensor, TensorData};
use ddp::engine::{self, cache::Cache, Options, Outcome};
use ddp::model::Logits;
use ddp::prune::mask::FinalMask;

#[test]
fn stories260k_pipeline_runs_end_to_end_and_the_result_loads() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("stories.toml");
    fs::write(&path, recipes::stories("topk", false)).unwrap();
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
    // topk removes the budget, and the gates training closed beyond it (a gate at 0 keeps
    // nothing): 30 steps end within 2 % of the target.
    let achieved = m("threshold")["sparsity_channels"];
    assert!((0.4..0.42).contains(&achieved), "{:?}", m("threshold"));
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
    fs::write(&path, recipes::stories("uniform", true)).unwrap();
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

/// A tiny Qwen2-MoE (routed experts with a shared expert, one dense layer between MoE layers)
/// with the stories260k tokenizer, written as a HF directory the pipeline loads.
fn tiny_moe_dir(dir: &std::path::Path) -> ddp::model::ModelConfig {
    let mut cfg = tiny::config(ddp::model::config::Arch::Qwen2Moe, 4, 2);
    cfg.vocab_size = 512;
    cfg.hidden_size = 32;
    cfg.num_hidden_layers = 3;
    cfg.moe.as_mut().unwrap().dense_layers = vec![1];
    let w = tiny::random_weights(&cfg, 4);
    let tok = fixture("stories260k").tokenizer;
    ddp::io::export::write_hf_dir(dir, &cfg, &w.map, tok.as_ref()).unwrap();
    cfg
}

#[test]
fn moe_pipeline_trains_expert_gates_and_slices_exactly() {
    let d = tempfile::tempdir().unwrap();
    let model_dir = d.path().join("tiny-moe");
    tiny_moe_dir(&model_dir);
    let recipe = recipes::moe(&model_dir);
    let s = run_text_at(d.path(), "moe.toml", &recipe);
    let m = |name: &str| &s.results.iter().find(|x| x.name == name).unwrap().metrics;
    // Three families; training moved each expected sparsity from ~0 toward the 0.4 target.
    for fam in ["heads", "channels", "experts"] {
        let q = m("anneal-train")[&format!("expected_sparsity_{fam}")];
        eprintln!("expected sparsity of {fam} after 25 steps: {q:.3}");
        assert!(q > 0.02, "{fam}: {:?}", m("anneal-train"));
    }
    // topk removes exactly the budget of expert channels.
    assert!(
        (m("threshold")["sparsity_experts"] - 0.4).abs() < 0.01,
        "{:?}",
        m("threshold")
    );
    // The sliced model gives the gated model's logits under the final mask.
    let out = d.path().join("out/moe");
    let mask: FinalMask =
        serde_json::from_str(&fs::read_to_string(out.join("threshold/mask.json")).unwrap())
            .unwrap();
    let dense = ddp::io::open_model(&model_dir).unwrap();
    let sliced = ddp::io::open_model(&out.join("slice/model")).unwrap();
    let ids: Vec<i64> = vec![1, 400, 73, 12, 9, 260, 33, 5, 118, 7];
    let dev = NdArrayDevice::Cpu;
    let gates = gates_of(&dense.config, &mask);
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &dev);
    let want: Vec<f32> = model(&dense)
        .forward(t, None, Some(&gates), Logits::All)
        .into_data()
        .into_vec()
        .unwrap();
    let diff = max_abs_diff(&logits(&model(&sliced), &ids), &want);
    assert!(diff <= 1e-4, "sliced vs gated: {diff}");
    let c = sliced.config.moe.as_ref().unwrap();
    assert_eq!(c.num_experts, 4);
    // The one-shot branch: every expert keeps the same width, a standard config.
    let uni = ddp::io::open_model(&out.join("slice-oneshot/model")).unwrap();
    assert!(uni.config.layer_shapes.is_none());
    let um = uni.config.moe.as_ref().unwrap();
    assert_eq!(
        um.moe_intermediate_size, 8,
        "12 x 0.6 = 7.2, rounded up to 8"
    );
    assert!(m("slice-oneshot")["params_kept"] < 1.0);
}

/// The stories260k pipeline (topk, sliced) with gate-insert's `extra` lines appended.
fn stories_with(gate_insert: &str) -> String {
    recipes::stories("topk", false).replace(
        "sparsity = 0.4\n",
        &format!("sparsity = 0.4\n{gate_insert}\n"),
    )
}

#[test]
fn a_learned_split_of_a_unit_budget_is_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let reg = ddp::stages::registry();
    for (extra, key, want) in [
        (
            "split = \"learned\"\nbudget = \"units\"",
            "budget",
            "params",
        ),
        (
            "split = \"learned\"\nscope = \"per-layer\"",
            "scope",
            "global",
        ),
    ] {
        let path = d.path().join("learned.toml");
        fs::write(&path, stories_with(extra)).unwrap();
        let e = match ddp::recipe::load(&path, &reg) {
            Ok(_) => panic!("{extra}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("gate-insert")
                && e.contains("split = \"learned\"")
                && e.contains(&format!("{key} = \"{want}\"")),
            "{e}"
        );
    }
}

/// Measured (stories260k, 0.4 of the parameters, 30 steps): see the printed split.
#[test]
fn a_learned_split_sliced_with_topk_removes_the_parameter_budget() {
    use ddp::model::accounting;
    let d = tempfile::tempdir().unwrap();
    let s = run_text_at(
        d.path(),
        "learned.toml",
        &stories_with("split = \"learned\""),
    );
    let m = |name: &str| &s.results.iter().find(|x| x.name == name).unwrap().metrics;
    let (train, threshold) = (m("anneal-train"), m("threshold"));
    eprintln!("anneal-train {train:?}\nthreshold {threshold:?}");
    // threshold removed the split training learned.
    for fam in ["heads", "channels"] {
        let learned = train[&format!("learned_target_{fam}")];
        assert_eq!(threshold[&format!("target_{fam}")], learned);
    }
    assert!(
        (train["learned_target_heads"] - train["learned_target_channels"]).abs() > 0.01,
        "{train:?}"
    );
    // The sliced model lacks the budget's parameters, within one unit's worth per family.
    let dense = fixture("stories260k").config;
    let sliced = ddp::io::open_model(&d.path().join("out/stories/slice/model"))
        .unwrap()
        .config;
    let prunable = accounting::count(&dense).prunable() as f64;
    let removed = prunable - accounting::count(&sliced).prunable() as f64;
    let (per_q, per_kv) = accounting::head_params(&dense);
    let group = dense.num_attention_heads / dense.num_key_value_heads;
    let unit = (group * per_q + per_kv + accounting::channel_params(&dense)) as f64;
    assert!(
        (removed - 0.4 * prunable).abs() <= unit,
        "removed {removed} of {prunable}, budget {}",
        0.4 * prunable
    );
    // train_log.csv carries the joint budget's columns.
    let log = fs::read_to_string(d.path().join("out/stories/anneal-train/train_log.csv")).unwrap();
    assert!(log
        .lines()
        .next()
        .unwrap()
        .ends_with(",params_sparsity,joint_lambda1,joint_lambda2"));
}
