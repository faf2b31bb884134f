//! Final masks: from trained gate parameters `z` to the units that survive and the values they
//! keep (the paper's rule `ReLU(z) > 0`, an exact top-k budget, or uniform per-layer counts
//! that give a standard config).

use serde::{Deserialize, Serialize};

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

/// The final mask of a whole model: what slicing removes and what it folds in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMask {
    /// One entry per decoder layer.
    pub layers: Vec<LayerMask>,
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
