//! Final masks: from trained gate parameters `z` to the units that survive and the values they
//! keep (the paper's rule `ReLU(z) > 0`, an exact top-k budget, or uniform counts that give a
//! standard config: per layer, per KV group for per-head gates, per expert).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::accounting::{KeptUnits, LayerUnits};
use crate::prune::train::{deployed_values, GateState, HeadGates};

pub use super::family::FamilyKind;

/// How a family's deployed gate values become its part of the final mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Keep ReLU(v) > 0 ([`relu`], the paper).
    Relu,
    /// Remove exactly `round(target * units)` units, the smallest first ([`topk`]).
    Topk,
    /// Keep the same count in every layer, in every KV group for heads gated one per query head
    /// (every expert, for routed-expert channels): [`uniform_keep`] of each ([`uniform`],
    /// [`uniform_groups`]).
    Uniform {
        /// Channel counts are rounded up to a multiple of this (1: no rounding).
        multiple: usize,
    },
}

/// Gate values per layer after thresholding: 0 = removed, otherwise the factor folded into
/// the weights. `heads` has one value per query head; `channels` one per channel of the dense
/// FFN (in a MoE layer: of its shared expert, empty without one); `experts` one per routed
/// expert channel, expert after expert (`[experts * width]`, empty in a dense layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMask {
    /// One value per query head.
    pub heads: Vec<f32>,
    /// One value per channel of the dense FFN or the shared expert.
    pub channels: Vec<f32>,
    /// One value per routed-expert channel, `[experts * width]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<f32>,
}

impl LayerMask {
    /// What survives of this layer (values not 0), its units being `u`: KV heads are the
    /// groups of `u.heads / u.kv_heads` query heads that keep at least one, the widest
    /// expert the one of `u.expert_width` channels that keeps the most.
    pub fn kept(&self, u: &LayerUnits) -> KeptUnits {
        let live = |v: &[f32]| v.iter().filter(|&&x| x != 0.0).count();
        let group = (u.heads / u.kv_heads.max(1)).max(1);
        KeptUnits {
            heads: live(&self.heads),
            kv_heads: self
                .heads
                .chunks(group)
                .filter(|g| g.iter().any(|&x| x != 0.0))
                .count(),
            channels: live(&self.channels),
            expert_channels: live(&self.experts),
            widest_expert: self
                .experts
                .chunks(u.expert_width.max(1))
                .map(live)
                .max()
                .unwrap_or(0),
        }
    }
}

/// The final mask of a whole model: what slicing removes and what it folds in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMask {
    /// One entry per decoder layer.
    pub layers: Vec<LayerMask>,
}

impl FinalMask {
    /// Every unit of every layer (one [`LayerUnits`] each) kept at scale 1.
    pub fn keep_all(units: &[LayerUnits]) -> Self {
        Self {
            layers: units
                .iter()
                .map(|u| LayerMask {
                    heads: vec![1.0; u.heads],
                    channels: vec![1.0; u.channels],
                    experts: vec![1.0; u.experts * u.expert_width],
                })
                .collect(),
        }
    }

    /// Replaces family `kind`'s values with `kept`, layer by layer; per-KV-group head values
    /// (`heads` is [`HeadGates::PerGroup`]) are first expanded to query heads.
    pub fn set(&mut self, kind: FamilyKind, kept: Vec<Vec<f32>>, heads: HeadGates) {
        for (l, k) in self.layers.iter_mut().zip(kept) {
            match kind {
                FamilyKind::Heads if heads == HeadGates::PerGroup => {
                    l.heads = expand_groups(&k, l.heads.len())
                }
                FamilyKind::Heads => l.heads = k,
                FamilyKind::Channels => l.channels = k,
                FamilyKind::Experts => l.experts = k,
            }
        }
    }

    /// What survives of each layer ([`LayerMask::kept`]), `units` being the model's.
    pub fn kept(&self, units: &[LayerUnits]) -> Vec<KeptUnits> {
        self.layers
            .iter()
            .zip(units)
            .map(|(l, u)| l.kept(u))
            .collect()
    }
}

/// One family's outcome of [`from_gates`]: its target and the sparsity its mask reaches.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySparsity {
    /// The family.
    pub kind: FamilyKind,
    /// Its target sparsity (from the gate state).
    pub target: f64,
    /// Fraction of its units removed, over all layers.
    pub achieved: f64,
    /// Fraction of its units removed, per layer.
    pub per_layer: Vec<f64>,
}

/// The final mask of trained (or one-shot scored) gates under `rule`, `units` being the
/// model's per layer: each family's deployed values ([`deployed_values`]) are thresholded
/// ([`threshold`]), one-shot survivors keep a scale of 1 ([`binarize`]), and units of families
/// not gated stay at 1. Fails on a family name that is not a [`FamilyKind`].
pub fn from_gates(
    state: &GateState,
    rule: Rule,
    units: &[LayerUnits],
) -> Result<(FinalMask, Vec<FamilySparsity>)> {
    let mut mask = FinalMask::keep_all(units);
    let mut report = vec![];
    for f in &state.families {
        let kind = f.name;
        let values = deployed_values(state.method, &f.z);
        let mut kept = threshold(kind, &values, f.target, rule, units, state.heads);
        if state.scored_by.is_some() {
            kept = binarize(kept);
        }
        let (achieved, per_layer) = sparsity(&kept);
        report.push(FamilySparsity {
            kind,
            target: f.target,
            achieved,
            per_layer,
        });
        mask.set(kind, kept, state.heads);
    }
    Ok((mask, report))
}

/// One family's kept values per layer from its deployed gate values `values` (ReLU(z), or
/// deterministic hard-concrete gates) under `rule`, with target sparsity `target`; `units` and
/// `heads` (the attention gates' granularity) give the groups [`Rule::Uniform`] keeps the same
/// count of ([`uniform_groups`]).
pub fn threshold(
    kind: FamilyKind,
    values: &[Vec<f32>],
    target: f64,
    rule: Rule,
    units: &[LayerUnits],
    heads: HeadGates,
) -> Vec<Vec<f32>> {
    match rule {
        Rule::Relu => relu(values),
        Rule::Topk => {
            let total: usize = values.iter().map(Vec::len).sum();
            topk(values, (target * total as f64).round() as usize)
        }
        Rule::Uniform { multiple } => {
            let groups = uniform_groups(kind, heads, units);
            uniform(values, &groups, |n| uniform_keep(kind, target, multiple, n))
        }
    }
}

/// The group size, per layer, within which [`Rule::Uniform`] keeps the same count of family
/// `kind`'s units (0: the whole layer). Expert channels: one expert's channels. Heads gated
/// one per query head: one KV group's query heads, so that every group keeps the same number
/// and the sliced config stays standard (`num_attention_heads = num_key_value_heads x kept per
/// group`, KV heads unchanged: whole groups never go, since each keeps at least one head);
/// where a KV group is a single head (MHA) the layer, whose KV groups then go with their heads.
/// Heads gated per KV group and channels: the layer.
pub fn uniform_groups(kind: FamilyKind, heads: HeadGates, units: &[LayerUnits]) -> Vec<usize> {
    units
        .iter()
        .map(|u| match kind {
            FamilyKind::Experts => u.expert_width,
            FamilyKind::Heads if heads == HeadGates::PerHead => head_group(u),
            FamilyKind::Heads | FamilyKind::Channels => 0,
        })
        .collect()
}

/// Query heads per KV group of a layer with units `u` when groups have more than one head,
/// else 0 (the whole layer): the group a per-head uniform budget applies to.
pub fn head_group(u: &LayerUnits) -> usize {
    if u.kv_heads > 0 && u.kv_heads < u.heads {
        u.heads / u.kv_heads
    } else {
        0
    }
}

/// Units [`Rule::Uniform`] keeps of a group of `n`: `round((1 - target) * n)`, rounded up to a
/// multiple of `multiple` for channel families (not heads), then clamped to `1..=n`. A heads
/// target of whole heads per group (what gate-insert sets for per-head gates,
/// `budget::whole_heads`) is met exactly.
pub fn uniform_keep(kind: FamilyKind, target: f64, multiple: usize, n: usize) -> usize {
    let mut keep = ((1.0 - target) * n as f64).round() as usize;
    if kind != FamilyKind::Heads && multiple > 1 {
        keep = keep.div_ceil(multiple) * multiple;
    }
    keep.clamp(1, n)
}

/// Units [`Rule::Uniform`] removes of a family whose per-layer gate counts are `lens`: the
/// rule itself applied to gates all open. A mask with more zeros than this keeps units whose
/// trained gate is 0 (removed all the same).
pub fn uniform_removes(
    kind: FamilyKind,
    heads: HeadGates,
    target: f64,
    multiple: usize,
    units: &[LayerUnits],
    lens: &[usize],
) -> usize {
    let open: Vec<Vec<f32>> = lens.iter().map(|&n| vec![1.0; n]).collect();
    let rule = Rule::Uniform { multiple };
    let kept = threshold(kind, &open, target, rule, units, heads);
    kept.iter().flatten().filter(|&&x| x == 0.0).count()
}

/// Survivors at scale 1, for one-shot scores (importance ranks, not gate values): 1 where a
/// value is above 0, else 0.
pub fn binarize(m: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    m.into_iter()
        .map(|l| {
            l.into_iter()
                .map(|x| if x > 0.0 { 1.0 } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Expands per-KV-group values to per-query-head values (each group's value repeated for its
/// `heads / groups` query heads); per-head values pass through.
pub fn expand_groups(v: &[f32], heads: usize) -> Vec<f32> {
    if v.len() == heads || v.is_empty() {
        return v.to_vec();
    }
    let g = heads / v.len();
    v.iter().flat_map(|&x| std::iter::repeat_n(x, g)).collect()
}

/// The paper's rule: a unit survives when ReLU(z) > 0, keeping ReLU(z) as its scale.
pub fn relu(z: &[Vec<f32>]) -> Vec<Vec<f32>> {
    z.iter()
        .map(|l| l.iter().map(|&x| x.max(0.0)).collect())
        .collect()
}

/// Removes exactly `remove` units, those with the smallest ReLU(z) across all layers (ties:
/// lower layer, then lower index, first); survivors keep ReLU(z).
pub fn topk(z: &[Vec<f32>], remove: usize) -> Vec<Vec<f32>> {
    let mut all: Vec<(f32, usize, usize)> = z
        .iter()
        .enumerate()
        .flat_map(|(l, v)| v.iter().enumerate().map(move |(i, &x)| (x.max(0.0), l, i)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = relu(z);
    for &(_, l, i) in all.iter().take(remove) {
        out[l][i] = 0.0;
    }
    out
}

/// Keeps the `keep(n)` largest ReLU(z) of every group of `group[l]` consecutive units of layer
/// `l` (a layer's units, or one expert's channels; 0: the whole layer), `n` being the group's
/// size: the same count wherever the groups are the same size.
pub fn uniform(z: &[Vec<f32>], group: &[usize], keep: impl Fn(usize) -> usize) -> Vec<Vec<f32>> {
    z.iter()
        .zip(group)
        .map(|(layer, &g)| {
            let g = if g == 0 { layer.len().max(1) } else { g };
            let mut out = vec![0.0; layer.len()];
            for (k, v) in layer.chunks(g).enumerate() {
                let mut idx: Vec<usize> = (0..v.len()).collect();
                idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
                for &i in idx.iter().take(keep(v.len())) {
                    out[k * g + i] = v[i].max(0.0);
                }
            }
            out
        })
        .collect()
}

/// Fraction of units removed (value 0), overall and per layer.
pub fn sparsity(m: &[Vec<f32>]) -> (f64, Vec<f64>) {
    let per: Vec<f64> = m
        .iter()
        .map(|l| {
            if l.is_empty() {
                0.0
            } else {
                l.iter().filter(|&&x| x == 0.0).count() as f64 / l.len() as f64
            }
        })
        .collect();
    let total: usize = m.iter().map(Vec::len).sum();
    let removed: usize = m
        .iter()
        .map(|l| l.iter().filter(|&&x| x == 0.0).count())
        .sum();
    (
        if total == 0 {
            0.0
        } else {
            removed as f64 / total as f64
        },
        per,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::train::Scope;

    /// A dense layer: 4 query heads in 2 KV groups, 4 channels.
    const DENSE: LayerUnits = LayerUnits {
        heads: 4,
        kv_heads: 2,
        channels: 4,
        experts: 0,
        expert_width: 0,
    };

    /// A MoE layer: 4 query heads in 2 KV groups, no shared expert, 2 experts 4 wide.
    const MOE: LayerUnits = LayerUnits {
        heads: 4,
        kv_heads: 2,
        channels: 0,
        experts: 2,
        expert_width: 4,
    };

    #[test]
    fn family_kinds_round_trip_and_unknown_names_fail() {
        // gates.json names families; `name` (metrics, Display) is the same name.
        for k in [FamilyKind::Heads, FamilyKind::Channels, FamilyKind::Experts] {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<FamilyKind>(&json).unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
        let e = serde_json::from_str::<FamilyKind>("\"layers\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant `layers`"), "{e}");
    }

    #[test]
    fn uniform_removes_counts_what_the_rule_takes_per_group() {
        let u = LayerUnits {
            heads: 6,
            kv_heads: 2,
            channels: 10,
            experts: 0,
            expert_width: 0,
        };
        let units = [u, u];
        // Channels: keep round(0.7 x 10) = 7 of each layer's 10.
        let n = uniform_removes(
            FamilyKind::Channels,
            HeadGates::PerGroup,
            0.3,
            1,
            &units,
            &[10, 10],
        );
        assert_eq!(n, 6);
        // Per-head gates: groups of 3 query heads, keep round((1 - 1/3) x 3) = 2 of each.
        let n = uniform_removes(
            FamilyKind::Heads,
            HeadGates::PerHead,
            1.0 / 3.0,
            1,
            &units,
            &[6, 6],
        );
        assert_eq!(n, 4);
        // The rule's own mask of gates all open removes exactly that many.
        let z = vec![vec![1.0; 10]; 2];
        let kept = threshold(
            FamilyKind::Channels,
            &z,
            0.3,
            Rule::Uniform { multiple: 1 },
            &units,
            HeadGates::PerGroup,
        );
        assert_eq!(kept.iter().flatten().filter(|&&x| x == 0.0).count(), 6);
    }

    #[test]
    fn uniform_keep_rounds_channels_to_the_multiple_only() {
        use FamilyKind::*;
        assert_eq!(uniform_keep(Channels, 0.5, 1, 16), 8);
        assert_eq!(uniform_keep(Channels, 0.5, 3, 16), 9);
        assert_eq!(uniform_keep(Experts, 0.5, 3, 16), 9);
        assert_eq!(uniform_keep(Heads, 0.5, 3, 4), 2);
        // At least one unit, at most all of them.
        assert_eq!(uniform_keep(Heads, 0.95, 1, 4), 1);
        assert_eq!(uniform_keep(Channels, 0.5, 64, 16), 16);
    }

    #[test]
    fn uniform_groups_expert_channels_by_expert_and_channels_by_layer() {
        let v = vec![vec![0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6]];
        let rule = Rule::Uniform { multiple: 1 };
        // Two per expert.
        let e = threshold(
            FamilyKind::Experts,
            &v,
            0.5,
            rule,
            &[MOE],
            HeadGates::PerGroup,
        );
        assert_eq!(e, vec![vec![0.0, 0.9, 0.5, 0.0, 0.8, 0.0, 0.7, 0.0]]);
        // Four over the layer.
        let c = threshold(
            FamilyKind::Channels,
            &v,
            0.5,
            rule,
            &[MOE],
            HeadGates::PerGroup,
        );
        assert_eq!(c, vec![vec![0.0, 0.9, 0.0, 0.0, 0.8, 0.0, 0.7, 0.6]]);
        // Top-k removes round(0.25 * 8) = 2 units over all layers, the smallest.
        let t = threshold(
            FamilyKind::Channels,
            &v,
            0.25,
            Rule::Topk,
            &[MOE],
            HeadGates::PerGroup,
        );
        assert_eq!(t, vec![vec![0.0, 0.9, 0.5, 0.3, 0.8, 0.0, 0.7, 0.6]]);
    }

    fn state(heads: Vec<Vec<f32>>, channels: Vec<Vec<f32>>) -> GateState {
        let fams = [
            (FamilyKind::Heads, 0.25, vec![2, 2]),
            (FamilyKind::Channels, 0.5, vec![4, 4]),
        ];
        let mut s = GateState::init(&fams, HeadGates::PerGroup, Scope::Global, 0);
        s.families[0].z = heads;
        s.families[1].z = channels;
        s
    }

    #[test]
    fn gates_become_a_mask_with_groups_expanded() {
        let s = state(
            vec![vec![1.0, -0.5], vec![0.3, 0.2]],
            vec![vec![0.4, 0.0, 0.2, -0.1], vec![1.0; 4]],
        );
        let (m, report) = from_gates(&s, Rule::Relu, &[DENSE, DENSE]).unwrap();
        assert_eq!(m.layers[0].heads, [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(m.layers[1].heads, [0.3, 0.3, 0.2, 0.2]);
        assert_eq!(m.layers[0].channels, [0.4, 0.0, 0.2, 0.0]);
        assert!(m.layers[0].experts.is_empty());
        assert_eq!(report[0].kind, FamilyKind::Heads);
        assert_eq!((report[0].target, report[0].achieved), (0.25, 0.25));
        assert_eq!(report[0].per_layer, [0.5, 0.0]);
        assert_eq!(
            (report[1].achieved, &report[1].per_layer[..]),
            (0.25, &[0.5, 0.0][..])
        );
        let kept = m.kept(&[DENSE, DENSE]);
        assert_eq!(
            kept[0],
            KeptUnits {
                heads: 2,
                kv_heads: 1,
                channels: 2,
                expert_channels: 0,
                widest_expert: 0,
            }
        );
        assert_eq!(kept[1], KeptUnits::from(DENSE));
    }

    #[test]
    fn one_shot_survivors_keep_a_scale_of_one() {
        let mut s = state(
            vec![vec![3.0, 1.0], vec![2.0, 4.0]],
            vec![vec![0.4, 0.1, 0.2, 0.3], vec![0.5, 0.35, 0.5, 0.05]],
        );
        s.scored_by = Some("magnitude".into());
        let (m, _) = from_gates(&s, Rule::Topk, &[DENSE, DENSE]).unwrap();
        // Heads: round(0.25 * 4) = 1 group goes; channels: the 4 smallest of 8.
        assert_eq!(m.layers[0].heads, [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(m.layers[1].heads, [1.0; 4]);
        assert_eq!(m.layers[0].channels, [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(m.layers[1].channels, [1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn widest_expert_is_the_one_that_keeps_most() {
        let l = LayerMask {
            heads: vec![1.0, 0.0, 0.0, 0.0],
            channels: vec![],
            experts: vec![1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.5],
        };
        let k = l.kept(&MOE);
        assert_eq!((k.heads, k.kv_heads), (1, 1));
        assert_eq!((k.expert_channels, k.widest_expert), (4, 3));
    }
}
