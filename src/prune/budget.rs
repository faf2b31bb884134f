//! Budget maths: which gate families a model gets, how many units each gates per layer, and
//! the fraction of its units each must remove for a sparsity budget: the same fraction for every
//! family (`split = "equal"`), or one budget over their parameters whose split the training
//! learns (`split = "learned"`: [`unit_params`] weigh each family's units, [`learned_targets`]
//! reads the split back).

use super::mask::{head_group, FamilyKind};
use super::train::HeadGates;
use crate::model::accounting::{self, ParamCounts};
use crate::model::config::ModelConfig;

/// What a sparsity budget is a fraction of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The model's prunable parameters (what users mean by 50 %).
    Params,
    /// Every gated family's units (the paper).
    Units,
}

/// One gate family to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFamily {
    /// What its gates remove.
    pub kind: FamilyKind,
    /// Gated units per layer (0 where a layer has none).
    pub units: Vec<usize>,
    /// Prunable parameters its units cover, over the whole model.
    pub params: usize,
}

/// The gate families of `cfg`: attention (one gate per KV group, covering all of attention, or
/// per query head, covering q and o; none with [`HeadGates::None`]), dense-FFN and
/// shared-expert channels (`channels`), routed-expert channels (`experts`), in that order. A
/// family with no units in this model (experts of a dense model, channels of a MoE model
/// without shared experts) is left out.
pub fn families(
    cfg: &ModelConfig,
    heads: HeadGates,
    channels: bool,
    experts: bool,
) -> Vec<GateFamily> {
    let p = accounting::count(cfg);
    let layers: Vec<_> = (0..cfg.num_hidden_layers)
        .map(|i| accounting::units(cfg, i))
        .collect();
    let mut fams = vec![];
    // Per-head gates remove q rows and o columns; k and v go only with a whole KV group,
    // which the per-head uniform rule never removes, so they count as not covered.
    let per_q = accounting::head_params(cfg).0;
    let per_head = match heads {
        HeadGates::PerGroup => Some((layers.iter().map(|u| u.kv_heads).collect(), p.attention)),
        HeadGates::PerHead => {
            let units: Vec<usize> = layers.iter().map(|u| u.heads).collect();
            let params = units.iter().sum::<usize>() * per_q;
            Some((units, params))
        }
        HeadGates::None => None,
    };
    if let Some((units, params)) = per_head {
        fams.push(GateFamily {
            kind: FamilyKind::Heads,
            units,
            params,
        });
    }
    if channels {
        fams.push(GateFamily {
            kind: FamilyKind::Channels,
            units: layers.iter().map(|u| u.channels).collect(),
            params: p.ffn - p.experts,
        });
    }
    if experts {
        fams.push(GateFamily {
            kind: FamilyKind::Experts,
            units: layers.iter().map(|u| u.experts * u.expert_width).collect(),
            params: p.experts,
        });
    }
    fams.retain(|f| f.units.iter().sum::<usize>() > 0);
    fams
}

/// The unit fraction every family of `fams` is to remove for a budget of `sparsity` of
/// `basis`, `counts` being the model's. Of units: `sparsity` itself. Of parameters: with every
/// family at the same unit fraction the removed share of the parameters they cover equals
/// that fraction, so families left out leave their share to the gated ones:
/// `sparsity * prunable / covered`, at most 0.95.
pub fn target(sparsity: f64, basis: Basis, counts: &ParamCounts, fams: &[GateFamily]) -> f64 {
    match basis {
        Basis::Params => {
            let covered: usize = fams.iter().map(|f| f.params).sum();
            (sparsity * counts.prunable() as f64 / covered.max(1) as f64).min(0.95)
        }
        Basis::Units => sparsity,
    }
}

/// Each family of `fams` (in order) with its target unit fraction for a budget of `sparsity`
/// of `basis` in model `cfg`: [`target`] for every family, except heads gated per query head,
/// floored to whole heads per KV group ([`whole_heads`]: what the uniform rule keeps, and the
/// only per-head removal slicing turns into smaller shapes). Of parameters, what the floor
/// leaves goes to the other families, so the budget still adds up:
/// `(sparsity * prunable - heads * heads_params) / others_params`, at most 0.95. Of units,
/// the other families keep `sparsity`.
pub fn targets(
    sparsity: f64,
    basis: Basis,
    cfg: &ModelConfig,
    fams: &[GateFamily],
    heads: HeadGates,
) -> Vec<f64> {
    let counts = accounting::count(cfg);
    let t = target(sparsity, basis, &counts, fams);
    let mut out = vec![t; fams.len()];
    let h = fams.iter().position(|f| f.kind == FamilyKind::Heads);
    let Some(h) = h.filter(|_| heads == HeadGates::PerHead) else {
        return out;
    };
    let whole = whole_heads(cfg, t);
    out[h] = whole;
    let others: usize = fams.iter().map(|f| f.params).sum::<usize>() - fams[h].params;
    if basis == Basis::Params && whole < t && others > 0 {
        let left = sparsity * counts.prunable() as f64 - whole * fams[h].params as f64;
        for (i, o) in out.iter_mut().enumerate() {
            if i != h {
                *o = (left / others as f64).min(0.95);
            }
        }
    }
    out
}

/// The prunable parameters one unit of family `kind` removes in each layer of `cfg` (0 where a
/// layer has none): a KV group ([`HeadGates::PerGroup`]) the q and o rows of its query heads and
/// its k and v rows; a query head ([`HeadGates::PerHead`]) its q and o (k and v go only with a
/// whole group); a channel (dense, shared-expert or routed) a row of gate and up and a column of
/// down. Summed over a family's units, what [`families`] counts as its `params`.
pub fn unit_params(cfg: &ModelConfig, kind: FamilyKind, heads: HeadGates) -> Vec<f64> {
    let (per_q, per_kv) = accounting::head_params(cfg);
    let channel = accounting::channel_params(cfg) as f64;
    (0..cfg.num_hidden_layers)
        .map(|i| {
            let u = accounting::units(cfg, i);
            match kind {
                FamilyKind::Heads if heads == HeadGates::PerGroup => {
                    (u.heads / u.kv_heads.max(1) * per_q + per_kv) as f64
                }
                FamilyKind::Heads => per_q as f64,
                FamilyKind::Channels | FamilyKind::Experts => channel,
            }
        })
        .collect()
}

/// The unit targets that remove `target` of the parameters the families cover in the
/// proportions a training chose: each family's achieved unit sparsity `q[F]` times
/// `target / q_p`, where `q_p = sum_F q[F] params[F] / sum_F params[F]` is the fraction it
/// achieved (within the convergence tolerance of `target`), at most 1. Nothing removed: every
/// family at `target`.
pub fn learned_targets(q: &[f64], params: &[f64], target: f64) -> Vec<f64> {
    let covered: f64 = params.iter().sum();
    let achieved: f64 = q.iter().zip(params).map(|(q, p)| q * p).sum::<f64>() / covered.max(1.0);
    if achieved <= 0.0 {
        return vec![target; q.len()];
    }
    q.iter()
        .map(|q| (q * target / achieved).clamp(0.0, 1.0))
        .collect()
}

/// The query-head fraction of `cfg` removed when every KV group of more than one head loses
/// `floor(target * heads per group)` heads (a layer whose groups are single heads, MHA:
/// `floor(target * heads)` of its heads): `target` floored to whole heads where the uniform
/// rule counts them (`mask::uniform_groups`).
pub fn whole_heads(cfg: &ModelConfig, target: f64) -> f64 {
    let (mut removed, mut total) = (0usize, 0usize);
    for i in 0..cfg.num_hidden_layers {
        let u = accounting::units(cfg, i);
        let g = match head_group(&u) {
            0 => u.heads,
            g => g,
        };
        if g > 0 {
            // A hair above the product, so that 0.5 * 2 is 1 however it rounds.
            removed += (target * g as f64 + 1e-9).floor() as usize * (u.heads / g);
        }
        total += u.heads;
    }
    removed as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2 dense layers of 4 query heads (2 KV groups) and 16 channels: attention 2 * 192 = 384
    // parameters, FFN 2 * 16 * 24 = 768.
    use crate::model::accounting::tests::dense;

    #[test]
    fn families_of_a_dense_model() {
        let c = dense();
        let f = families(&c, HeadGates::PerGroup, true, true);
        // No routed experts: that family is left out.
        assert_eq!(
            f,
            [
                GateFamily {
                    kind: FamilyKind::Heads,
                    units: vec![2, 2],
                    params: 384
                },
                GateFamily {
                    kind: FamilyKind::Channels,
                    units: vec![16, 16],
                    params: 768
                },
            ]
        );
        let f = families(&c, HeadGates::PerHead, false, false);
        assert_eq!((f.len(), &f[0].units[..]), (1, &[4, 4][..]));
        assert!(families(&c, HeadGates::None, false, true).is_empty());
    }

    #[test]
    fn targets_of_a_parameter_budget_cover_what_is_not_gated() {
        let c = dense();
        let p = accounting::count(&c);
        let all = families(&c, HeadGates::PerGroup, true, true);
        // Everything prunable is gated: the unit fraction is the parameter fraction.
        assert_eq!(target(0.5, Basis::Params, &p, &all), 0.5);
        // Channels alone cover 768 of 1152: 0.5 * 1152 / 768 = 0.75.
        let ch = families(&c, HeadGates::None, true, false);
        assert_eq!(target(0.5, Basis::Params, &p, &ch), 0.75);
        // 0.8 * 1.5 = 1.2: capped.
        assert_eq!(target(0.8, Basis::Params, &p, &ch), 0.95);
        assert_eq!(target(0.5, Basis::Units, &p, &ch), 0.5);
    }

    #[test]
    fn unit_params_add_up_to_what_each_family_covers() {
        let c = dense();
        for heads in [HeadGates::PerGroup, HeadGates::PerHead] {
            for f in families(&c, heads, true, true) {
                let w = unit_params(&c, f.kind, heads);
                let sum: f64 = f.units.iter().zip(&w).map(|(&n, w)| n as f64 * w).sum();
                assert_eq!(sum, f.params as f64, "{heads:?} {:?}", f.kind);
            }
        }
    }

    #[test]
    fn learned_targets_keep_the_split_and_meet_the_budget() {
        // Heads cover 384 parameters, channels 768; trained to 0.1 and 0.7: 0.5 of 1152.
        let t = learned_targets(&[0.1, 0.7], &[384.0, 768.0], 0.5);
        assert!(
            (t[0] - 0.1).abs() < 1e-12 && (t[1] - 0.7).abs() < 1e-12,
            "{t:?}"
        );
        // 1 % short: both scaled up by the same factor, the budget met exactly.
        let t = learned_targets(&[0.1, 0.685], &[384.0, 768.0], 0.5);
        let removed = t[0] * 384.0 + t[1] * 768.0;
        assert!((removed - 576.0).abs() < 1e-9 && (t[1] / t[0] - 6.85).abs() < 1e-9);
        assert_eq!(learned_targets(&[0.0, 0.0], &[1.0, 1.0], 0.3), [0.3, 0.3]);
    }
}
