//! The training methods and everything that differs between them: how parameters become gates
//! (forward and deployed), the retention the regularisers read, the target schedule, the terms
//! of the Lagrangian and the constraint on `z`.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::super::surrogate::{
    forward_mask, hard_concrete, hard_concrete_l0, retention, HC_BETA, HC_GAMMA, HC_ZETA,
};
use super::GateState;

/// The training method: DDP, or the baselines the paper compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Deterministic ReLU mask, annealed retention score, binarisation term (this paper).
    #[default]
    Ddp,
    /// Stochastic hard-concrete gates (Louizos et al.; CoFi / Sheared-LLaMA), expected-L0
    /// Lagrangian with a linearly warmed-up target.
    HardConcrete,
    /// The same with the noise fixed at u = 1/2.
    DetHardConcrete,
}

/// The hard-concrete methods start from `log_alpha` = ln(0.95 / 0.05) (gates ~open), keeping the
/// N(1, 0.01) noise of the initial z.
const HC_LOG_ALPHA_SHIFT: f32 = 1.944_439;

/// The gate values a method's parameters stand for at deployment: ReLU(z) for DDP, the
/// deterministic hard-concrete gate for the baselines. Thresholding ranks and keeps these.
pub fn deployed_values(method: Method, z: &[Vec<f32>]) -> Vec<Vec<f32>> {
    z.iter()
        .map(|l| l.iter().map(|&x| method.deployed(x)).collect())
        .collect()
}

/// The seed of the hard-concrete noise of one (step, micro-batch, family, layer): a resumed run
/// draws what the uninterrupted one drew.
pub(crate) fn noise_seed(seed: u64, step: usize, micro: usize, family: usize, layer: usize) -> u64 {
    seed ^ ((step as u64) << 20) ^ ((micro as u64) << 12) ^ ((family as u64) << 8) ^ layer as u64
}

impl Method {
    /// The method named `s` (`ddp`, `hard-concrete`, `det-hard-concrete`), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ddp" => Method::Ddp,
            "hard-concrete" => Method::HardConcrete,
            "det-hard-concrete" => Method::DetHardConcrete,
            _ => return None,
        })
    }

    /// The deployed value of one parameter (see [`deployed_values`]).
    fn deployed(self, x: f32) -> f32 {
        match self {
            Method::Ddp => x.max(0.0),
            _ => {
                let s = 1.0 / (1.0 + (-(x as f64) / HC_BETA).exp());
                (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0) as f32
            }
        }
    }

    /// Makes a fresh `state` (step 0, another method's reading of `z`) this method's: the
    /// hard-concrete methods shift `z` into `log_alpha`. A state already trained is left as is.
    pub(crate) fn adopt(self, state: &mut GateState) {
        if state.step == 0 && state.method != self {
            if self != Method::Ddp {
                for f in &mut state.families {
                    for z in f.z.iter_mut().flatten() {
                        *z += HC_LOG_ALPHA_SHIFT;
                    }
                }
            }
            state.method = self;
        }
    }

    /// The gate the student's forward multiplies by: ReLU(z) with a straight-through gradient
    /// (DDP), or the hard-concrete gate, with noise seeded by `noise_seed` (stochastic) or
    /// fixed at u = 1/2.
    pub(crate) fn mask<B: Backend>(
        self,
        z: Tensor<B, 1>,
        noise_seed: u64,
        dev: &B::Device,
    ) -> Tensor<B, 1> {
        match self {
            Method::Ddp => forward_mask(z),
            Method::DetHardConcrete => hard_concrete(z, None),
            Method::HardConcrete => {
                let mut rng = StdRng::seed_from_u64(noise_seed);
                let n = z.dims()[0];
                let u: Vec<f32> = (0..n)
                    .map(|_| rng.random_range(1e-6f32..1.0 - 1e-6))
                    .collect();
                hard_concrete(z, Some(Tensor::from_data(TensorData::new(u, [n]), dev)))
            }
        }
    }

    /// Per-unit retention the regularisers read: DDP's annealed score `s(z; mu)`, or the
    /// hard-concrete expected L0.
    pub(crate) fn retention<B: Backend>(self, z: Tensor<B, 1>, mu: f64) -> Tensor<B, 1> {
        match self {
            Method::Ddp => retention(z, mu),
            _ => hard_concrete_l0(z),
        }
    }

    /// The sparsity target at `step`: DDP's from the start; the baselines warm it up linearly
    /// over the warm-up steps (CoFi).
    pub(crate) fn target(self, target: f64, step: usize, warmup: usize) -> f64 {
        match self {
            Method::Ddp => target,
            _ => target * ((step + 1) as f64 / warmup.max(1) as f64).min(1.0),
        }
    }

    /// Whether the Lagrangian has the binarisation term `lambda3 mean s(1 - s)` (DDP's; the
    /// baselines' has two terms).
    pub(crate) fn binarises(self) -> bool {
        self == Method::Ddp
    }

    /// A parameter after its optimiser step: DDP clamps z >= -0.1; log_alpha is unconstrained.
    pub(crate) fn constrain(self, p: f64) -> f32 {
        if self == Method::Ddp {
            p.max(-0.1) as f32
        } else {
            p as f32
        }
    }
}
