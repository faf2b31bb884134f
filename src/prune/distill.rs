//! The distillation loss `CE + eta KL(teacher || student)` over the vocabulary, and its
//! gradient with respect to the student's logits, in one pass per row on the host.
//!
//! Written as burn tensor ops on the autodiff backend, the vocabulary-sized part of a step
//! (log-softmax of student and teacher, gather, exp, KL, and the backward of each) is some
//! thirty single-threaded passes over `[rows, vocab]` arrays, each freshly allocated. Here
//! every row is read once, in parallel, and the gradient comes out in closed form (METHOD.md's
//! loss; the cached top-k teacher's KL is the one of `teacher::kl_topk`, tail included):
//! - CE: `d/ds_j = p_j - [j = target]`, with `p = softmax(s)`;
//! - KL against full teacher probabilities `q`: `d/ds_j = p_j - q_j`;
//! - KL against top-k `q_k` and the tail mass `r`: with `P = sum_k p_k`, `Q = sum_k q_k`,
//!   `d/ds_j = p_j (Q - r P / (1 - P)) + [j in K] (r p_j / (1 - P) - q_j)`, the `r` terms
//!   vanishing where `1 - P` is clamped (as the tensor formula's `clamp_min(1e-12)` does).
//!
//! All terms are means over rows.

use rayon::prelude::*;

/// The teacher's side of the rows.
#[derive(Debug, Clone, Copy)]
pub enum TeacherRows<'a> {
    /// Logits `[rows, vocab]` of the dense model (any offset: they are normalised here).
    Logits(&'a [f32]),
    /// Cached top-k: indices and log-probabilities `[rows, k]`, log tail mass `[rows]`.
    TopK {
        /// Entries kept per row.
        k: usize,
        /// Token ids `[rows, k]`.
        idx: &'a [u32],
        /// Teacher log-probabilities of those tokens, `[rows, k]`.
        logp: &'a [f32],
        /// Log of the probability mass outside the top k, `[rows]`.
        log_rest: &'a [f32],
    },
}

/// Loss values (token means) and `d (ce + eta kl) / d logits`, `[rows, vocab]`.
#[derive(Debug, Clone)]
pub struct Distilled {
    /// Mean cross-entropy of the targets under the student, in nats.
    pub ce: f64,
    /// Mean `KL(teacher || student)`, in nats, not multiplied by `eta` (a top-k teacher's: its
    /// k entries plus one term for the tail mass).
    pub kl: f64,
    /// Gradient of `ce + eta kl` (row means) with respect to the student's logits,
    /// `[rows, vocab]`.
    pub grad: Vec<f32>,
}

thread_local! {
    /// `exp(t - max t)` of the teacher row at hand.
    static TEACHER_EXP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Below this `1 - P` the tail term's log is clamped (the tensor formula's `clamp_min`).
const TAIL_FLOOR: f64 = 1e-12;

/// `ln sum exp(x)` and `exp(x - lse)` written into `p`.
fn softmax_row(x: &[f32], p: &mut [f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for (pj, &xj) in p.iter_mut().zip(x) {
        let e = (xj - m).exp();
        *pj = e;
        sum += e as f64;
    }
    let inv = (1.0 / sum) as f32;
    p.iter_mut().for_each(|pj| *pj *= inv);
    m as f64 + sum.ln()
}

/// One row: (ce, kl), with the gradient (not yet divided by the row count) in `g`.
fn row(
    s: &[f32],
    target: usize,
    teacher: TeacherRows,
    r: usize,
    eta: f64,
    g: &mut [f32],
) -> (f64, f64) {
    let v = s.len();
    let lse = softmax_row(s, g);
    let ce = lse - s[target] as f64;
    let kl = match teacher {
        TeacherRows::Logits(t) => {
            let t = &t[r * v..(r + 1) * v];
            // The teacher's exponentials once per row (the vocabulary-sized exp is this
            // loss's main cost), in a buffer each thread keeps.
            TEACHER_EXP.with_borrow_mut(|et| {
                et.resize(v, 0.0);
                let mt = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut st = 0f64;
                for (e, &x) in et.iter_mut().zip(t) {
                    *e = (x - mt).exp();
                    st += *e as f64;
                }
                let (lse_t, inv_st) = (mt as f64 + st.ln(), 1.0 / st);
                let mut kl = 0f64;
                let e = eta as f32;
                for j in 0..v {
                    let q = et[j] as f64 * inv_st;
                    // q (ln q - ln p), with ln q - ln p = (t_j - lse_t) - (s_j - lse).
                    kl += q * ((t[j] - s[j]) as f64 - (lse_t - lse));
                    g[j] = (1.0 + e) * g[j] - e * q as f32;
                }
                kl
            })
        }
        TeacherRows::TopK {
            k,
            idx,
            logp,
            log_rest,
        } => {
            let (idx, lq) = (&idx[r * k..(r + 1) * k], &logp[r * k..(r + 1) * k]);
            let lr = log_rest[r] as f64;
            let rest = lr.exp();
            let p_k: f64 = idx.iter().map(|&j| g[j as usize] as f64).sum();
            let q_k: f64 = lq.iter().map(|&x| (x as f64).exp()).sum();
            let head: f64 = idx
                .iter()
                .zip(lq)
                .map(|(&j, &l)| (l as f64).exp() * (l as f64 - (s[j as usize] as f64 - lse)))
                .sum();
            let free = 1.0 - p_k;
            let tail_on = free > TAIL_FLOOR;
            let tail = rest * (lr - free.max(TAIL_FLOOR).ln());
            let w = if tail_on { rest / free } else { 0.0 };
            let scale = (1.0 + eta * (q_k - w * p_k)) as f32;
            // The K entries need p_j before the row is rescaled.
            let extra: Vec<f32> = idx
                .iter()
                .zip(lq)
                .map(|(&j, &l)| (eta * (w * g[j as usize] as f64 - (l as f64).exp())) as f32)
                .collect();
            g.iter_mut().for_each(|x| *x *= scale);
            for (&j, e) in idx.iter().zip(extra) {
                g[j as usize] += e;
            }
            head + tail
        }
    };
    g[target] -= 1.0;
    (ce, kl)
}

/// CE against `targets` and `eta` KL(teacher || student) over `rows = targets.len()` rows of
/// student logits `[rows, vocab]`, with their gradient.
pub fn distill(student: &[f32], targets: &[u32], teacher: TeacherRows, eta: f64) -> Distilled {
    let rows = targets.len();
    let v = student.len() / rows.max(1);
    let mut grad = vec![0f32; rows * v];
    let (ce, kl) = grad
        .par_chunks_mut(v.max(1))
        .enumerate()
        .map(|(r, g)| {
            row(
                &student[r * v..(r + 1) * v],
                targets[r] as usize,
                teacher,
                r,
                eta,
                g,
            )
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let inv = 1.0 / rows.max(1) as f32;
    grad.par_iter_mut().for_each(|x| *x *= inv);
    Distilled {
        ce: ce / rows.max(1) as f64,
        kl: kl / rows.max(1) as f64,
        grad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(rows: usize, v: usize, seed: u64) -> Vec<f32> {
        (0..rows * v)
            .map(|i| ((((i as u64 * 2_654_435_761 + seed) % 1000) as f32) / 1000.0 - 0.5) * 6.0)
            .collect()
    }

    /// The loss in f64, straight from its definition.
    fn loss(s: &[f32], targets: &[u32], t: TeacherRows, eta: f64) -> f64 {
        let rows = targets.len();
        let v = s.len() / rows;
        let mut total = 0.0;
        for r in 0..rows {
            let x = &s[r * v..(r + 1) * v];
            let lse = x.iter().map(|&a| (a as f64).exp()).sum::<f64>().ln();
            let ls = |j: usize| x[j] as f64 - lse;
            total += -ls(targets[r] as usize);
            total += eta
                * match t {
                    TeacherRows::Logits(tl) => {
                        let y = &tl[r * v..(r + 1) * v];
                        let lt = y.iter().map(|&a| (a as f64).exp()).sum::<f64>().ln();
                        (0..v)
                            .map(|j| {
                                let lq = y[j] as f64 - lt;
                                lq.exp() * (lq - ls(j))
                            })
                            .sum::<f64>()
                    }
                    TeacherRows::TopK {
                        k,
                        idx,
                        logp,
                        log_rest,
                    } => {
                        let mut head = 0.0;
                        let mut p = 0.0;
                        for i in 0..k {
                            let (j, l) = (idx[r * k + i] as usize, logp[r * k + i] as f64);
                            head += l.exp() * (l - ls(j));
                            p += ls(j).exp();
                        }
                        let lr = log_rest[r] as f64;
                        head + lr.exp() * (lr - (1.0 - p).max(TAIL_FLOOR).ln())
                    }
                };
        }
        total / rows as f64
    }

    fn check(t: TeacherRows, s: &[f32], targets: &[u32]) {
        let eta = 2.0;
        let d = distill(s, targets, t, eta);
        let want = loss(s, targets, t, eta);
        assert!(
            ((d.ce + eta * d.kl) - want).abs() < 1e-5 * (1.0 + want.abs()),
            "{} vs {want}",
            d.ce + eta * d.kl
        );
        let h = 1e-2f32;
        for i in (0..s.len()).step_by(7) {
            let (mut up, mut down) = (s.to_vec(), s.to_vec());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&up, targets, t, eta) - loss(&down, targets, t, eta)) / (2.0 * h as f64);
            assert!(
                (d.grad[i] as f64 - fd).abs() < 2e-4 * (1.0 + fd.abs()),
                "[{i}]: {} vs {fd}",
                d.grad[i]
            );
        }
    }

    /// Value and gradient against the definition (central differences), full teacher.
    #[test]
    fn full_teacher_matches_the_definition() {
        let (rows, v) = (5, 23);
        let s = logits(rows, v, 3);
        let t = logits(rows, v, 11);
        check(TeacherRows::Logits(&t), &s, &[0, 4, 22, 7, 7]);
    }

    /// The same with a cached top-k teacher (tail term included).
    #[test]
    fn topk_teacher_matches_the_definition() {
        let (rows, v, k) = (4, 19, 5);
        let s = logits(rows, v, 5);
        let t = logits(rows, v, 9);
        let mut idx = vec![];
        let mut lp = vec![];
        let mut rest = vec![];
        for r in 0..rows {
            let y = &t[r * v..(r + 1) * v];
            let lse = y.iter().map(|&a| (a as f64).exp()).sum::<f64>().ln();
            let mut order: Vec<u32> = (0..v as u32).collect();
            order.sort_by(|&a, &b| y[b as usize].total_cmp(&y[a as usize]));
            let top = &order[..k];
            let vals: Vec<f64> = top.iter().map(|&j| y[j as usize] as f64 - lse).collect();
            rest.push((1.0 - vals.iter().map(|x| x.exp()).sum::<f64>()).ln() as f32);
            idx.extend_from_slice(top);
            lp.extend(vals.iter().map(|&x| x as f32));
        }
        let t = TeacherRows::TopK {
            k,
            idx: &idx,
            logp: &lp,
            log_rest: &rest,
        };
        check(t, &s, &[1, 18, 3, 3]);
    }
}
