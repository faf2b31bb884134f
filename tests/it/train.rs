//! Mask-only DDP training on real models: the expected sparsity moves toward the target, and a
//! run resumed from a checkpoint ends exactly where an uninterrupted run does.

use crate::common::*;

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use ddp::data;
use ddp::model::load::load_model;
use ddp::prune::family::FamilyKind;
use ddp::prune::train::{self, GateState, HeadGates, Method, Scope, StepLog, TrainConfig};

type A = Autodiff<NdArray>;

/// The paper's learning rates. Its annealing (mu 0.5 -> 0.1) is spread over 1000 steps; over a
/// few dozen it would saturate the retention score before z can move (q falls back to 0), so
/// these short runs hold mu at 0.5 and let the multipliers grow faster.
fn cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        method: Method::Ddp,
        steps,
        warmup: 2,
        batch: 1,
        grad_accum: 1,
        lr_z: 2e-2,
        lr_lambda: 0.1,
        lr_lambda2: 0.4,
        eta: 2.0,
        mu0: 0.5,
        mu_end: 0.5,
        seed: 0,
        adapt: Default::default(),
    }
}

/// Largest difference between two states' gates and multipliers.
fn distance(a: &GateState, b: &GateState) -> f64 {
    let mut d = 0f64;
    for (fa, fb) in a.families.iter().zip(&b.families) {
        for (x, y) in fa.z.iter().flatten().zip(fb.z.iter().flatten()) {
            d = d.max((x - y).abs() as f64);
        }
        for (x, y) in fa.lambdas.iter().zip(&fb.lambdas) {
            d = d.max((x - y).abs());
        }
    }
    d
}

fn setup(spec: Option<&str>, seq: usize) -> (ddp::io::ModelFiles, data::Blocks, GateState) {
    let files = match spec {
        Some(s) => open(s),
        None => fixture("stories260k"),
    };
    let text = fixtures().join("corpora/moby-dick.txt");
    let blocks = data::blocks(
        text.to_str().unwrap(),
        files.tokenizer.as_ref().unwrap(),
        seq,
        40 * seq,
        10,
    )
    .unwrap();
    let c = &files.config;
    let fams = vec![
        (
            FamilyKind::Heads,
            0.34,
            (0..c.num_hidden_layers)
                .map(|_| c.num_key_value_heads)
                .collect(),
        ),
        (
            FamilyKind::Channels,
            0.5,
            (0..c.num_hidden_layers)
                .map(|_| c.intermediate_size)
                .collect(),
        ),
    ];
    let state = GateState::init(&fams, HeadGates::PerGroup, Scope::Global, 1);
    (files, blocks, state)
}

fn run(
    files: &ddp::io::ModelFiles,
    blocks: &data::Blocks,
    c: &TrainConfig,
    state: &mut GateState,
) -> Vec<StepLog> {
    let model = model_of(files);
    let mut logs = vec![];
    train::train(&model, &blocks.train, c, state, |l, _| {
        logs.push(l.clone());
        Ok(())
    })
    .unwrap();
    logs
}

fn model_of(files: &ddp::io::ModelFiles) -> ddp::model::Model<A> {
    load_model::<A>(
        &files.config,
        files.weights.as_ref(),
        &NdArrayDevice::Cpu,
        None,
    )
    .unwrap()
}

fn q(l: &StepLog, fam: &str) -> f64 {
    l.families.iter().find(|f| f.0 == fam).unwrap().1
}

#[test]
fn stories260k_expected_sparsity_moves_toward_the_target() {
    let (files, blocks, mut state) = setup(None, 64);
    let logs = run(&files, &blocks, &cfg(40), &mut state);
    let (first, last) = (&logs[0], logs.last().unwrap());
    for l in &logs {
        assert!(l.loss.is_finite() && l.ce > 0.0 && l.kl >= -1e-6, "{l:?}");
    }
    for fam in ["heads", "channels"] {
        assert!(
            q(last, fam) > q(first, fam) + 0.02,
            "{fam}: {} -> {}",
            q(first, fam),
            q(last, fam)
        );
    }
    // The multipliers ascend: lambda1 turns negative while q is below the target.
    assert!(
        last.families.iter().all(|f| f.2 < 0.0),
        "{:?}",
        last.families
    );
    // z stays clamped at -0.1.
    assert!(state
        .families
        .iter()
        .flat_map(|f| f.z.iter().flatten())
        .all(|&z| z >= -0.1));
    assert_eq!(state.step, 40);
}

/// burn's autodiff backward is not guaranteed bit-reproducible run to run on CPU, so "the same result" is measured against that baseline: a run killed
/// after step 3 and resumed from its JSON checkpoint ends as close to the uninterrupted run as
/// a second uninterrupted run does (up to a small factor), and far from a run that restarted.
#[test]
fn resuming_from_a_checkpoint_gives_the_uninterrupted_result() {
    let (files, blocks, init) = setup(None, 32);
    let model = model_of(&files);
    let c = cfg(8);
    let run = |state: &mut GateState| {
        train::train(&model, &blocks.train, &c, state, |_, _| Ok(())).unwrap()
    };
    let mut straight = init.clone();
    run(&mut straight);
    let mut again = init.clone();
    run(&mut again);
    let baseline = distance(&straight, &again);
    let mut killed = init.clone();
    let mut saved = None;
    let r = train::train(&model, &blocks.train, &c, &mut killed, |l, st| {
        if l.step == 3 {
            saved = Some(serde_json::to_string(st).unwrap());
            return Err(ddp::Error::Invalid("killed".into()));
        }
        Ok(())
    });
    assert!(r.is_err());
    let saved = saved.unwrap();
    let mut resumed: GateState = serde_json::from_str(&saved).unwrap();
    assert!(
        serde_json::to_string(&resumed).unwrap() == saved,
        "the checkpoint must round-trip exactly"
    );
    assert_eq!(resumed.step, 3);
    run(&mut resumed);
    assert_eq!(resumed.step, 8);
    let d = distance(&resumed, &straight);
    // A run that ignored the checkpoint and started over with 5 steps left is far away.
    let mut restarted = init;
    train::train(
        &model,
        &blocks.train,
        &cfg(5),
        &mut restarted,
        |_, _| Ok(()),
    )
    .unwrap();
    let wrong = distance(&restarted, &straight);
    eprintln!("distance to the uninterrupted run: resumed {d:e}, second uninterrupted run {baseline:e}, restarted {wrong:e}");
    assert!(
        d <= 10.0 * baseline.max(1e-6) + 1e-4,
        "resumed vs uninterrupted {d}, run-to-run {baseline}"
    );
    assert!(
        wrong > 10.0 * d.max(1e-6),
        "a restarted run ({wrong}) must be distinguishable from a resumed one ({d})"
    );
}

#[test]
fn smollm2_a_few_steps_move_sparsity_toward_the_target() {
    let (files, blocks, mut state) = setup(Some(SMOLLM2), 32);
    let logs = run(&files, &blocks, &cfg(5), &mut state);
    let (first, last) = (&logs[0], logs.last().unwrap());
    for fam in ["heads", "channels"] {
        assert!(
            q(last, fam) > q(first, fam),
            "{fam}: {} -> {}",
            q(first, fam),
            q(last, fam)
        );
        assert!(
            q(last, fam) < 0.34,
            "{fam}: a few steps cannot reach the target"
        );
    }
    assert!(last.loss.is_finite());
}

#[test]
fn hard_concrete_baselines_train_toward_the_target() {
    for method in [Method::HardConcrete, Method::DetHardConcrete] {
        let (files, blocks, mut state) = setup(None, 64);
        let c = TrainConfig {
            method,
            warmup: 5,
            lr_z: 0.1,
            lr_lambda: 1.0,
            lr_lambda2: 4.0,
            ..cfg(60)
        };
        let logs = run(&files, &blocks, &c, &mut state);
        assert_eq!(state.method, method);
        let (first, last) = (&logs[0], logs.last().unwrap());
        for fam in ["heads", "channels"] {
            // q here is the expected L0 sparsity, 1 - mean P(gate != 0).
            assert!(
                q(last, fam) > q(first, fam) + 0.005,
                "{method:?} {fam}: {} -> {}",
                q(first, fam),
                q(last, fam)
            );
        }
        // Deployed values are deterministic gates in [0, 1].
        let v = train::deployed_values(method, &state.families[1].z);
        assert!(v.iter().flatten().all(|x| (0.0..=1.0).contains(x)));
        // A checkpoint of one method cannot be continued with another.
        let other = TrainConfig {
            method: Method::Ddp,
            ..cfg(80)
        };
        let model = model_of(&files);
        let e = train::train(&model, &blocks.train, &other, &mut state, |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("trained with"), "{e}");
    }
}

/// The cached teacher: with k = the whole vocabulary it is the online teacher (same KL, same
/// training to float noise); with a small k it is an approximation whose effect is measured
/// and printed here (the note quotes these figures).
#[test]
fn cached_top_k_teacher_against_online() {
    use ddp::prune::teacher::{self, TopK};
    let (files, blocks, init) = setup(None, 64);
    let dense = model(&files);
    let v = files.config.vocab_size;
    let train_n = |teacher: Option<&TopK>, steps: usize| {
        let mut st = init.clone();
        let mut kl = vec![];
        train::train_with_teacher(
            &model_of(&files),
            &blocks.train,
            teacher,
            &cfg(steps),
            &mut st,
            |l, _| {
                kl.push(l.kl);
                Ok(())
            },
        )
        .unwrap();
        (st, kl)
    };
    let (online, kl_on) = train_n(None, 20);
    let full = teacher::compute(&dense, &blocks.train, v, || {});
    // Round trip through the files the calibrate stage writes.
    let d = tempfile::tempdir().unwrap();
    full.write(d.path()).unwrap();
    assert_eq!(TopK::read(d.path()).unwrap(), full);
    let (exact, kl_ex) = train_n(Some(&full), 20);
    for (a, b) in kl_on.iter().zip(&kl_ex) {
        // The cached log-probabilities are stored in f32 (~4e-7 per entry at |log p| ~ 6), and
        // the online KL is now summed in f64 from the logits: an absolute floor of 1e-6.
        assert!(
            (a - b).abs() < 1e-4 * a.abs().max(1e-2),
            "KL online {a} vs cached full {b}"
        );
    }
    let d_exact = distance(&online, &exact);
    let mut table = format!(
        "cached teacher vs online (stories260k, 20 steps): k={v} (all) max |dz| {d_exact:.2e}"
    );
    assert!(d_exact < 1e-3, "{d_exact}");
    for k in [64, 8] {
        let t = teacher::compute(&dense, &blocks.train, k, || {});
        let (st, kl) = train_n(Some(&t), 20);
        let rel_kl = kl
            .iter()
            .zip(&kl_on)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-9))
            .fold(0.0, f64::max);
        table += &format!(
            "; k={k}: max |dz| {:.2e}, KL rel. diff up to {rel_kl:.3}",
            distance(&online, &st)
        );
        assert!(
            distance(&online, &st) < 0.1,
            "k={k} moved the gates too far: {table}"
        );
    }
    println!("{table}");
}

/// Calibration computes activation statistics inside the teacher pass when it needs both: the
/// probes must see the same sums as a pass of their own.
#[test]
fn activation_stats_from_the_teacher_pass_equal_their_own_pass() {
    use ddp::prune::{oneshot, teacher};
    let (files, blocks, _) = setup(None, 64);
    let mut m = model(&files);
    let blocks = &blocks.train[..6];
    let own = oneshot::activation_stats(&mut m, blocks, 4, |_| {});
    let probes = oneshot::Probes::attach(&mut m);
    teacher::compute(&m, blocks, 8, || {});
    let shared = probes.detach(&mut m);
    assert_eq!(own.len(), shared.len());
    for (a, b) in own.iter().zip(&shared) {
        for (x, y) in [(&a.o, &b.o), (&a.down, &b.down)] {
            assert_eq!(x.rows, y.rows);
            for (p, q) in x.sum_sq.iter().zip(&y.sum_sq) {
                assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "{p} vs {q}");
            }
        }
    }
    assert!(own[0].down.rows == 6 * 64);
}

/// Turns burn's reference ops on for as long as it lives (also when an assertion fails).
struct ReferenceOps;
impl ReferenceOps {
    fn on() -> Self {
        ddp::backend::set_reference_ops(true);
        Self
    }
}
impl Drop for ReferenceOps {
    fn drop(&mut self) {
        ddp::backend::set_reference_ops(false);
    }
}

/// The CPU fast paths of a training step (frozen-weight GEMM op, fused SwiGLU, the teacher on
/// the inner backend, the host distillation loss with its closed-form gradient) against burn's
/// own tensor ops: 30 steps end at the same gates and multipliers, online and with a cached
/// top-k teacher.
#[test]
fn fast_paths_train_as_burns_ops_do() {
    use ddp::prune::teacher;
    let (files, blocks, init) = setup(None, 64);
    let cached = teacher::compute(&model(&files), &blocks.train, 16, || {});
    let mut report = String::from("fast paths vs burn's ops, stories260k, 30 steps of 2 blocks:");
    for (name, t) in [("online", None), ("cached top-16", Some(&cached))] {
        let train_30 = || {
            let mut st = init.clone();
            let mut last = None;
            // Two blocks per step: the host loss picks the predicting rows of each.
            let c = TrainConfig {
                batch: 2,
                ..cfg(30)
            };
            train::train_with_teacher(&model_of(&files), &blocks.train, t, &c, &mut st, |l, _| {
                last = Some(l.clone());
                Ok(())
            })
            .unwrap();
            (st, last.unwrap())
        };
        let (fast, lf) = train_30();
        let (slow, ls) = {
            let _reference = ReferenceOps::on();
            train_30()
        };
        let d = distance(&fast, &slow);
        report += &format!(
            " {name}: max |dz|, |dlambda| {d:.2e}, loss {:.6} vs {:.6};",
            lf.loss, ls.loss
        );
        // Measured 1.0-1.2e-4 online (z ~ 1, lambdas ~ 6): the host loss sums the vocabulary in
        // f64 where burn's ops sum in f32, and 30 Adam steps carry the rounding forward.
        assert!(d <= 2e-4, "{report}");
        assert!(
            (lf.loss - ls.loss).abs() <= 1e-4 * ls.loss.abs(),
            "{report}"
        );
    }
    println!("{report}");
}

/// stories260k at targets the relu rule can meet exactly (5 of 20 KV groups, 430 of 860
/// channels), with the paper's rates and mu annealed to 0.1.
fn paper_short_run(steps: usize, adapt: train::Adapt) -> TrainConfig {
    TrainConfig {
        warmup: steps / 10,
        lr_lambda: 0.02,
        mu_end: 0.1,
        adapt,
        ..cfg(steps)
    }
}

fn convergence_setup() -> (ddp::io::ModelFiles, data::Blocks, GateState) {
    let (files, blocks, _) = setup(None, 32);
    let c = &files.config;
    let fams = vec![
        (FamilyKind::Heads, 0.25, vec![c.num_key_value_heads; 5]),
        (FamilyKind::Channels, 0.5, vec![c.intermediate_size; 5]),
    ];
    let state = GateState::init(&fams, HeadGates::PerGroup, Scope::Global, 1);
    (files, blocks, state)
}

/// The adaptations anneal-train turns on by default.
fn adapted() -> train::Adapt {
    train::Adapt {
        lr_steps_ref: 1000,
        z_travel: 1.5,
        lambda_scale: train::LambdaScale::SqrtUnits,
        mu_hold_tol: 0.01,
        mu_hold_max: 0.5,
        lambda_restart: true,
    }
}

/// Measured (stories260k, heads 0.25 / channels 0.5): with the adaptations, 30 / 90 / 300 steps
/// end at channels 0.4988 / 0.5000 / 0.5000 (relu the same, heads exactly 0.25); without the
/// multipliers' restart at the hold's end, 90 steps end at 0.5174 (0.5209 with the hold's old
/// latch); with the paper's per-step rates the channels barely move (0.000 at 30 and 90 steps).
#[test]
fn short_runs_converge_with_the_adaptations_and_not_with_the_paper_rates() {
    let (files, blocks, init) = convergence_setup();
    let figures = |steps, adapt| {
        let mut st = init.clone();
        let logs = run(&files, &blocks, &paper_short_run(steps, adapt), &mut st);
        (train::convergence(&st, logs.last().unwrap()), st)
    };
    for steps in [30, 90, 300] {
        let (paper, _) = figures(steps, train::Adapt::default());
        let (ours, st) = figures(steps, adapted());
        eprintln!(
            "{steps} steps: paper {paper:?}\n  adapted {ours:?}, hold until {:?}",
            st.mu_hold_until
        );
        // The paper's per-step rates are tuned for 1000 steps: here the channels (the larger
        // family) end far short of their target.
        assert!(
            paper.iter().any(|c| c.target - c.relu > 0.1),
            "{steps} steps, paper rates: {paper:?}"
        );
        // The paper's claim: the relu rule lands within 1 % of the target.
        for c in &ours {
            let near = |x: f64| (x - c.target).abs() <= train::TOLERANCE;
            assert!(near(c.expected) && near(c.relu), "{steps} steps: {c:?}");
            assert!(c.binarity <= train::TOLERANCE, "{steps} steps: {c:?}");
        }
        // The hold ended when the targets were reached, before its limit.
        let h = st.mu_hold_until.expect("the hold ended");
        assert!(
            h < train::hold_limit(&paper_short_run(steps, adapted())),
            "{h}"
        );
    }
    // Without the restart, the multipliers' windup carries the channels past the 1 %.
    let no_restart = train::Adapt {
        lambda_restart: false,
        ..adapted()
    };
    let (wound, _) = figures(90, no_restart);
    assert!(
        wound[1].relu - wound[1].target > train::TOLERANCE,
        "{wound:?}"
    );
}

/// Measured (stories260k, heads 0.25 / channels 0.5, the adaptations on): channels end at
/// 0.5003 / 0.4953 / 0.5000 after 60 / 150 / 1000 steps, heads exactly 0.25: the 1 % holds from
/// short runs to the paper's length.
#[test]
fn adapted_runs_of_60_to_1000_steps_end_within_one_percent() {
    let (files, blocks, init) = convergence_setup();
    for steps in [60, 150, 1000] {
        let mut st = init.clone();
        let logs = run(&files, &blocks, &paper_short_run(steps, adapted()), &mut st);
        let figures = train::convergence(&st, logs.last().unwrap());
        eprintln!("{steps} steps: {figures:?}");
        for c in &figures {
            let near = |x: f64| (x - c.target).abs() <= train::TOLERANCE;
            assert!(near(c.expected) && near(c.relu), "{steps} steps: {c:?}");
            assert!(c.binarity <= train::TOLERANCE, "{steps} steps: {c:?}");
        }
    }
}

/// The checkpoint a run from `init` writes after step `kill_at`, where it is killed.
fn checkpoint_at(
    model: &ddp::model::Model<A>,
    blocks: &[Vec<u32>],
    c: &TrainConfig,
    init: &GateState,
    kill_at: usize,
) -> GateState {
    let mut killed = init.clone();
    let mut saved = None;
    let _ = train::train(model, blocks, c, &mut killed, |l, st| {
        if l.step == kill_at {
            saved = Some(serde_json::to_string(st).unwrap());
            return Err(ddp::Error::Invalid("killed".into()));
        }
        Ok(())
    });
    serde_json::from_str(&saved.expect("the run reached the step")).unwrap()
}

#[test]
fn a_run_resumed_during_or_after_the_mu_hold_ends_where_the_uninterrupted_one_does() {
    let (files, blocks, init) = convergence_setup();
    let model = model_of(&files);
    let c = paper_short_run(30, adapted());
    let mut straight = init.clone();
    let mut holds = vec![];
    train::train(&model, &blocks.train, &c, &mut straight, |l, st| {
        holds.push((l.step, st.mu_hold_until));
        Ok(())
    })
    .unwrap();
    let h = straight.mu_hold_until.expect("the hold ended");
    for kill_at in [h.saturating_sub(1).max(1), h + 2] {
        let mut resumed = checkpoint_at(&model, &blocks.train, &c, &init, kill_at);
        assert_eq!(resumed.mu_hold_until.is_some(), kill_at >= h, "{holds:?}");
        train::train(&model, &blocks.train, &c, &mut resumed, |_, _| Ok(())).unwrap();
        assert_eq!(resumed.mu_hold_until, Some(h));
        let d = distance(&resumed, &straight);
        assert!(
            d < 1e-4,
            "killed at step {kill_at} (hold until {h}): distance {d}"
        );
    }
}

/// stories260k (KV groups and channels, per-group heads) with one joint budget of `sparsity` of
/// its prunable parameters, as gate-insert's `split = "learned"` writes it.
fn learned_setup(sparsity: f64) -> (ddp::io::ModelFiles, data::Blocks, GateState) {
    use ddp::model::accounting;
    use ddp::prune::budget::{self, Basis};
    let (files, blocks, _) = setup(None, 32);
    let c = &files.config;
    let fams = budget::families(c, HeadGates::PerGroup, true, true);
    let a = budget::target(sparsity, Basis::Params, &accounting::count(c), &fams);
    let rows: Vec<_> = fams.iter().map(|f| (f.kind, a, f.units.clone())).collect();
    let mut state = GateState::init(&rows, HeadGates::PerGroup, Scope::Global, 1);
    let w = fams
        .iter()
        .map(|f| (f.kind, budget::unit_params(c, f.kind, HeadGates::PerGroup)))
        .collect();
    state.joint = Some(train::Joint::new(a, w));
    (files, blocks, state)
}

/// Measured (stories260k, 0.4 of the parameters, 90 steps, the default adaptations): see the
/// printed split; the budget lands within 1 % (expected and relu) and every family binarises.
#[test]
fn a_learned_split_meets_the_parameter_budget_and_chooses_its_own_split() {
    let (files, blocks, mut st) = learned_setup(0.4);
    let a = st.joint.as_ref().unwrap().target;
    let logs = run(&files, &blocks, &paper_short_run(90, adapted()), &mut st);
    let last = logs.last().unwrap();
    let fams = train::convergence(&st, last);
    let j = train::joint_convergence(&st, last).expect("a joint budget");
    eprintln!(
        "learned split, 90 steps: params {j:?}, hold until {:?}, L = {:?}\n  {fams:?}",
        st.mu_hold_until, last.joint
    );
    assert!(j.on_target(), "{j:?}");
    assert!(
        fams.iter().all(|c| c.binarity <= train::TOLERANCE),
        "{fams:?}"
    );
    assert!(train::converged(&fams, Some(&j)));
    // The training chose its own split: not every family at the equal fraction.
    assert!(
        fams.iter().any(|c| (c.expected - a).abs() > 0.05),
        "equal split {a:.3}: {fams:?}"
    );
    // Every step logged the joint figures; the families' own l1 and l2 never moved.
    assert!(logs.iter().all(|l| l.joint.is_some()));
    assert!(st.families.iter().all(|f| f.lambdas[..2] == [0.0, 0.0]));
}

#[test]
fn a_learned_split_run_resumed_mid_run_ends_where_the_uninterrupted_one_does() {
    let (files, blocks, init) = learned_setup(0.4);
    let model = model_of(&files);
    let c = paper_short_run(30, adapted());
    let mut straight = init.clone();
    train::train(&model, &blocks.train, &c, &mut straight, |_, _| Ok(())).unwrap();
    let h = straight.mu_hold_until.expect("the hold ended");
    let joint = |s: &GateState| s.joint.clone().unwrap();
    assert!(
        joint(&straight).reached_at.is_some(),
        "{:?}",
        joint(&straight)
    );
    for kill_at in [h.saturating_sub(1).max(1), h + 2] {
        let mut resumed = checkpoint_at(&model, &blocks.train, &c, &init, kill_at);
        assert_eq!(resumed.mu_hold_until.is_some(), kill_at >= h);
        train::train(&model, &blocks.train, &c, &mut resumed, |_, _| Ok(())).unwrap();
        assert_eq!(resumed.mu_hold_until, Some(h));
        let (a, b) = (joint(&resumed), joint(&straight));
        let d = distance(&resumed, &straight)
            .max((a.lambdas[0] - b.lambdas[0]).abs())
            .max((a.lambdas[1] - b.lambdas[1]).abs());
        assert!(
            d < 1e-4,
            "killed at step {kill_at} (hold until {h}): distance {d}"
        );
        assert_eq!(a.reached_at, b.reached_at);
    }
}

/// Per layer, the number of closed (ReLU 0) per-head gates in each KV group of `per` heads.
fn closed_per_group(st: &GateState, per: usize) -> Vec<Vec<usize>> {
    st.families[0]
        .z
        .iter()
        .map(|z| {
            z.chunks(per)
                .map(|g| g.iter().filter(|&&v| v <= 0.0).count())
                .collect()
        })
        .collect()
}

/// Measured (stories260k: 8 query heads in 4 KV groups per layer, per-head gates, half the
/// heads and channels, 90 adapted steps): with the budget per layer four of five layers end with a group
/// of 0 and one of 2 closed heads, which the uniform rule (1 per group) overrides; with the
/// budget per KV group every group closes exactly one, the shape the uniform rule deploys.
#[test]
fn the_per_group_scope_closes_the_same_heads_in_every_kv_group() {
    let (files, blocks, _) = setup(None, 32);
    let c = &files.config;
    let per = c.num_attention_heads / c.num_key_value_heads;
    let fams = vec![
        (FamilyKind::Heads, 0.5, vec![c.num_attention_heads; 5]),
        (FamilyKind::Channels, 0.5, vec![c.intermediate_size; 5]),
    ];
    let mut uneven = vec![];
    for scope in [Scope::PerLayer, Scope::PerGroup] {
        let mut st = GateState::init(&fams, HeadGates::PerHead, scope, 1);
        if scope == Scope::PerGroup {
            st.kv_groups = vec![c.num_key_value_heads; 5];
        }
        run(&files, &blocks, &paper_short_run(90, adapted()), &mut st);
        let closed = closed_per_group(&st, per);
        eprintln!("{scope:?}: closed heads per KV group {closed:?}");
        let layers_uneven = closed.iter().filter(|l| l.iter().any(|&n| n != 1)).count();
        uneven.push(layers_uneven);
    }
    assert_eq!(
        uneven[1], 0,
        "per-group scope: every KV group closes 1 of {per}"
    );
    assert!(
        uneven[0] > 0,
        "the per-layer scope is not already per group"
    );
}

/// A gates file whose KV groups do not split a layer's head gates is refused before training,
/// naming the key and the layer, instead of training per layer in silence.
#[test]
fn kv_groups_that_do_not_split_the_heads_are_refused() {
    let (files, blocks, _) = setup(None, 32);
    let c = &files.config;
    let fams = vec![(FamilyKind::Heads, 0.5, vec![c.num_attention_heads; 5])];
    let mut st = GateState::init(&fams, HeadGates::PerHead, Scope::PerGroup, 1);
    st.kv_groups = vec![4, 4, 3, 4, 4];
    let model = model_of(&files);
    let e = train::train(&model, &blocks.train, &cfg(2), &mut st, |_, _| Ok(())).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("layer 2") && msg.contains("kv_groups 3") && msg.contains("8 head gates"),
        "{msg}"
    );
    st.kv_groups = vec![4; 4];
    let e = train::train(&model, &blocks.train, &cfg(2), &mut st, |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("kv_groups lists 4 layers"), "{e}");
}
