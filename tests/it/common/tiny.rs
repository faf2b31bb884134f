//! Tiny random models built in memory, and an independent f64 reference forward pass written
//! with plain loops (no burn), to check the burn model's maths for every architecture.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ddp::model::config::{Arch, LayerShape, ModelConfig, MoeConfig, RopeScaling};
use ddp::model::weights::{summarize_dtypes, HostTensor, WeightSource};
use ddp::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub struct MemWeights {
    pub map: BTreeMap<String, HostTensor>,
    origin: PathBuf,
}

impl MemWeights {
    pub fn get(&self, n: &str) -> &HostTensor {
        self.map.get(n).unwrap_or_else(|| panic!("missing {n}"))
    }
}

impl WeightSource for MemWeights {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.map.get(name).map(|t| t.shape.clone())
    }
    fn load(&self, name: &str) -> Result<HostTensor> {
        self.map
            .get(name)
            .cloned()
            .ok_or_else(|| ddp::Error::bad_tensor(&self.origin, name, "missing"))
    }
    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
    fn dtype_summary(&self) -> String {
        summarize_dtypes(std::iter::once("F32"))
    }
}

pub fn config(arch: Arch, heads: usize, kv: usize) -> ModelConfig {
    let moe = arch.spec().moe.map(|_| MoeConfig {
        num_experts: 4,
        num_experts_per_tok: 2,
        moe_intermediate_size: 12,
        norm_topk_prob: arch.spec().norm_topk_default,
        shared_expert_intermediate_size: (arch == Arch::Qwen2Moe).then_some(20),
        dense_layers: vec![],
    });
    ModelConfig {
        arch,
        vocab_size: 40,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        attention_bias: arch.spec().qkv_bias,
        moe,
        bos_token_id: None,
        eos_token_id: None,
        layer_shapes: None,
        sliding_window: None,
        sliding_layers_from: 0,
    }
}

pub fn llama3_scaling() -> RopeScaling {
    RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16.0,
    }
}

/// Random weights for `cfg`, HF names and `[out, in]` layout.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> MemWeights {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut map = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        map.insert(name, HostTensor::new(shape, data));
    };
    let (h, v, hd) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim);
    put("model.embed_tokens.weight".into(), vec![v, h], 1.0, 0.0);
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), vec![v, h], 0.5, 0.0);
    }
    put("model.norm.weight".into(), vec![h], 0.2, 1.0);
    let spec = cfg.spec();
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let l = cfg.layer(i);
        let (nh, nkv) = (l.num_attention_heads, l.num_key_value_heads);
        put(format!("{p}.input_layernorm.weight"), vec![h], 0.2, 1.0);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.2,
            1.0,
        );
        for (n, rows) in [("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)] {
            put(
                format!("{p}.self_attn.{n}_proj.weight"),
                vec![rows, h],
                0.4,
                0.0,
            );
            if cfg.attention_bias {
                put(format!("{p}.self_attn.{n}_proj.bias"), vec![rows], 0.2, 0.0);
            }
        }
        put(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, nh * hd],
            0.3,
            0.0,
        );
        if spec.qk_norm {
            put(format!("{p}.self_attn.q_norm.weight"), vec![hd], 0.2, 1.0);
            put(format!("{p}.self_attn.k_norm.weight"), vec![hd], 0.2, 1.0);
        }
        match (&cfg.moe, spec.moe) {
            (Some(m), Some(names)) if cfg.is_moe_layer(i) => {
                let b = format!("{p}.{}", names.block);
                put(
                    format!("{b}.{}.weight", names.router),
                    vec![m.num_experts, h],
                    0.8,
                    0.0,
                );
                for e in 0..m.num_experts {
                    let w = l.moe_intermediate_size;
                    put(
                        format!("{b}.experts.{e}.{}.weight", names.gate),
                        vec![w, h],
                        0.4,
                        0.0,
                    );
                    put(
                        format!("{b}.experts.{e}.{}.weight", names.up),
                        vec![w, h],
                        0.4,
                        0.0,
                    );
                    put(
                        format!("{b}.experts.{e}.{}.weight", names.down),
                        vec![h, w],
                        0.3,
                        0.0,
                    );
                }
                if m.shared_expert_intermediate_size.is_some() {
                    let si = l.shared_expert_intermediate_size;
                    put(
                        format!("{b}.shared_expert.gate_proj.weight"),
                        vec![si, h],
                        0.4,
                        0.0,
                    );
                    put(
                        format!("{b}.shared_expert.up_proj.weight"),
                        vec![si, h],
                        0.4,
                        0.0,
                    );
                    put(
                        format!("{b}.shared_expert.down_proj.weight"),
                        vec![h, si],
                        0.3,
                        0.0,
                    );
                    put(
                        format!("{b}.shared_expert_gate.weight"),
                        vec![1, h],
                        0.5,
                        0.0,
                    );
                }
            }
            _ => {
                let w = l.intermediate_size;
                put(format!("{p}.mlp.gate_proj.weight"), vec![w, h], 0.4, 0.0);
                put(format!("{p}.mlp.up_proj.weight"), vec![w, h], 0.4, 0.0);
                put(format!("{p}.mlp.down_proj.weight"), vec![h, w], 0.3, 0.0);
            }
        }
    }
    MemWeights {
        map,
        origin: PathBuf::from("<memory>"),
    }
}

/// Gates for the reference: per layer, heads (per query head), channels (of the dense FFN, or
/// of a MoE layer's shared expert), experts [e][c].
#[derive(Clone, Default)]
pub struct RefGates {
    pub heads: Vec<Option<Vec<f64>>>,
    pub channels: Vec<Option<Vec<f64>>>,
    pub experts: Vec<Option<Vec<Vec<f64>>>>,
}

/// `y[r] = sum_c W[r][c] x[c] (+ b[r])` for W `[out, in]`.
fn matvec(w: &HostTensor, b: Option<&HostTensor>, x: &[f64]) -> Vec<f64> {
    let (o, i) = (w.shape[0], w.shape[1]);
    (0..o)
        .map(|r| {
            let s: f64 = (0..i).map(|c| w.data[r * i + c] as f64 * x[c]).sum();
            s + b.map_or(0.0, |b| b.data[r] as f64)
        })
        .collect()
}

fn rms(x: &[f64], w: &HostTensor, eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(&w.data)
        .map(|(v, g)| v * r * *g as f64)
        .collect()
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn inv_freqs(cfg: &ModelConfig) -> Vec<f64> {
    let hd = cfg.head_dim;
    (0..hd / 2)
        .map(|i| {
            let f = 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64);
            match &cfg.rope_scaling {
                None => f,
                Some(RopeScaling::Linear { factor }) => f / factor,
                Some(RopeScaling::Factors { factors }) => f / factors[i],
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: lo,
                    high_freq_factor: hi,
                    original_max_position_embeddings: old,
                }) => {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    if wl < old / hi {
                        f
                    } else if wl > old / lo {
                        f / factor
                    } else {
                        let s = (old / wl - lo) / (hi - lo);
                        (1.0 - s) * f / factor + s * f
                    }
                }
            }
        })
        .collect()
}

fn rope(x: &mut [f64], pos: usize, freqs: &[f64]) {
    let half = freqs.len();
    for (i, f) in freqs.iter().enumerate() {
        let (s, c) = (pos as f64 * f).sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

fn mlp(w: &MemWeights, p: &str, names: [&str; 3], x: &[f64], gate: Option<&Vec<f64>>) -> Vec<f64> {
    let g = matvec(w.get(&format!("{p}.{}.weight", names[0])), None, x);
    let u = matvec(w.get(&format!("{p}.{}.weight", names[1])), None, x);
    let hcur: Vec<f64> = g
        .iter()
        .zip(&u)
        .enumerate()
        .map(|(j, (a, b))| silu(*a) * b * gate.map_or(1.0, |gg| gg[j]))
        .collect();
    matvec(w.get(&format!("{p}.{}.weight", names[2])), None, &hcur)
}

/// Logits `[seq][vocab]` by the textbook formulas, in f64.
pub fn reference(
    cfg: &ModelConfig,
    w: &MemWeights,
    ids: &[usize],
    gates: Option<&RefGates>,
) -> Vec<Vec<f64>> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let eps = cfg.rms_norm_eps;
    let freqs = inv_freqs(cfg);
    let spec = cfg.spec();
    let emb = w.get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&t| {
            emb.data[t * h..(t + 1) * h]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    let s = ids.len();
    for li in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{li}");
        let l = cfg.layer(li);
        let (nh, nkv) = (l.num_attention_heads, l.num_key_value_heads);
        let bias = |n: &str| w.map.get(&format!("{p}.self_attn.{n}_proj.bias"));
        let mut qs = vec![];
        let mut ks = vec![];
        let mut vs = vec![];
        for (pos, x) in xs.iter().enumerate() {
            let xn = rms(x, w.get(&format!("{p}.input_layernorm.weight")), eps);
            let mut q = matvec(
                w.get(&format!("{p}.self_attn.q_proj.weight")),
                bias("q"),
                &xn,
            );
            let mut k = matvec(
                w.get(&format!("{p}.self_attn.k_proj.weight")),
                bias("k"),
                &xn,
            );
            let v = matvec(
                w.get(&format!("{p}.self_attn.v_proj.weight")),
                bias("v"),
                &xn,
            );
            for (t, n, heads) in [(&mut q, "q", nh), (&mut k, "k", nkv)] {
                for hh in 0..heads {
                    let seg = &mut t[hh * hd..(hh + 1) * hd];
                    if spec.qk_norm {
                        let normed =
                            rms(seg, w.get(&format!("{p}.self_attn.{n}_norm.weight")), eps);
                        seg.copy_from_slice(&normed);
                    }
                    rope(seg, pos, &freqs);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let mut new_xs = vec![];
        for pos in 0..s {
            let mut att = vec![0.0; nh * hd];
            for hh in 0..nh {
                let kvh = hh / (nh / nkv);
                let q = &qs[pos][hh * hd..(hh + 1) * hd];
                let lo = cfg.window(li).map_or(0, |w| (pos + 1).saturating_sub(w));
                let sc: Vec<f64> = (lo..=pos)
                    .map(|j| {
                        (0..hd).map(|d| q[d] * ks[j][kvh * hd + d]).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                let g = gates
                    .and_then(|g| g.heads[li].as_ref())
                    .map_or(1.0, |g| g[hh]);
                for (jj, v) in sc.iter().enumerate() {
                    let j = lo + jj;
                    let a = (v - m).exp() / z;
                    for d in 0..hd {
                        att[hh * hd + d] += g * a * vs[j][kvh * hd + d];
                    }
                }
            }
            let o = matvec(w.get(&format!("{p}.self_attn.o_proj.weight")), None, &att);
            let x1: Vec<f64> = xs[pos].iter().zip(&o).map(|(a, b)| a + b).collect();
            let xn = rms(
                &x1,
                w.get(&format!("{p}.post_attention_layernorm.weight")),
                eps,
            );
            let y = match (&cfg.moe, spec.moe) {
                (Some(m), Some(names)) if cfg.is_moe_layer(li) => {
                    let b = format!("{p}.{}", names.block);
                    let logits = matvec(w.get(&format!("{b}.{}.weight", names.router)), None, &xn);
                    let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|v| (v - mx).exp()).sum();
                    let probs: Vec<f64> = logits.iter().map(|v| (v - mx).exp() / z).collect();
                    let mut order: Vec<usize> = (0..m.num_experts).collect();
                    order.sort_by(|a, c| probs[*c].total_cmp(&probs[*a]));
                    let top = &order[..m.num_experts_per_tok];
                    let norm: f64 = if m.norm_topk_prob {
                        top.iter().map(|&e| probs[e]).sum()
                    } else {
                        1.0
                    };
                    let mut y = vec![0.0; h];
                    for &e in top {
                        let g = gates.and_then(|g| g.experts[li].as_ref()).map(|g| &g[e]);
                        let ye = mlp(
                            w,
                            &format!("{b}.experts.{e}"),
                            [names.gate, names.up, names.down],
                            &xn,
                            g,
                        );
                        for d in 0..h {
                            y[d] += probs[e] / norm * ye[d];
                        }
                    }
                    if m.shared_expert_intermediate_size.is_some() {
                        let ys = mlp(
                            w,
                            &format!("{b}.shared_expert"),
                            ["gate_proj", "up_proj", "down_proj"],
                            &xn,
                            gates.and_then(|g| g.channels[li].as_ref()),
                        );
                        let sg =
                            matvec(w.get(&format!("{b}.shared_expert_gate.weight")), None, &xn)[0];
                        let sg = 1.0 / (1.0 + (-sg).exp());
                        for d in 0..h {
                            y[d] += sg * ys[d];
                        }
                    }
                    y
                }
                _ => mlp(
                    w,
                    &format!("{p}.mlp"),
                    ["gate_proj", "up_proj", "down_proj"],
                    &xn,
                    gates.and_then(|g| g.channels[li].as_ref()),
                ),
            };
            new_xs.push(x1.iter().zip(&y).map(|(a, b)| a + b).collect());
        }
        xs = new_xs;
    }
    let head = if cfg.tie_word_embeddings {
        emb
    } else {
        w.get("lm_head.weight")
    };
    xs.iter()
        .map(|x| matvec(head, None, &rms(x, w.get("model.norm.weight"), eps)))
        .collect()
}

/// Removes units physically: per layer, the query heads, KV heads and channels to drop.
pub struct Removal {
    pub heads: Vec<Vec<usize>>,
    pub kv_heads: Vec<Vec<usize>>,
    pub channels: Vec<Vec<usize>>,
}

fn keep_rows(t: &HostTensor, block: usize, drop: &[usize]) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let units = t.shape[0] / block;
    let mut data = vec![];
    for u in (0..units).filter(|u| !drop.contains(u)) {
        data.extend_from_slice(&t.data[u * block * cols..(u + 1) * block * cols]);
    }
    let mut shape = t.shape.clone();
    shape[0] = (units - drop.len()) * block;
    HostTensor::new(shape, data)
}

fn keep_cols(t: &HostTensor, block: usize, drop: &[usize]) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let units = c / block;
    let keep: Vec<usize> = (0..units).filter(|u| !drop.contains(u)).collect();
    let mut data = vec![];
    for row in 0..r {
        for &u in &keep {
            data.extend_from_slice(&t.data[row * c + u * block..row * c + (u + 1) * block]);
        }
    }
    HostTensor::new(vec![r, keep.len() * block], data)
}

/// A smaller model with the listed units removed, and its per-layer config.
pub fn remove(cfg: &ModelConfig, w: &MemWeights, r: &Removal) -> (ModelConfig, MemWeights) {
    let hd = cfg.head_dim;
    let mut map = w.map.clone();
    let mut shapes = vec![];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let l = cfg.layer(i);
        let get = |n: &str| w.get(&format!("{p}.{n}")).clone();
        map.insert(
            format!("{p}.self_attn.q_proj.weight"),
            keep_rows(&get("self_attn.q_proj.weight"), hd, &r.heads[i]),
        );
        map.insert(
            format!("{p}.self_attn.o_proj.weight"),
            keep_cols(&get("self_attn.o_proj.weight"), hd, &r.heads[i]),
        );
        for n in ["k", "v"] {
            map.insert(
                format!("{p}.self_attn.{n}_proj.weight"),
                keep_rows(
                    &get(&format!("self_attn.{n}_proj.weight")),
                    hd,
                    &r.kv_heads[i],
                ),
            );
        }
        map.insert(
            format!("{p}.mlp.gate_proj.weight"),
            keep_rows(&get("mlp.gate_proj.weight"), 1, &r.channels[i]),
        );
        map.insert(
            format!("{p}.mlp.up_proj.weight"),
            keep_rows(&get("mlp.up_proj.weight"), 1, &r.channels[i]),
        );
        map.insert(
            format!("{p}.mlp.down_proj.weight"),
            keep_cols(&get("mlp.down_proj.weight"), 1, &r.channels[i]),
        );
        shapes.push(LayerShape {
            num_attention_heads: l.num_attention_heads - r.heads[i].len(),
            num_key_value_heads: l.num_key_value_heads - r.kv_heads[i].len(),
            intermediate_size: l.intermediate_size - r.channels[i].len(),
            ..Default::default()
        });
    }
    let mut c = cfg.clone();
    c.layer_shapes = Some(shapes);
    (
        c,
        MemWeights {
            map,
            origin: PathBuf::from("<memory, sliced>"),
        },
    )
}
