//! Evaluation against references: perplexity (transformers' golden value and an independent
//! computation here), the cloze tasks (recomputed here item by item), and the multiple-choice
//! scorer on a small hand-written task file.

use crate::common::*;

use ddp::eval::{cloze, mc, perplexity, score::Scorer};

fn golden_ppl(model: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("golden/perplexity.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[model].clone()
}

fn moby() -> String {
    std::fs::read_to_string(fixtures().join("corpora/moby-dick.txt")).unwrap()
}

/// log p(ids[t+1] | ids[..=t]) for every t, from full logits, in f64.
pub(crate) fn logprobs(m: &ddp::model::Model<B>, ids: &[u32]) -> Vec<f64> {
    let v = m.config.vocab_size;
    let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let lg = logits(m, &ids64);
    (0..ids.len() - 1)
        .map(|t| {
            let row = &lg[t * v..(t + 1) * v];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row[ids[t + 1] as usize] as f64 - lse
        })
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

#[test]
fn stories260k_perplexity_matches_transformers_and_an_independent_computation() {
    let g = golden_ppl("stories260k");
    let files = fixture("stories260k");
    let tok = files.tokenizer.as_ref().unwrap();
    let m = model(&files);
    let text = moby();
    let ids = tok.encode(&text[..200_000], false).unwrap();
    assert_eq!(
        &ids[..8],
        serde_json::from_value::<Vec<u32>>(g["first_ids"].clone())
            .unwrap()
            .as_slice()
    );
    let ids = &ids[..4096];
    let p = perplexity::perplexity(&Scorer::new(&m), ids, 256, 256, |_| {});
    assert_eq!((p.windows, p.scored_tokens), (16, 4080));
    // Independent: each window's log-probabilities from full logits.
    let per_window: Vec<f64> = ids
        .chunks(256)
        .map(|w| -logprobs(&m, w).iter().sum::<f64>())
        .collect();
    let nll: f64 = per_window.iter().sum();
    let mine = (nll / 4080.0).exp();
    // The standard error over the 16 windows (equal, 255 scored tokens each): that of the mean
    // of the per-window mean NLLs, sd / sqrt(16); the perplexity's by the delta method.
    let means: Vec<f64> = per_window.iter().map(|x| x / 255.0).collect();
    let avg = means.iter().sum::<f64>() / 16.0;
    let sd = (means.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / 15.0).sqrt();
    let se = p.mean_nll_stderr.unwrap();
    assert!((se - sd / 4.0).abs() < 1e-5 * se, "{se} vs {}", sd / 4.0);
    let pse = p.perplexity_stderr.unwrap();
    assert!((pse - p.perplexity * se).abs() < 1e-9 * pse, "{pse}");
    println!(
        "stories260k mean NLL {:.4} ± {se:.4}, perplexity ± {pse:.4}",
        p.mean_nll
    );
    let want = g["perplexity"].as_f64().unwrap();
    println!(
        "stories260k perplexity: ddp {:.6}, independent {mine:.6}, transformers {want:.6}",
        p.perplexity
    );
    assert!(
        (p.perplexity - mine).abs() / mine < 1e-5,
        "{} vs {mine}",
        p.perplexity
    );
    assert!(
        (p.perplexity - want).abs() / want < 1e-4,
        "{} vs transformers {want}",
        p.perplexity
    );
    // Strided windows score every token after the first exactly once, with more context.
    let s = perplexity::perplexity(&Scorer::new(&m), &ids[..1024], 256, 128, |_| {});
    assert_eq!(s.scored_tokens, 1023);
    let mut nll = -logprobs(&m, &ids[..256]).iter().sum::<f64>();
    for start in (128..1024 - 128).step_by(128) {
        let lp = logprobs(&m, &ids[start..start + 256]);
        nll -= lp[127..].iter().sum::<f64>();
    }
    assert!(((nll / 1023.0).exp() - s.perplexity).abs() / s.perplexity < 1e-5);
    assert!(
        s.perplexity
            < perplexity::perplexity(&Scorer::new(&m), &ids[..1024], 256, 256, |_| {}).perplexity
    );
}

#[test]
fn cloze_tasks_match_an_item_by_item_recomputation() {
    let files = fixture("stories260k");
    let tok = files.tokenizer.as_ref().unwrap();
    let m = model(&files);
    let passages = cloze::passages(&moby(), 40);
    let items = cloze::lambada_items(&passages, 12);
    assert_eq!(items.len(), 12);
    let scorer = Scorer::new(&m);
    let r = cloze::lambada(&scorer, tok, &items, 96, |_| {}).unwrap();
    // Recompute: greedy exact match of the target's tokens and their log-likelihood.
    let (mut correct, mut ll) = (0, 0.0);
    let v = m.config.vocab_size;
    for it in &items {
        let (mut ids, mut from) = mc::encode_pair(tok, &it.context, &it.target).unwrap();
        if ids.len() > 96 {
            let cut = (ids.len() - 96).min(from - 1);
            ids.drain(..cut);
            from -= cut;
        }
        let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let lg = logits(&m, &ids64);
        let greedy = (from..ids.len()).all(|t| argmax(&lg[(t - 1) * v..t * v]) == ids[t] as usize);
        correct += greedy as usize;
        ll += logprobs(&m, &ids)[from - 1..].iter().sum::<f64>();
    }
    assert_eq!(r.acc.n, 12);
    assert!((r.acc.value - correct as f64 / 12.0).abs() < 1e-12);
    let ppl = (-ll / 12.0).exp();
    assert!(
        (r.target_perplexity - ppl).abs() / ppl < 1e-5,
        "{} vs {ppl}",
        r.target_perplexity
    );
    // The multiple-choice variant: the scorer's choice per item equals the recomputed argmax.
    let mcs = cloze::mc_items(&passages, 8, 4, 6, 0);
    let ll = mc::logliks(&scorer, tok, &mcs, 96, |_| {}).unwrap();
    for (it, l) in mcs.iter().zip(&ll) {
        for (c, &x) in l.iter().enumerate() {
            let (ids, from) = mc::encode_pair(tok, it.pair(c).0, it.pair(c).1).unwrap();
            let (ids, from) = if ids.len() > 96 {
                (ids[ids.len() - 96..].to_vec(), from - (ids.len() - 96))
            } else {
                (ids, from)
            };
            let want: f64 = logprobs(&m, &ids)[from - 1..].iter().sum();
            assert!(
                (x - want).abs() < 1e-3 * want.abs().max(1.0),
                "{x} vs {want}"
            );
        }
    }
}

#[test]
fn multiple_choice_scorer_on_a_hand_written_task() {
    let files = fixture("stories260k");
    let tok = files.tokenizer.as_ref().unwrap();
    let m = model(&files);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mc_tiny.jsonl");
    let (layout, items) = mc::read_task(&path, 0).unwrap();
    assert_eq!(layout, "generic");
    assert_eq!(items.len(), 6);
    let ll = mc::logliks(&Scorer::new(&m), tok, &items, 256, |_| {}).unwrap();
    // The first three are TinyStories-obvious (checked by hand: the model trained on children's
    // stories prefers the word a story would use); the scorer must get them.
    for (i, l) in ll.iter().enumerate().take(3) {
        assert!(l[0] > l[1], "item {i}: {l:?}");
    }
    let r = mc::accuracy(&items, &ll, &layout);
    let acc = ll
        .iter()
        .zip(&items)
        .filter(|(l, it)| (if l[0] >= l[1] { 0 } else { 1 }) == it.gold)
        .count();
    assert_eq!(r.acc.value, acc as f64 / 6.0);
    let p = r.acc.value;
    assert!((r.acc.stderr - (p * (1.0 - p) / 5.0).sqrt()).abs() < 1e-12);
    // Every log-likelihood is the sum over the continuation's tokens.
    let (ids, from) = mc::encode_pair(tok, "The cat said", " meow").unwrap();
    let want: f64 = logprobs(&m, &ids)[from - 1..].iter().sum();
    assert!((ll[2][0] - want).abs() < 1e-4, "{} vs {want}", ll[2][0]);
    // Bad files name the line and what was expected.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 0}\n{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 3}\n").unwrap();
    let e = mc::read_task(&bad, 0).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("line 2") && e.contains("gold"),
        "{e}"
    );
}

fn cli_perplexity(model: &str, seq: usize, tokens: usize) -> f64 {
    cli_eval(model, seq, tokens)["perplexity"].as_f64().unwrap()
}

/// `ddp-run eval --json`'s perplexity object.
fn cli_eval(model: &str, seq: usize, tokens: usize) -> serde_json::Value {
    let text = fixtures().join("corpora/moby-dick.txt");
    let (ok, out, err) = ddp_run(&[
        "eval",
        "--model",
        model,
        "--text",
        text.to_str().unwrap(),
        "--seq-len",
        &seq.to_string(),
        "--max-tokens",
        &tokens.to_string(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["perplexity"].clone()
}

#[test]
fn eval_command_reports_the_perplexity_with_its_standard_error() {
    let p = cli_eval(fixtures().join("stories260k").to_str().unwrap(), 256, 4096);
    let (ppl, se) = (
        p["perplexity"].as_f64().unwrap(),
        p["perplexity_stderr"].as_f64(),
    );
    let nll_se = p["mean_nll_stderr"].as_f64();
    // 16 windows: a standard error that is positive, small beside the perplexity, and the
    // delta method's ppl * SE(mean NLL).
    let (Some(se), Some(nll_se)) = (se, nll_se) else {
        panic!("no standard error: {p}")
    };
    assert!(se > 0.0 && se < 0.2 * ppl, "{p}");
    assert!((se - ppl * nll_se).abs() < 1e-9 * se, "{p}");
}

#[test]
fn eval_command_reproduces_the_reference_perplexities() {
    let s = golden_ppl("stories260k");
    let p = cli_perplexity(fixtures().join("stories260k").to_str().unwrap(), 256, 4096);
    let want = s["perplexity"].as_f64().unwrap();
    println!("ddp-run eval stories260k: {p:.4} (transformers {want:.4})");
    assert!((p - want).abs() / want < 1e-4);
    // SmolLM2-135M from its GGUF (the real model): within 1 % of transformers, as the issue asks
    // (measured: 49.5960 vs 49.5968).
    let s = golden_ppl("smollm2");
    let p = cli_perplexity(SMOLLM2, 512, 8192);
    let want = s["perplexity"].as_f64().unwrap();
    println!("ddp-run eval SmolLM2-135M: {p:.4} (transformers {want:.4})");
    assert!((p - want).abs() / want < 0.01, "{p} vs {want}");
}

#[test]
fn eval_command_scores_task_files_and_names_bad_inputs() {
    let model = fixtures().join("stories260k");
    let task = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mc_tiny.jsonl");
    let (ok, out, err) = ddp_run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        &format!("tiny={}", task.display()),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &v["tasks"]["tiny"];
    assert_eq!(t["acc"]["n"], 6, "{v}");
    assert_eq!(t["layout"], "generic");
    assert!(v["perplexity"].is_null(), "no text, no perplexity: {v}");
    let (ok, _, err) = ddp_run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "no/such/text.txt",
    ]);
    assert!(
        !ok && err.contains("no/such/text.txt") && err.contains("no such file"),
        "{err}"
    );
    let (ok, _, err) = ddp_run(&["eval", "--model", model.to_str().unwrap()]);
    assert!(!ok && err.contains("nothing to evaluate"), "{err}");
}
