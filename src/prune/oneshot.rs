//! One-shot structured pruning scores, the baselines DDP is compared against at the same
//! budget: `magnitude` (the weight norm of each unit), `wanda-sp` (|W| times the input norm,
//! summed over the unit's output-projection column(s), An et al.'s structured Wanda) and
//! `flap` (the fluctuation of the unit's input over the calibration tokens times the squared
//! norm of its column(s), standardised per layer and family as FLAP does before ranking
//! globally). Scores go into `GateState::z` (with `scored_by` set); threshold ranks them.

use std::sync::{Arc, Mutex};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::train::{GateState, HeadGates};
use crate::error::{Error, Result};
use crate::io::weights::WeightSource;
use crate::model::layers::{Ffn, InputStats};
use crate::model::{Logits, Model, ModelConfig};

pub const METHODS: &[&str] = &["magnitude", "wanda-sp", "flap"];

/// Input statistics of each layer's o_proj and down_proj.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerStats {
    pub o: InputStats,
    pub down: InputStats,
}

/// Probes on every o_proj and dense down_proj input; they sum what passes until detached.
pub struct Probes(Vec<(Probe, Probe)>);

type Probe = Arc<Mutex<InputStats>>;

impl Probes {
    pub fn attach<B: Backend>(model: &mut Model<B>) -> Result<Self> {
        let mut probes = vec![];
        for l in &mut model.layers {
            let o = Arc::new(Mutex::new(InputStats::default()));
            let d = Arc::new(Mutex::new(InputStats::default()));
            match &mut l.ffn {
                Ffn::Dense(m) => m.down.probe = Some(d.clone()),
                Ffn::Moe(_) => {
                    return Err(Error::Invalid(
                        "one-shot scores of MoE expert channels are not supported yet".into(),
                    ))
                }
            }
            l.attn.o.probe = Some(o.clone());
            probes.push((o, d));
        }
        Ok(Self(probes))
    }

    /// Removes the probes and returns what they saw.
    pub fn detach<B: Backend>(self, model: &mut Model<B>) -> Vec<LayerStats> {
        for l in &mut model.layers {
            l.attn.o.probe = None;
            if let Ffn::Dense(m) = &mut l.ffn {
                m.down.probe = None;
            }
        }
        let take = |p: &Probe| p.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.0
            .iter()
            .map(|(o, d)| LayerStats {
                o: take(o),
                down: take(d),
            })
            .collect()
    }
}

/// Runs `blocks` through the model (batches of `batch`) and collects the inputs of every
/// o_proj and dense down_proj.
pub fn activation_stats<B: Backend>(
    model: &mut Model<B>,
    blocks: &[Vec<u32>],
    batch: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<LayerStats>> {
    let probes = Probes::attach(model)?;
    for chunk in blocks.chunks(batch.max(1)) {
        let s = chunk[0].len();
        let ids: Vec<i64> = chunk.iter().flatten().map(|&t| t as i64).collect();
        let t =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), s]), &model.device);
        // Only the probes matter: the last position's logits keep the LM head cheap.
        let _ = model.forward(t, None, None, Logits::Last).into_data();
        on_batch(chunk.len());
    }
    Ok(probes.detach(model))
}

/// A weight `[out, in]` (HF layout) on the host.
struct Mat {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Mat {
    fn load(w: &dyn WeightSource, name: &str, rows: usize, cols: usize) -> Result<Self> {
        let t = w.load_shaped(name, &[rows, cols])?;
        Ok(Self {
            rows,
            cols,
            data: t.data,
        })
    }
    /// Squared norm and absolute sum of column `j` (an input feature).
    fn col(&self, j: usize) -> (f64, f64) {
        (0..self.rows).fold((0.0, 0.0), |(sq, ab), i| {
            let x = self.data[i * self.cols + j] as f64;
            (sq + x * x, ab + x.abs())
        })
    }
    /// Squared norm of row `i` (an output feature).
    fn row_sq(&self, i: usize) -> f64 {
        self.data[i * self.cols..(i + 1) * self.cols]
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum()
    }
}

/// Importance of each input feature `j` of an output projection.
fn column_scores(method: &str, w: &Mat, stats: Option<&InputStats>) -> Result<Vec<f64>> {
    let need = || {
        Error::Invalid(format!(
            "`{method}` needs activation statistics: set `activation_stats` (a number of blocks) in the calibrate stage"
        ))
    };
    Ok(match method {
        "magnitude" => (0..w.cols).map(|j| w.col(j).0).collect(),
        "wanda-sp" => {
            let n = stats.filter(|s| s.rows > 0).ok_or_else(need)?.norm();
            (0..w.cols).map(|j| w.col(j).1 * n[j]).collect()
        }
        "flap" => {
            let v = stats.filter(|s| s.rows > 0).ok_or_else(need)?.variance();
            (0..w.cols).map(|j| v[j] * w.col(j).0).collect()
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown one-shot method `{other}` (expected one of {METHODS:?})"
            )))
        }
    })
}

fn standardise(v: &mut [f64]) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    for x in v.iter_mut() {
        *x = if sd > 0.0 { (*x - mean) / sd } else { 0.0 };
    }
}

/// Fills every family's `z` of `state` with one-shot scores of `method` (positive; larger is
/// more important) and marks the state as scored.
pub fn score(
    method: &str,
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    stats: Option<&[LayerStats]>,
    state: &mut GateState,
) -> Result<()> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let mut per_family: Vec<Vec<Vec<f64>>> = vec![vec![]; state.families.len()];
    for i in 0..cfg.num_hidden_layers {
        let shape = cfg.layer(i);
        let (nh, nkv, ffn) = (
            shape.num_attention_heads,
            shape.num_key_value_heads,
            shape.intermediate_size,
        );
        let p = format!("model.layers.{i}");
        let st = stats.and_then(|s| s.get(i));
        for (fi, f) in state.families.iter().enumerate() {
            let scores = if f.name == "heads" {
                let o = Mat::load(w, &format!("{p}.self_attn.o_proj.weight"), h, nh * hd)?;
                let cols = column_scores(method, &o, st.map(|s| &s.o))?;
                let mut head: Vec<f64> = (0..nh)
                    .map(|q| cols[q * hd..(q + 1) * hd].iter().sum())
                    .collect();
                if method == "magnitude" {
                    let qw = Mat::load(w, &format!("{p}.self_attn.q_proj.weight"), nh * hd, h)?;
                    for (q, s) in head.iter_mut().enumerate() {
                        *s += (q * hd..(q + 1) * hd).map(|r| qw.row_sq(r)).sum::<f64>();
                    }
                }
                if state.heads == HeadGates::PerGroup {
                    let g = nh / nkv.max(1);
                    let mut grp: Vec<f64> = head.chunks(g.max(1)).map(|c| c.iter().sum()).collect();
                    if method == "magnitude" {
                        let k = Mat::load(w, &format!("{p}.self_attn.k_proj.weight"), nkv * hd, h)?;
                        let v = Mat::load(w, &format!("{p}.self_attn.v_proj.weight"), nkv * hd, h)?;
                        for (gi, s) in grp.iter_mut().enumerate() {
                            *s += (gi * hd..(gi + 1) * hd)
                                .map(|r| k.row_sq(r) + v.row_sq(r))
                                .sum::<f64>();
                        }
                    }
                    grp
                } else {
                    head
                }
            } else {
                let down = Mat::load(w, &format!("{p}.mlp.down_proj.weight"), h, ffn)?;
                let mut ch = column_scores(method, &down, st.map(|s| &s.down))?;
                if method == "magnitude" {
                    let gate = Mat::load(w, &format!("{p}.mlp.gate_proj.weight"), ffn, h)?;
                    let up = Mat::load(w, &format!("{p}.mlp.up_proj.weight"), ffn, h)?;
                    for (j, s) in ch.iter_mut().enumerate() {
                        *s += gate.row_sq(j) + up.row_sq(j);
                    }
                }
                ch
            };
            if scores.len() != f.z[i].len() {
                return Err(Error::Invalid(format!(
                    "layer {i}: {} scores for {} gates of family {}",
                    scores.len(),
                    f.z[i].len(),
                    f.name
                )));
            }
            per_family[fi].push(scores);
        }
    }
    for (f, mut layers) in state.families.iter_mut().zip(per_family) {
        if method == "flap" {
            layers.iter_mut().for_each(|l| standardise(l));
        } else if method == "magnitude" {
            // Norms, not squared norms, so heads and channels rank on one scale of weight size.
            layers.iter_mut().flatten().for_each(|x| *x = x.sqrt());
        }
        // Strictly positive, order kept: threshold treats 0 as removed.
        let min = layers
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let shift = if min <= 0.0 { 1e-3 - min } else { 0.0 };
        f.z = layers
            .into_iter()
            .map(|l| l.into_iter().map(|x| (x + shift) as f32).collect())
            .collect();
    }
    state.scored_by = Some(method.to_string());
    Ok(())
}
