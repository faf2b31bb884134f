//! Slicing: the sliced model gives the gated model's logits under the final mask, and the
//! written directory reloads to the same logits.

use crate::common::*;

use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Int, Tensor, TensorData};
use ddp::io::{export, ModelFiles};
use ddp::model::Logits;
use ddp::prune::mask::{expand_groups, FinalMask, LayerMask};
use ddp::prune::slice;

/// A deterministic mask: a fraction `drop` of KV groups (or single heads) and of channels
/// removed, survivors scaled by gates in [1 - spread, 1 + spread].
fn mask_for(files: &ModelFiles, per_group: bool, seed: u32, drop: f32, spread: f32) -> FinalMask {
    let c = &files.config;
    let mut x = seed;
    let mut rnd = move || {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (x >> 8) as f32 / (1u32 << 24) as f32
    };
    let layers = (0..c.num_hidden_layers)
        .map(|_| {
            let n = if per_group {
                c.num_key_value_heads
            } else {
                c.num_attention_heads
            };
            let units: Vec<f32> = (0..n)
                .map(|_| {
                    if rnd() < drop {
                        0.0
                    } else {
                        1.0 - spread + 2.0 * spread * rnd()
                    }
                })
                .collect();
            LayerMask {
                heads: expand_groups(&units, c.num_attention_heads),
                channels: (0..c.intermediate_size)
                    .map(|_| {
                        if rnd() < drop {
                            0.0
                        } else {
                            1.0 - spread + 2.0 * spread * rnd()
                        }
                    })
                    .collect(),
                experts: vec![],
            }
        })
        .collect();
    FinalMask { layers }
}

fn check(
    files: &ModelFiles,
    ids: &[i64],
    per_group: bool,
    uniform: bool,
    drop: f32,
    spread: f32,
    tol: f32,
) {
    let mask = mask_for(files, per_group, 7, drop, spread);
    let want = gated_logits(files, &mask, ids);
    let sliced = slice::slice(
        &files.config,
        files.weights.as_ref(),
        &mask,
        uniform,
        if uniform { 8 } else { 1 },
    )
    .unwrap();
    let c = &sliced.config;
    if uniform {
        assert!(
            c.layer_shapes.is_none(),
            "uniform slicing must give a standard config"
        );
        assert_eq!(c.intermediate_size % 8, 0);
    }
    assert!(c.num_hidden_layers == files.config.num_hidden_layers);
    let d = tempfile::tempdir().unwrap();
    export::write_hf_dir(d.path(), c, &sliced.tensors, files.tokenizer.as_ref()).unwrap();
    let reloaded = ddp::io::open_model(d.path()).unwrap();
    assert_eq!(&reloaded.config, c);
    let got = logits(&model(&reloaded), ids);
    let diff = max_abs_diff(&got, &want);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    eprintln!("per_group={per_group} uniform={uniform}: max |logit| {scale}, diff {diff}");
    assert!(
        diff <= tol,
        "per_group={per_group} uniform={uniform}: sliced vs gated differ by {diff}"
    );
    // It really is smaller.
    let before = ddp::model::accounting::count(&files.config).total;
    let after = ddp::model::accounting::count(c).total;
    assert!(after < before || drop == 0.0, "{after} >= {before}");
    let stored: usize = sliced.tensors.values().map(|t| t.numel()).sum();
    assert_eq!(
        stored, after,
        "parameter accounting matches the tensors written"
    );
}

#[test]
fn stories260k_sliced_equals_gated() {
    let files = fixture("stories260k");
    let (ids, _, _) = golden("stories260k.safetensors");
    for (per_group, uniform) in [(true, true), (true, false), (false, false), (false, true)] {
        check(&files, &ids, per_group, uniform, 0.3, 0.5, 1e-4);
    }
}

#[test]
fn smollm2_sliced_equals_gated() {
    let files = open(SMOLLM2);
    let (ids, _, _) = golden("smollm2.safetensors");
    // A 20 % mask with gates near 1, as training produces.
    // Nothing removed, all gates 1: the very same model.
    check(&files, &ids, false, false, 0.0, 0.0, 0.0);
    // Over 30 layers, the f32 summation order that changes with the matrix shapes moves the
    // logits (up to ~30) by ~2e-4 even with gates of exactly 0 and 1: the tolerance is the one
    // the golden test accepts between this model and transformers on the same weights.
    check(&files, &ids, true, true, 0.2, 0.2, 5e-4);
    check(&files, &ids, false, false, 0.2, 0.2, 5e-4);
    check(&files, &ids, true, false, 0.2, 0.0, 5e-4);
}

#[test]
fn threshold_rules() {
    use ddp::prune::mask;
    let z = vec![vec![0.9, -0.05, 0.3], vec![0.0, 2.0, 0.1]];
    assert_eq!(
        mask::relu(&z),
        vec![vec![0.9, 0.0, 0.3], vec![0.0, 2.0, 0.1]]
    );
    assert_eq!(
        mask::topk(&z, 3),
        vec![vec![0.9, 0.0, 0.3], vec![0.0, 2.0, 0.0]]
    );
    assert_eq!(
        mask::uniform(&z, &[0, 0], |_| 1),
        vec![vec![0.9, 0.0, 0.0], vec![0.0, 2.0, 0.0]]
    );
    // Expert channels: the same count kept in every expert (groups of 2: two experts per layer).
    let e = vec![vec![0.5, 0.7, 0.2, 0.1], vec![0.3, 0.0, 0.0, 0.9]];
    assert_eq!(
        mask::uniform(&e, &[2, 2], |n| n / 2),
        vec![vec![0.0, 0.7, 0.2, 0.0], vec![0.3, 0.0, 0.0, 0.9]]
    );
    let (total, per) = mask::sparsity(&mask::topk(&z, 3));
    assert_eq!(total, 0.5);
    assert_eq!(per, vec![1.0 / 3.0, 2.0 / 3.0]);
    assert_eq!(
        mask::expand_groups(&[1.0, 0.0], 4),
        vec![1.0, 1.0, 0.0, 0.0]
    );
}

/// A MoE mask: KV groups, shared-expert channels and expert channels dropped with probability
/// `drop`, the last third of every expert's channels and every channel of expert 1 in layer 0
/// dropped (a dead expert stays: the router still picks it), survivors scaled by gates in
/// [0.6, 1.4].
fn moe_mask(cfg: &ddp::model::ModelConfig, drop: f32) -> FinalMask {
    let mut x = 11u32;
    let mut rnd = move || {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (x >> 8) as f32 / (1u32 << 24) as f32
    };
    let mut gate = |dead: bool| {
        if dead || rnd() < drop {
            0.0
        } else {
            0.6 + 0.8 * rnd()
        }
    };
    FinalMask {
        layers: (0..cfg.num_hidden_layers)
            .map(|i| {
                let u = ddp::model::accounting::units(cfg, i);
                let groups: Vec<f32> = (0..u.kv_heads).map(|_| gate(false)).collect();
                LayerMask {
                    heads: expand_groups(&groups, u.heads),
                    channels: (0..u.channels).map(|_| gate(false)).collect(),
                    experts: (0..u.experts * u.expert_width)
                        .map(|j| {
                            let w = u.expert_width.max(1);
                            gate((i == 0 && j / w == 1) || j % w >= w * 2 / 3)
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

#[test]
fn moe_sliced_equals_gated_and_reloads() {
    let ids: Vec<i64> = vec![1, 7, 3, 22, 9, 14, 0, 31, 5, 5, 18, 2];
    let dev = NdArrayDevice::Cpu;
    for arch in [
        ddp::model::config::Arch::Qwen2Moe,
        ddp::model::config::Arch::Mixtral,
        ddp::model::config::Arch::Qwen3Moe,
    ] {
        let mut cfg = tiny::config(arch, 4, 2);
        if arch == ddp::model::config::Arch::Qwen2Moe {
            // A dense layer between MoE layers (Qwen's `mlp_only_layers`).
            cfg.num_hidden_layers = 3;
            cfg.moe.as_mut().unwrap().dense_layers = vec![1];
        }
        let w = tiny::random_weights(&cfg, 21);
        let dense = ddp::model::load::load_model::<B>(&cfg, &w, &dev, None).unwrap();
        let mask = moe_mask(&cfg, 0.4);
        let gates = gates_of(&cfg, &mask);
        dense.check_gates(&gates).unwrap();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &dev);
        let want: Vec<f32> = dense
            .forward(t, None, Some(&gates), Logits::All)
            .into_data()
            .into_vec()
            .unwrap();
        for uniform in [false, true] {
            let what = format!("{arch:?} uniform={uniform}");
            let sliced = slice::slice(&cfg, &w, &mask, uniform, if uniform { 4 } else { 1 })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let c = &sliced.config;
            let m = c.moe.as_ref().unwrap();
            assert_eq!(m.num_experts, 4, "{what}: experts are kept");
            if uniform {
                assert!(c.layer_shapes.is_none(), "{what}: standard config");
                assert_eq!(m.moe_intermediate_size % 4, 0, "{what}");
                // The widest expert anywhere, rounded up to the multiple.
                let widest = mask
                    .layers
                    .iter()
                    .flat_map(|l| l.experts.chunks(12))
                    .map(|e| e.iter().filter(|&&g| g != 0.0).count())
                    .max()
                    .unwrap();
                assert_eq!(
                    m.moe_intermediate_size,
                    (widest.div_ceil(4) * 4).min(12),
                    "{what}"
                );
                if arch == ddp::model::config::Arch::Mixtral {
                    assert_eq!(c.intermediate_size, m.moe_intermediate_size, "{what}");
                }
            } else {
                assert!(c.layer_shapes.is_some(), "{what}: per-layer widths");
            }
            let d = tempfile::tempdir().unwrap();
            export::write_hf_dir(d.path(), c, &sliced.tensors, None).unwrap();
            let reloaded = ddp::io::open_model(d.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(&reloaded.config, c, "{what}");
            let got = logits(&model(&reloaded), &ids);
            let diff = max_abs_diff(&got, &want);
            eprintln!("{what}: sliced vs gated max diff {diff}");
            assert!(diff <= 1e-4, "{what}: sliced vs gated differ by {diff}");
            let before = ddp::model::accounting::count(&cfg);
            let after = ddp::model::accounting::count(c);
            assert!(after.experts < before.experts, "{what}");
            let stored: usize = sliced.tensors.values().map(|t| t.numel()).sum();
            assert_eq!(
                stored, after.total,
                "{what}: accounting matches the tensors"
            );
        }
    }
}
