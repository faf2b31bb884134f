//! Per-head attention gates under the uniform rule: every KV group of every layer keeps the
//! same number of query heads, so the sliced model has a standard config
//! (`num_attention_heads = num_key_value_heads x kept per group`, KV heads unchanged) that
//! ddp and transformers load, giving the gated model's logits; gate-insert's per-head targets
//! are whole heads per KV group, so that rule meets them exactly.

use crate::common::*;

use std::fs;
use std::path::Path;

use ddp::engine::Outcome;
use ddp::model::accounting::{self, LayerUnits};
use ddp::model::ModelConfig;
use ddp::prune::budget::{self, Basis};
use ddp::prune::mask::{self, FamilyKind, FinalMask, Rule};
use ddp::prune::train::{GateState, HeadGates, Scope};

/// SmolLM2-135M's shapes (9 query heads in 3 KV groups of 64 wide heads, 1,536 channels, 30
/// layers, tied embeddings) on the stories260k config, for budget arithmetic only.
fn smollm2_shapes() -> ModelConfig {
    let mut c = fixture("stories260k").config;
    c.hidden_size = 576;
    c.intermediate_size = 1536;
    c.num_hidden_layers = 30;
    c.num_attention_heads = 9;
    c.num_key_value_heads = 3;
    c.head_dim = 64;
    c.vocab_size = 49152;
    c.tie_word_embeddings = true;
    c
}

#[test]
fn uniform_rule_keeps_the_top_heads_of_every_kv_group() {
    // Two layers of 9 query heads in 3 KV groups (SmolLM2's attention), per-head gates.
    let u = LayerUnits {
        heads: 9,
        kv_heads: 3,
        channels: 0,
        experts: 0,
        expert_width: 0,
    };
    let z = vec![
        vec![0.9, 0.1, 0.5, 0.2, 0.3, 0.8, 0.7, 0.6, 0.4],
        vec![0.3, 0.3, 0.2, 1.2, -0.4, 0.0, 0.5, 0.6, 0.7],
    ];
    let mut s = GateState::init(
        &[(FamilyKind::Heads, 1.0 / 3.0, vec![9, 9])],
        HeadGates::PerHead,
        Scope::Global,
        0,
    );
    s.families[0].z = z;
    let (m, report) = mask::from_gates(&s, Rule::Uniform { multiple: 64 }, &[u, u]).unwrap();
    // Two of three per group, the largest (ties: the lower index); a layer-wide top 6 would
    // have kept 2, 1 and 3 of layer 0's groups. A kept gate at 0 is removed, as ReLU says:
    // layer 1's middle group keeps only head 3.
    assert_eq!(
        m.layers[0].heads,
        [0.9, 0.0, 0.5, 0.0, 0.3, 0.8, 0.7, 0.6, 0.0]
    );
    assert_eq!(
        m.layers[1].heads,
        [0.3, 0.3, 0.0, 1.2, 0.0, 0.0, 0.0, 0.6, 0.7]
    );
    assert!((report[0].achieved - 7.0 / 18.0).abs() < 1e-12);
    let kept = m.kept(&[u, u]);
    assert_eq!((kept[0].heads, kept[0].kv_heads), (6, 3));
    // Whole KV groups stay: every group keeps at least one head, even at 95 %.
    let hi = mask::threshold(
        FamilyKind::Heads,
        &s.families[0].z,
        0.95,
        Rule::Uniform { multiple: 1 },
        &[u, u],
        HeadGates::PerHead,
    );
    assert_eq!(hi[0], [0.9, 0.0, 0.0, 0.0, 0.0, 0.8, 0.7, 0.0, 0.0]);
    // Gates per KV group: the same count per layer, as before.
    let g = mask::threshold(
        FamilyKind::Heads,
        &[vec![0.2, 0.9, 0.5]],
        1.0 / 3.0,
        Rule::Uniform { multiple: 1 },
        &[u],
        HeadGates::PerGroup,
    );
    assert_eq!(g, [vec![0.0, 0.9, 0.5]]);
    // Multi-head attention (a KV group per head): the same count per layer, whole heads.
    let mha = LayerUnits { kv_heads: 9, ..u };
    let g = mask::threshold(
        FamilyKind::Heads,
        &[vec![0.9, 0.1, 0.5, 0.2, 0.3, 0.8, 0.7, 0.6, 0.4]],
        1.0 / 3.0,
        Rule::Uniform { multiple: 1 },
        &[mha],
        HeadGates::PerHead,
    );
    assert_eq!(g, [vec![0.9, 0.0, 0.5, 0.0, 0.0, 0.8, 0.7, 0.6, 0.4]]);
}

#[test]
fn per_head_targets_are_whole_heads_per_kv_group_and_the_budget_adds_up() {
    for (name, cfg, heads_at) in [
        // stories260k: 2 heads per group; SmolLM2: 3.
        ("stories260k", fixture("stories260k").config, [0.0, 0.5]),
        ("smollm2", smollm2_shapes(), [0.0, 1.0 / 3.0]),
    ] {
        let p = accounting::count(&cfg);
        let fams = budget::families(&cfg, HeadGates::PerHead, true, false);
        let (per_q, _) = accounting::head_params(&cfg);
        // Per-head gates cover q and o only: k and v go with whole groups.
        assert_eq!(
            fams[0].params,
            cfg.num_hidden_layers * cfg.num_attention_heads * per_q
        );
        for (sparsity, want) in [0.2, 0.5].into_iter().zip(heads_at) {
            let t = budget::targets(sparsity, Basis::Params, &cfg, &fams, HeadGates::PerHead);
            assert!((t[0] - want).abs() < 1e-12, "{name} at {sparsity}: {t:?}");
            // The channels take what the heads leave: the parameters removed are the budget.
            let removed = t[0] * fams[0].params as f64 + t[1] * fams[1].params as f64;
            let budget = sparsity * p.prunable() as f64;
            assert!(
                (removed - budget).abs() < 1e-6,
                "{name} at {sparsity}: {t:?}"
            );
            eprintln!(
                "{name} per-head at {sparsity}: heads {:.4}, channels {:.4}",
                t[0], t[1]
            );
            // The uniform rule meets the heads target exactly.
            let u = accounting::units(&cfg, 0);
            let g = u.heads / u.kv_heads;
            let keep = mask::uniform_keep(FamilyKind::Heads, t[0], 1, g);
            let kept = 1.0 - keep as f64 / g as f64;
            assert!((kept - t[0]).abs() < 1e-12, "{name} at {sparsity}");
            // Of units: heads floored, channels at the budget itself.
            let t = budget::targets(sparsity, Basis::Units, &cfg, &fams, HeadGates::PerHead);
            assert_eq!(t, [want, sparsity], "{name} at {sparsity}");
        }
        // Gates per KV group: one fraction for every family, as before.
        let fams = budget::families(&cfg, HeadGates::PerGroup, true, false);
        let t = budget::targets(0.5, Basis::Params, &cfg, &fams, HeadGates::PerGroup);
        assert_eq!(t, [0.5, 0.5], "{name}");
    }
    // Multi-head attention floors to whole heads per layer: 8 heads at 0.3 lose 2.
    let mut mha = fixture("stories260k").config;
    mha.num_key_value_heads = 8;
    assert_eq!(budget::whole_heads(&mha, 0.3), 0.25);
}

/// stories260k: load -> gate-insert (per-head gates, `sparsity`) -> threshold (uniform) ->
/// slice (uniform shapes, channels to a multiple of 8).
fn per_head_recipe(sparsity: f64) -> String {
    format!(
        r#"
name = "heads"
[stages.load]
kind = "load"
model = "{model}"
[stages.gate-insert]
kind = "gate-insert"
after = ["load"]
heads = "per-head"
sparsity = {sparsity}
seed = 3
[stages.threshold]
kind = "threshold"
after = ["gate-insert"]
rule = "uniform"
multiple = 8
[stages.slice]
kind = "slice"
after = ["threshold"]
uniform = true
multiple = 8
"#,
        model = fixtures().join("stories260k").display(),
    )
}

const TRANSFORMERS_LOGITS: &str = r#"
import json, sys
import torch
from transformers import AutoModelForCausalLM
d, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
m, info = AutoModelForCausalLM.from_pretrained(
    d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
bad = {k: v for k, v in info.items() if v}
if bad:
    sys.exit(f"weights that did not load as they are: {bad}")
with torch.no_grad():
    lg = m(torch.tensor([ids])).logits[0]
lg.numpy().astype("<f4").tofile(out)
print(type(m).__name__, m.config.num_attention_heads, m.config.num_key_value_heads)
"#;

/// The logits transformers gives for `ids` from the HF directory `dir`, or None (with a
/// message) when the test venv is absent.
fn transformers_logits(dir: &Path, ids: &[i64]) -> Option<Vec<f32>> {
    let py = Path::new("/work/torchenv/bin/python");
    if !py.exists() {
        eprintln!(
            "skipping the transformers check: {} is absent",
            py.display()
        );
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (script, out) = (tmp.path().join("logits.py"), tmp.path().join("logits.f32"));
    fs::write(&script, TRANSFORMERS_LOGITS).unwrap();
    let ids = serde_json::to_string(ids).unwrap();
    let run = std::process::Command::new(py)
        .arg(&script)
        .arg(dir)
        .arg(&ids)
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "transformers failed on {}: {stderr}",
        dir.display()
    );
    eprintln!(
        "transformers: {}",
        String::from_utf8_lossy(&run.stdout).trim()
    );
    let bytes = fs::read(&out).unwrap();
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn stories260k_per_head_uniform_slices_to_a_standard_config_transformers_loads() {
    let d = tempfile::tempdir().unwrap();
    let s = run_text_at(d.path(), "heads.toml", &per_head_recipe(0.5));
    for res in &s.results {
        assert_eq!(res.outcome, Outcome::Ran, "{}: {:?}", res.name, res.outcome);
    }
    let m = |name: &str| &s.results.iter().find(|x| x.name == name).unwrap().metrics;
    // 2 heads per group: a target of 0.55 of q/o parameters is floored to one head per group.
    assert_eq!(
        m("gate-insert")["target_heads"],
        0.5,
        "{:?}",
        m("gate-insert")
    );
    for i in 0..5 {
        assert_eq!(m("threshold")[&format!("sparsity_heads_layer{i:02}")], 0.5);
    }
    let out = d.path().join("out/heads");
    let mask: FinalMask =
        serde_json::from_str(&fs::read_to_string(out.join("threshold/mask.json")).unwrap())
            .unwrap();
    for (i, l) in mask.layers.iter().enumerate() {
        let per_group: Vec<usize> = l
            .heads
            .chunks(2)
            .map(|g| g.iter().filter(|&&x| x != 0.0).count())
            .collect();
        assert_eq!(per_group, [1, 1, 1, 1], "layer {i}: {:?}", l.heads);
    }
    let dense = fixture("stories260k");
    let dir = out.join("slice/model");
    let sliced = ddp::io::open_model(&dir).unwrap();
    let c = &sliced.config;
    assert!(c.layer_shapes.is_none(), "a standard config");
    // KV heads unchanged, one query head kept per group, in every layer.
    assert_eq!((c.num_key_value_heads, c.num_attention_heads), (4, 4));
    assert_eq!(c.head_dim, dense.config.head_dim);
    assert_eq!(c.intermediate_size % 8, 0);
    let (ids, _, _) = golden("stories260k.safetensors");
    let want = gated_logits(&dense, &mask, &ids);
    let got = logits(&model(&sliced), &ids);
    let diff = max_abs_diff(&got, &want);
    eprintln!("sliced vs gated: max |logit diff| {diff}");
    assert!(diff <= 1e-4, "sliced vs gated differ by {diff}");
    if let Some(hf) = transformers_logits(&dir, &ids) {
        let diff = max_abs_diff(&hf, &want);
        eprintln!("transformers on the sliced directory vs gated: max |logit diff| {diff}");
        assert!(diff <= 1e-4, "transformers vs gated differ by {diff}");
    }
}

/// gate-insert's `scope = "per-group"` records each layer's KV groups for per-head gates (the
/// rows anneal-train takes the target over); with gates per KV group it is the per-layer scope.
#[test]
fn the_per_group_scope_records_the_kv_groups_of_per_head_gates() {
    for (heads, want) in [("per-head", vec![4; 5]), ("per-group", vec![])] {
        let d = tempfile::tempdir().unwrap();
        let recipe = format!(
            "name = \"g\"\n[stages.load]\nkind = \"load\"\nmodel = \"{}\"\n\
             [stages.gate-insert]\nkind = \"gate-insert\"\nafter = [\"load\"]\n\
             heads = \"{heads}\"\nscope = \"per-group\"\n",
            fixtures().join("stories260k").display()
        );
        run_text_at(d.path(), "g.toml", &recipe);
        let gates = fs::read_to_string(d.path().join("out/g/gate-insert/gates.json")).unwrap();
        let st: GateState = serde_json::from_str(&gates).unwrap();
        assert_eq!(st.scope, Scope::PerGroup, "{heads}");
        assert_eq!(st.kv_groups, want, "{heads}");
    }
}
