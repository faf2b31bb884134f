//! One-shot structured pruning scores, the baselines DDP is compared against at the same
//! budget: `magnitude` (the weight norm of each unit), `wanda-sp` (|W| times the input norm,
//! summed over the unit's output-projection column(s), An et al.'s structured Wanda) and
//! `flap` (the fluctuation of the unit's input over the calibration tokens times the squared
//! norm of its column(s), standardised per layer and family as FLAP does before ranking
//! globally). Scores go into `GateState::z` (with `scored_by` set); threshold ranks them.
//! Routed-expert channels are scored like FFN channels, from each expert's own weights and the
//! inputs of its down_proj over the tokens routed to it.

use std::sync::{Arc, Mutex};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::train::{GateState, HeadGates};
use crate::error::{Error, Result};
use crate::model::layers::{Ffn, InputStats};
use crate::model::weights::WeightSource;
use crate::model::{accounting, Logits, Model, ModelConfig};
use crate::prune::family::FamilyKind;

/// The scoring methods, by the names recipes use.
pub const METHODS: &[&str] = &["magnitude", "wanda-sp", "flap"];

/// Input statistics of each layer's o_proj and down_proj (in a MoE layer: the shared
/// expert's down_proj), and of each routed expert's down_proj (over the tokens routed to it).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerStats {
    /// Inputs of o_proj: the concatenated head outputs.
    pub o: InputStats,
    /// Inputs of the dense (or shared-expert) down_proj: the FFN channels.
    pub down: InputStats,
    /// Inputs of each routed expert's down_proj (empty in a dense layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<InputStats>,
}

type Probe = Arc<Mutex<InputStats>>;

/// The probes of one layer.
struct LayerProbes {
    o: Probe,
    down: Probe,
    experts: Vec<Probe>,
}

/// Probes on every o_proj and down_proj input (dense, shared-expert and routed-expert); they
/// sum what passes until detached.
pub struct Probes(Vec<LayerProbes>);

fn probe() -> Probe {
    Arc::new(Mutex::new(InputStats::default()))
}

impl Probes {
    /// Attaches fresh probes to every layer of `model`.
    pub fn attach<B: Backend>(model: &mut Model<B>) -> Self {
        let mut probes = vec![];
        for l in &mut model.layers {
            let p = LayerProbes {
                o: probe(),
                down: probe(),
                experts: vec![],
            };
            l.attn.o.probe = Some(p.o.clone());
            let p = match &mut l.ffn {
                Ffn::Dense(m) => {
                    m.down.probe = Some(p.down.clone());
                    p
                }
                Ffn::Moe(m) => {
                    if let Some((shared, _)) = &mut m.shared {
                        shared.down.probe = Some(p.down.clone());
                    }
                    let experts = m
                        .experts
                        .iter_mut()
                        .map(|e| {
                            let q = probe();
                            e.down.probe = Some(q.clone());
                            q
                        })
                        .collect();
                    LayerProbes { experts, ..p }
                }
            };
            probes.push(p);
        }
        Self(probes)
    }

    /// Removes the probes and returns what they saw.
    pub fn detach<B: Backend>(self, model: &mut Model<B>) -> Vec<LayerStats> {
        for l in &mut model.layers {
            l.attn.o.probe = None;
            match &mut l.ffn {
                Ffn::Dense(m) => m.down.probe = None,
                Ffn::Moe(m) => {
                    if let Some((shared, _)) = &mut m.shared {
                        shared.down.probe = None;
                    }
                    m.experts.iter_mut().for_each(|e| e.down.probe = None);
                }
            }
        }
        let take = |p: &Probe| p.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.0
            .iter()
            .map(|p| LayerStats {
                o: take(&p.o),
                down: take(&p.down),
                experts: p.experts.iter().map(take).collect(),
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
) -> Vec<LayerStats> {
    let probes = Probes::attach(model);
    for chunk in blocks.chunks(batch.max(1)) {
        let s = chunk[0].len();
        let ids: Vec<i64> = chunk.iter().flatten().map(|&t| t as i64).collect();
        let t =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), s]), &model.device);
        // Only the probes matter: the last position's logits keep the LM head cheap.
        let _ = model.forward(t, None, None, Logits::Last).into_data();
        on_batch(chunk.len());
    }
    probes.detach(model)
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

/// Scores of the channels of one SwiGLU MLP (`names`: its gate, up and down weights, `width`
/// channels): column scores of down, plus the gate/up row norms for `magnitude`. `unrouted_ok`:
/// a routed expert that saw no calibration token scores 0 (it never fired) instead of failing.
fn unit_scores(
    method: &str,
    w: &dyn WeightSource,
    names: [String; 3],
    h: usize,
    width: usize,
    stats: Option<&InputStats>,
    unrouted_ok: bool,
) -> Result<Vec<f64>> {
    let down = Mat::load(w, &names[2], h, width)?;
    if unrouted_ok && method != "magnitude" && stats.is_some_and(|s| s.rows == 0) {
        return Ok(vec![0.0; width]);
    }
    let mut ch = column_scores(method, &down, stats)?;
    if method == "magnitude" {
        let gate = Mat::load(w, &names[0], width, h)?;
        let up = Mat::load(w, &names[1], width, h)?;
        for (j, s) in ch.iter_mut().enumerate() {
            *s += gate.row_sq(j) + up.row_sq(j);
        }
    }
    Ok(ch)
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
    let mut per_family: Vec<Vec<Vec<f64>>> = vec![vec![]; state.families.len()];
    for i in 0..cfg.num_hidden_layers {
        let layer = LayerScorer {
            method,
            cfg,
            w,
            i,
            units: accounting::units(cfg, i),
            prefix: format!("model.layers.{i}"),
            stats: stats.and_then(|s| s.get(i)),
        };
        for (fi, f) in state.families.iter().enumerate() {
            let scores = if f.name == FamilyKind::Heads {
                layer.heads(state.heads)?
            } else if f.name == FamilyKind::Experts {
                let Some(scores) = layer.experts()? else {
                    per_family[fi].push(vec![]);
                    continue;
                };
                scores
            } else {
                layer.channels()?
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
    for (f, layers) in state.families.iter_mut().zip(per_family) {
        f.z = finish(method, layers);
    }
    state.scored_by = Some(method.to_string());
    Ok(())
}

/// What scoring one layer needs.
struct LayerScorer<'a> {
    method: &'a str,
    cfg: &'a ModelConfig,
    w: &'a dyn WeightSource,
    /// The layer's index.
    i: usize,
    units: accounting::LayerUnits,
    /// `model.layers.{i}`.
    prefix: String,
    stats: Option<&'a LayerStats>,
}

impl LayerScorer<'_> {
    /// Scores of the query heads (or, per group, of the KV groups): o_proj column scores
    /// summed over each head, plus for `magnitude` the q (and k, v) row norms.
    fn heads(&self, gates: HeadGates) -> Result<Vec<f64>> {
        let (method, w, p) = (self.method, self.w, &self.prefix);
        let (h, hd) = (self.cfg.hidden_size, self.cfg.head_dim);
        let (nh, nkv) = (self.units.heads, self.units.kv_heads);
        let o = Mat::load(w, &format!("{p}.self_attn.o_proj.weight"), h, nh * hd)?;
        let cols = column_scores(method, &o, self.stats.map(|s| &s.o))?;
        let mut head: Vec<f64> = (0..nh)
            .map(|q| cols[q * hd..(q + 1) * hd].iter().sum())
            .collect();
        if method == "magnitude" {
            let qw = Mat::load(w, &format!("{p}.self_attn.q_proj.weight"), nh * hd, h)?;
            for (q, s) in head.iter_mut().enumerate() {
                *s += (q * hd..(q + 1) * hd).map(|r| qw.row_sq(r)).sum::<f64>();
            }
        }
        if gates != HeadGates::PerGroup {
            return Ok(head);
        }
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
        Ok(grp)
    }

    /// Scores of every routed expert's channels, expert after expert; `None` in a dense layer.
    fn experts(&self) -> Result<Option<Vec<f64>>> {
        let (u, i) = (self.units, self.i);
        let Some(nm) = self.cfg.spec().moe.filter(|_| u.experts > 0) else {
            return Ok(None);
        };
        let mut all = Vec::with_capacity(u.experts * u.expert_width);
        for e in 0..u.experts {
            let pre = format!("{}.{}.experts.{e}", self.prefix, nm.block);
            let st = match self.stats.map(|s| s.experts.get(e)) {
                // Statistics for this layer, none for its experts: stats from before
                // experts were probed.
                Some(None) => return Err(Error::Invalid(format!(
                    "layer {i}: the activation statistics have no entry for expert {e}: compute them again (calibrate `activation_stats`)"
                ))),
                Some(Some(s)) => Some(s),
                None => None,
            };
            all.extend(unit_scores(
                self.method,
                self.w,
                [nm.gate, nm.up, nm.down].map(|n| format!("{pre}.{n}.weight")),
                self.cfg.hidden_size,
                u.expert_width,
                st,
                true,
            )?);
        }
        Ok(Some(all))
    }

    /// Scores of the dense FFN's channels, or of the shared expert's (none without one).
    fn channels(&self) -> Result<Vec<f64>> {
        let (u, p) = (self.units, &self.prefix);
        let pre = match self.cfg.spec().moe.filter(|_| u.experts > 0) {
            Some(nm) => format!("{p}.{}.shared_expert", nm.block),
            None => format!("{p}.mlp"),
        };
        if u.channels == 0 {
            return Ok(vec![]);
        }
        unit_scores(
            self.method,
            self.w,
            ["gate_proj", "up_proj", "down_proj"].map(|n| format!("{pre}.{n}.weight")),
            self.cfg.hidden_size,
            u.channels,
            self.stats.map(|s| &s.down),
            false,
        )
    }
}

/// One family's final `z` from its raw per-layer scores: standardised per layer (`flap`) or
/// square-rooted (`magnitude`), then shifted to be strictly positive.
fn finish(method: &str, mut layers: Vec<Vec<f64>>) -> Vec<Vec<f32>> {
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
    layers
        .into_iter()
        .map(|l| l.into_iter().map(|x| (x + shift) as f32).collect())
        .collect()
}
