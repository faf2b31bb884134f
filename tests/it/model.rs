//! The burn model against an independent f64 reference, for every architecture; gates; KV cache.

use crate::common::tiny::{self, RefGates, Removal};
use crate::common::*;

use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Int, Tensor, TensorData};
use ddp::model::config::Arch;
use ddp::model::{load, Gates, LayerGates, Logits, Model};

const IDS: [usize; 7] = [3, 17, 5, 39, 0, 22, 8];

fn build(cfg: &ddp::model::ModelConfig, w: &tiny::MemWeights) -> Model<B> {
    load::load_model::<B>(cfg, w, &NdArrayDevice::Cpu, None).unwrap()
}

fn run(m: &Model<B>, gates: Option<&Gates<B>>) -> Vec<f32> {
    let ids: Vec<i64> = IDS.iter().map(|&x| x as i64).collect();
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, IDS.len()]), &m.device);
    if let Some(g) = gates {
        m.check_gates(g).unwrap();
    }
    m.forward(t, None, gates, Logits::All)
        .into_data()
        .into_vec()
        .unwrap()
}

fn vec1(v: &[f64]) -> Tensor<B, 1> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), &NdArrayDevice::Cpu)
}

fn close_to_reference(got: &[f32], want: &[Vec<f64>], tol: f64, what: &str) {
    let flat: Vec<f64> = want.iter().flatten().copied().collect();
    let diff = got
        .iter()
        .zip(&flat)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    let scale = flat.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.5, "{what}: logits are degenerate");
    assert!(
        diff <= tol,
        "{what}: max |diff| {diff} vs reference (logits up to {scale})"
    );
}

#[test]
fn every_architecture_matches_the_reference() {
    for (arch, heads, kv) in [
        (Arch::Llama, 4, 2),
        (Arch::Mistral, 4, 1),
        (Arch::Qwen2, 4, 2),
        (Arch::Qwen3, 2, 2),
        (Arch::Qwen3Moe, 4, 2),
        (Arch::Mixtral, 4, 2),
        (Arch::Qwen2Moe, 4, 4),
    ] {
        let cfg = tiny::config(arch, heads, kv);
        let w = tiny::random_weights(&cfg, 7);
        let got = run(&build(&cfg, &w), None);
        close_to_reference(
            &got,
            &tiny::reference(&cfg, &w, &IDS, None),
            2e-4,
            &format!("{arch:?}"),
        );
    }
}

#[test]
fn rope_scaling_and_tied_embeddings_match_the_reference() {
    let mut cfg = tiny::config(Arch::Llama, 4, 2);
    cfg.rope_scaling = Some(tiny::llama3_scaling());
    cfg.tie_word_embeddings = true;
    let w = tiny::random_weights(&cfg, 11);
    close_to_reference(
        &run(&build(&cfg, &w), None),
        &tiny::reference(&cfg, &w, &IDS, None),
        2e-4,
        "llama3 rope, tied",
    );
    cfg.rope_scaling = Some(ddp::model::config::RopeScaling::Linear { factor: 4.0 });
    close_to_reference(
        &run(&build(&cfg, &w), None),
        &tiny::reference(&cfg, &w, &IDS, None),
        2e-4,
        "linear rope",
    );
}

#[test]
fn all_ones_gates_give_exactly_the_ungated_logits() {
    for arch in [Arch::Llama, Arch::Qwen3Moe] {
        let cfg = tiny::config(arch, 4, 2);
        let w = tiny::random_weights(&cfg, 3);
        let m = build(&cfg, &w);
        let gates = Gates {
            layers: (0..cfg.num_hidden_layers)
                .map(|_| LayerGates {
                    heads: Some(vec1(&[1.0; 4])),
                    channels: cfg.moe.is_none().then(|| vec1(&[1.0; 24])),
                    experts: cfg.moe.as_ref().map(|m| {
                        Tensor::ones(
                            [m.num_experts, m.moe_intermediate_size],
                            &NdArrayDevice::Cpu,
                        )
                    }),
                })
                .collect(),
        };
        assert_eq!(run(&m, Some(&gates)), run(&m, None), "{arch:?}");
    }
}

#[test]
fn fractional_gates_match_the_reference() {
    // Qwen2-MoE: channel gates act on its shared expert.
    for arch in [Arch::Llama, Arch::Mixtral, Arch::Qwen2Moe] {
        let cfg = tiny::config(arch, 4, 2);
        let w = tiny::random_weights(&cfg, 5);
        let heads: Vec<f64> = vec![0.5, 1.7, 0.0, 1.0];
        let moe = cfg.moe.is_some();
        let width = match &cfg.moe {
            None => 24,
            Some(m) => m.shared_expert_intermediate_size.unwrap_or(0),
        };
        let chans: Vec<f64> = (0..width).map(|j| (j % 5) as f64 * 0.4).collect();
        let experts: Vec<Vec<f64>> = (0..4)
            .map(|e| (0..12).map(|j| ((e + j) % 3) as f64 * 0.6).collect())
            .collect();
        let gates = Gates {
            layers: (0..2)
                .map(|_| LayerGates {
                    heads: Some(vec1(&heads)),
                    channels: (width > 0).then(|| vec1(&chans)),
                    experts: moe.then(|| {
                        let flat: Vec<f32> = experts.iter().flatten().map(|&x| x as f32).collect();
                        Tensor::from_data(TensorData::new(flat, [4, 12]), &NdArrayDevice::Cpu)
                    }),
                })
                .collect(),
        };
        let r = RefGates {
            heads: vec![Some(heads.clone()); 2],
            channels: vec![(width > 0).then(|| chans.clone()); 2],
            experts: vec![moe.then(|| experts.clone()); 2],
        };
        close_to_reference(
            &run(&build(&cfg, &w), Some(&gates)),
            &tiny::reference(&cfg, &w, &IDS, Some(&r)),
            2e-4,
            &format!("{arch:?} gated"),
        );
    }
}

/// A zero gate must be the same model as one with the unit physically removed.
#[test]
fn zero_gates_equal_physical_removal() {
    // MHA: per-head gates; GQA: per-KV-group gates (removing the group's query heads and its KV head).
    for (heads, kv, gate_len, dropped_q, dropped_kv) in [
        (
            4,
            4,
            4,
            vec![vec![1], vec![0, 3]],
            vec![vec![1], vec![0, 3]],
        ),
        (4, 2, 2, vec![vec![2, 3], vec![]], vec![vec![1], vec![]]),
    ] {
        let cfg = tiny::config(Arch::Llama, heads, kv);
        let w = tiny::random_weights(&cfg, 9);
        let dropped_c = vec![vec![0, 5, 23], vec![7]];
        let gates = Gates {
            layers: (0..2)
                .map(|i| {
                    let dropped_units = if gate_len == heads {
                        &dropped_q[i]
                    } else {
                        &dropped_kv[i]
                    };
                    let hg: Vec<f64> = (0..gate_len)
                        .map(|u| if dropped_units.contains(&u) { 0.0 } else { 1.0 })
                        .collect();
                    let cg: Vec<f64> = (0..24)
                        .map(|c| if dropped_c[i].contains(&c) { 0.0 } else { 1.0 })
                        .collect();
                    LayerGates {
                        heads: Some(vec1(&hg)),
                        channels: Some(vec1(&cg)),
                        experts: None,
                    }
                })
                .collect(),
        };
        let gated = run(&build(&cfg, &w), Some(&gates));
        let (small_cfg, small_w) = tiny::remove(
            &cfg,
            &w,
            &Removal {
                heads: dropped_q.clone(),
                kv_heads: dropped_kv.clone(),
                channels: dropped_c,
            },
        );
        let sliced = run(&build(&small_cfg, &small_w), None);
        let diff = max_abs_diff(&gated, &sliced);
        assert!(
            diff <= 1e-5,
            "heads {heads}/{kv}: gated vs removed differ by {diff}"
        );
    }
}

#[test]
fn a_layer_with_every_head_removed_still_runs() {
    let cfg = tiny::config(Arch::Llama, 4, 2);
    let w = tiny::random_weights(&cfg, 13);
    let gates = Gates {
        layers: vec![
            LayerGates {
                heads: Some(vec1(&[0.0, 0.0])),
                ..Default::default()
            },
            LayerGates::default(),
        ],
    };
    let gated = run(&build(&cfg, &w), Some(&gates));
    let (c, sw) = tiny::remove(
        &cfg,
        &w,
        &Removal {
            heads: vec![vec![0, 1, 2, 3], vec![]],
            kv_heads: vec![vec![0, 1], vec![]],
            channels: vec![vec![], vec![]],
        },
    );
    assert!(max_abs_diff(&gated, &run(&build(&c, &sw), None)) <= 1e-5);
}

#[test]
fn kv_cache_decode_equals_full_forward() {
    for arch in [Arch::Llama, Arch::Qwen3, Arch::Mixtral] {
        let cfg = tiny::config(arch, 4, 2);
        let w = tiny::random_weights(&cfg, 21);
        let m = build(&cfg, &w);
        let full = run(&m, None);
        let v = cfg.vocab_size;
        let mut cache = m.new_cache();
        // Prefill 3 tokens, then one at a time.
        let mut got = vec![];
        let chunks: Vec<&[usize]> = vec![&IDS[..3], &IDS[3..4], &IDS[4..5], &IDS[5..6], &IDS[6..]];
        for c in chunks {
            let ids: Vec<i64> = c.iter().map(|&x| x as i64).collect();
            let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, c.len()]), &m.device);
            let out: Vec<f32> = m
                .forward(t, Some(&mut cache), None, Logits::All)
                .into_data()
                .into_vec()
                .unwrap();
            got.extend(out);
        }
        assert_eq!(cache.len(), IDS.len());
        assert_eq!(got.len(), IDS.len() * v);
        let diff = max_abs_diff(&got, &full);
        assert!(diff <= 1e-5, "{arch:?}: cached decode differs by {diff}");
    }
}

#[test]
fn batched_prefill_equals_rows_run_alone() {
    let cfg = tiny::config(Arch::Qwen2, 4, 2);
    let w = tiny::random_weights(&cfg, 4);
    let m = build(&cfg, &w);
    let a: Vec<i64> = vec![1, 2, 3, 4];
    let b: Vec<i64> = vec![9, 8, 7, 6];
    let both: Vec<i64> = a.iter().chain(&b).copied().collect();
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(both, [2, 4]), &m.device);
    let batched: Vec<f32> = m
        .forward(t, None, None, Logits::All)
        .into_data()
        .into_vec()
        .unwrap();
    let one = |ids: &Vec<i64>| -> Vec<f32> {
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, 4]), &m.device);
        m.forward(t, None, None, Logits::All)
            .into_data()
            .into_vec()
            .unwrap()
    };
    let sep: Vec<f32> = one(&a).into_iter().chain(one(&b)).collect();
    assert!(max_abs_diff(&batched, &sep) <= 1e-5);
}

#[test]
fn wrong_gate_shapes_are_errors_not_panics() {
    let cfg = tiny::config(Arch::Llama, 4, 2);
    let m = build(&cfg, &tiny::random_weights(&cfg, 1));
    let bad = Gates {
        layers: vec![
            LayerGates {
                heads: Some(vec1(&[1.0, 1.0, 1.0])),
                ..Default::default()
            },
            LayerGates::default(),
        ],
    };
    let e = m.check_gates(&bad).unwrap_err().to_string();
    assert!(e.contains("layer 0") && e.contains("3 values"), "{e}");
    let short = Gates { layers: vec![] };
    assert!(m
        .check_gates(&short)
        .unwrap_err()
        .to_string()
        .contains("the model has 2"));
}

#[test]
fn sliding_window_attention_matches_the_reference_in_prefill_and_decode() {
    for (arch, from) in [(Arch::Mistral, 0), (Arch::Qwen2, 1)] {
        let mut cfg = tiny::config(arch, 4, 2);
        cfg.sliding_window = Some(3);
        cfg.sliding_layers_from = from;
        let w = tiny::random_weights(&cfg, 17);
        let m = build(&cfg, &w);
        let full = run(&m, None);
        close_to_reference(
            &full,
            &tiny::reference(&cfg, &w, &IDS, None),
            2e-4,
            &format!("{arch:?} window"),
        );
        let mut cache = m.new_cache();
        let mut got = vec![];
        for &id in &IDS {
            let t =
                Tensor::<B, 2, Int>::from_data(TensorData::new(vec![id as i64], [1, 1]), &m.device);
            got.extend(
                m.forward(t, Some(&mut cache), None, Logits::All)
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap(),
            );
        }
        assert!(
            max_abs_diff(&got, &full) <= 1e-5,
            "{arch:?}: windowed decode"
        );
        // The window must matter on this input.
        let mut no_window = cfg.clone();
        no_window.sliding_window = None;
        assert!(max_abs_diff(&run(&build(&no_window, &w), None), &full) > 1e-3);
    }
}

/// FLOPs per token with no context are twice the multiply-accumulates of every weight matrix a
/// token passes through: all parameters except norms (and the embedding lookup when untied);
/// attention adds 4 * heads * head_dim per earlier position.
#[test]
fn flops_per_token_follow_the_parameter_count() {
    use ddp::model::accounting::{count, flops_per_token};
    for tied in [true, false] {
        let mut cfg = tiny::config(Arch::Llama, 4, 2);
        cfg.tie_word_embeddings = tied;
        let p = count(&cfg);
        let lookup = if tied {
            0
        } else {
            cfg.vocab_size * cfg.hidden_size
        };
        let want = 2.0 * (p.total - p.other - lookup) as f64;
        assert_eq!(flops_per_token(&cfg, 0), want, "tied {tied}");
        let per_ctx = 4.0 * (cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim) as f64;
        assert_eq!(
            flops_per_token(&cfg, 10) - flops_per_token(&cfg, 0),
            10.0 * per_ctx
        );
    }
}
