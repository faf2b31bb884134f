//! The DDP gate maths (METHOD.md §2): forward mask `ReLU(z)` with a straight-through gradient,
//! the retention score `s(z; mu)` used by the regularisers, and the annealing schedule of mu.
//! Generic over the burn backend; on an autodiff backend the straight-through estimators give
//! the gradients the method prescribes.

use burn::tensor::{activation::sigmoid, backend::Backend, Tensor};

/// Lower stretch limit `l` of the retention score.
pub const LOWER: f64 = -0.1;
/// Upper stretch limit `r` of the retention score.
pub const UPPER: f64 = 1.1;

/// `C0 = ln 11`, so that `s(0) = 0` and `s(2 mu) = 1`.
pub fn c0() -> f64 {
    11f64.ln()
}

/// `f(x)` in the forward pass, identity in the backward pass.
fn straight_through<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    // y + (x - x): exactly f(x) forward (x - x is 0), the identity backward.
    let y = f(x.clone().detach());
    y + (x.clone() - x.detach())
}

/// Forward mask `m = ReLU(z)`; the backward pass treats ReLU as the identity.
pub fn forward_mask<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    straight_through(z, |x| x.clamp_min(0.0))
}

/// Retention score `clamp(sigmoid((ReLU(z) - mu) C0 / mu) (r - l) + l, 0, 1)`, with
/// straight-through ReLU and clamp so `ds/dz` never vanishes.
pub fn retention<B: Backend, const D: usize>(z: Tensor<B, D>, mu: f64) -> Tensor<B, D> {
    let m = forward_mask(z);
    let s = sigmoid((m - mu) * (c0() / mu)) * (UPPER - LOWER) + LOWER;
    straight_through(s, |x| x.clamp(0.0, 1.0))
}

/// `mu_t = mu_0 - (mu_0 - mu_T) sqrt(t / T)`.
pub fn mu_at(step: usize, total: usize, mu0: f64, mu_end: f64) -> f64 {
    let frac = if total == 0 {
        1.0
    } else {
        (step as f64 / total as f64).min(1.0)
    };
    mu0 - (mu0 - mu_end) * frac.sqrt()
}

/// Hard-concrete temperature `beta` (Louizos et al. 2018).
pub const HC_BETA: f64 = 2.0 / 3.0;
/// Lower end `gamma` of the hard-concrete stretch interval.
pub const HC_GAMMA: f64 = -0.1;
/// Upper end `zeta` of the hard-concrete stretch interval.
pub const HC_ZETA: f64 = 1.1;

/// Hard-concrete gate from `log_alpha` and uniform noise `u` (None: the deterministic variant,
/// u = 1/2): `clamp(sigmoid((ln u - ln(1-u) + log_alpha) / beta) (zeta - gamma) + gamma, 0, 1)`.
pub fn hard_concrete<B: Backend, const D: usize>(
    log_alpha: Tensor<B, D>,
    u: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let x = match u {
        Some(u) => (u.clone().log() - (u.neg() + 1.0).log() + log_alpha) / HC_BETA,
        None => log_alpha / HC_BETA,
    };
    (sigmoid(x) * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0)
}

/// Probability that a hard-concrete gate is non-zero: `sigmoid(log_alpha - beta ln(-gamma/zeta))`.
pub fn hard_concrete_l0<B: Backend, const D: usize>(log_alpha: Tensor<B, D>) -> Tensor<B, D> {
    sigmoid(log_alpha - HC_BETA * (-HC_GAMMA / HC_ZETA).ln())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type A = Autodiff<NdArray>;

    fn score(z: f64, mu: f64) -> f64 {
        let s = 1.0 / (1.0 + (-(z.max(0.0) - mu) * c0() / mu).exp()) * (UPPER - LOWER) + LOWER;
        s.clamp(0.0, 1.0)
    }

    #[test]
    fn retention_matches_the_formula_and_its_anchor_points() {
        let dev = Default::default();
        let zs = vec![-0.1f32, 0.0, 0.05, 0.1, 0.2, 0.5, 1.0];
        for mu in [0.5, 0.1, 0.05] {
            let z = Tensor::<NdArray, 1>::from_data(TensorData::new(zs.clone(), [zs.len()]), &dev);
            let s: Vec<f32> = retention(z, mu).into_data().into_vec().unwrap();
            for (zi, si) in zs.iter().zip(&s) {
                assert!(
                    (*si as f64 - score(*zi as f64, mu)).abs() < 1e-6,
                    "z={zi} mu={mu}"
                );
            }
        }
        assert!(score(0.0, 0.3).abs() < 1e-12, "s(0) = 0");
        assert!((score(0.6, 0.3) - 1.0).abs() < 1e-12, "s(2 mu) = 1");
    }

    #[test]
    fn straight_through_gradients_do_not_vanish() {
        let dev = Default::default();
        let z = Tensor::<A, 1>::from_data(TensorData::new(vec![-0.05f32, 0.3, 3.0], [3]), &dev)
            .require_grad();
        let m = forward_mask(z.clone());
        assert_eq!(
            m.clone().into_data().into_vec::<f32>().unwrap(),
            vec![0.0, 0.3, 3.0]
        );
        let g = m.sum().backward();
        assert_eq!(
            z.grad(&g).unwrap().into_data().into_vec::<f32>().unwrap(),
            vec![1.0, 1.0, 1.0]
        );
        // The score is clamped at 0 for z <= 0 and at 1 for large z, yet its gradient is not 0.
        let z2 = Tensor::<A, 1>::from_data(TensorData::new(vec![-0.05f32, 3.0], [2]), &dev)
            .require_grad();
        let g = retention(z2.clone(), 0.5).sum().backward();
        let grad: Vec<f32> = z2.grad(&g).unwrap().into_data().into_vec().unwrap();
        assert!(grad.iter().all(|&x| x > 0.0), "{grad:?}");
    }

    #[test]
    fn hard_concrete_matches_its_formulas() {
        let dev = Default::default();
        let la =
            Tensor::<NdArray, 1>::from_data(TensorData::new(vec![-3.0f32, 0.0, 2.0], [3]), &dev);
        let det: Vec<f32> = hard_concrete(la.clone(), None)
            .into_data()
            .into_vec()
            .unwrap();
        let u = Tensor::<NdArray, 1>::from_data(TensorData::new(vec![0.3f32, 0.3, 0.3], [3]), &dev);
        let noisy: Vec<f32> = hard_concrete(la.clone(), Some(u))
            .into_data()
            .into_vec()
            .unwrap();
        let l0: Vec<f32> = hard_concrete_l0(la).into_data().into_vec().unwrap();
        for (i, a) in [-3.0f64, 0.0, 2.0].into_iter().enumerate() {
            let st = |x: f64| (1.0 / (1.0 + (-x).exp()) * 1.2 - 0.1).clamp(0.0, 1.0);
            assert!((det[i] as f64 - st(a / HC_BETA)).abs() < 1e-6);
            let logit = (0.3f64).ln() - (0.7f64).ln();
            assert!((noisy[i] as f64 - st((logit + a) / HC_BETA)).abs() < 1e-6);
            let p = 1.0 / (1.0 + (-(a - HC_BETA * (0.1f64 / 1.1).ln())).exp());
            assert!((l0[i] as f64 - p).abs() < 1e-6);
        }
        assert_eq!(
            det[0], 0.0,
            "a very negative log_alpha closes the gate exactly"
        );
    }

    #[test]
    fn mu_anneals_with_a_square_root_schedule() {
        assert_eq!(mu_at(0, 1000, 0.5, 0.1), 0.5);
        assert!((mu_at(250, 1000, 0.5, 0.1) - 0.3).abs() < 1e-12);
        assert!((mu_at(1000, 1000, 0.5, 0.1) - 0.1).abs() < 1e-12);
        assert!((mu_at(5000, 1000, 0.5, 0.05) - 0.05).abs() < 1e-12);
    }
}
