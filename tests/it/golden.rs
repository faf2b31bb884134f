//! The model against Hugging Face transformers: logits and token ids from ../shared/fixtures/golden.

use crate::common::*;

fn token_cases(model: &str) -> Vec<(String, Vec<u32>)> {
    let path = fixtures().join("golden/token_texts.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let m = &v[model];
    let ids = |x: &serde_json::Value| {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    let mut cases = vec![(m["text"].as_str().unwrap().to_string(), ids(&m["ids"]))];
    for c in m["extra_cases"].as_array().unwrap() {
        cases.push((c["text"].as_str().unwrap().to_string(), ids(&c["ids"])));
    }
    assert!(cases.len() >= 10, "fixture lists the edge cases");
    cases
}

fn check_tokenizer(files: &ddp::io::ModelFiles, model: &str) {
    let tok = files.tokenizer.as_ref().expect("tokenizer");
    for (text, want) in token_cases(model) {
        let got = tok.encode(&text, true).unwrap();
        assert_eq!(got, want, "{model} ids for {text:?}");
        let without_special: Vec<u32> = want
            .iter()
            .copied()
            .filter(|&t| Some(t) != tok.bos_id || !tok.add_bos)
            .collect();
        let decoded = tok.decode(&without_special).unwrap();
        assert_eq!(decoded, text, "{model} decode round trip");
    }
}

#[test]
fn stories260k_tokenizer_json_matches_golden_ids() {
    check_tokenizer(&fixture("stories260k"), "stories260k");
}

#[test]
fn stories260k_gguf_tokenizer_matches_golden_ids() {
    for f in ["stories260k.gguf", "stories260k-q8_0.gguf"] {
        check_tokenizer(&fixture(f), "stories260k");
    }
}

fn check_stories_logits(name: &str, tol: f32, min_argmax: usize) {
    let (ids, want, shape) = golden("stories260k.safetensors");
    let files = fixture(name);
    let m = model(&files);
    let got = logits(&m, &ids);
    let vocab = shape[2];
    let agree = argmax_rows(&got, vocab)
        .iter()
        .zip(argmax_rows(&want, vocab))
        .filter(|(a, b)| **a == *b)
        .count();
    let diff = max_abs_diff(&got, &want);
    eprintln!("{name} vs transformers: max |logit diff| {diff}, argmax {agree}/64");
    assert!(diff <= tol, "{name}: max |logit diff| {diff} > {tol}");
    assert!(
        agree >= min_argmax,
        "{name}: argmax agrees on {agree}/64 positions, need {min_argmax}"
    );
}

#[test]
fn stories260k_hf_logits_match_transformers() {
    check_stories_logits("stories260k", 1e-4, 64);
}

#[test]
fn stories260k_gguf_f32_logits_match_transformers() {
    check_stories_logits("stories260k.gguf", 1e-4, 64);
}

#[test]
fn stories260k_q8_0_keeps_golden_argmax() {
    // Q8_0 changes logits by up to ~0.3 (fixture README); the argmax must survive.
    check_stories_logits("stories260k-q8_0.gguf", 1.0, 63);
}

/// Each dequantised Q8_0 / Q4_0 weight lies within its block's quantisation step of the F32
/// weight: |w - q| <= d/2 for Q8_0 (round to nearest), and <= d for Q4_0 (its extreme level
/// is clipped to 7 of [-8, 7], fixture README), with d = max|w| of the block / 127 (or / 8).
#[test]
fn quantised_ggufs_dequantise_within_block_bound() {
    let f32m = fixture("stories260k.gguf");
    for (name, levels, slack) in [
        ("stories260k-q8_0.gguf", 127.0f32, 0.5f32),
        ("stories260k-q4_0.gguf", 8.0, 1.0),
    ] {
        let q = fixture(name);
        let mut checked = 0;
        for t in f32m.weights.names() {
            let a = f32m.weights.load(&t).unwrap();
            let b = q.weights.load(&t).unwrap();
            assert_eq!(a.shape, b.shape, "{name} {t}");
            if a.shape.len() != 2 || a.shape[1] % 32 != 0 || t.contains("down_proj") {
                assert_eq!(
                    a.data, b.data,
                    "{name}: {t} is stored F32 and must be bit-identical"
                );
                continue;
            }
            for (wa, wb) in a.data.chunks(32).zip(b.data.chunks(32)) {
                let amax = wa.iter().fold(0f32, |m, x| m.max(x.abs()));
                // f16 rounding of the scale adds a relative 2^-11 on top.
                let bound = slack * amax / levels * (1.0 + 1e-3) + amax * 1e-3;
                for (x, y) in wa.iter().zip(wb) {
                    assert!((x - y).abs() <= bound, "{name} {t}: |{x} - {y}| > {bound}");
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 32, "{name}: 32 quantised matrices expected");
    }
}

#[test]
fn smollm2_gguf_tokenizer_matches_golden_ids() {
    check_tokenizer(&open(SMOLLM2), "smollm2");
}

#[test]
fn smollm2_gguf_logits_match_transformers() {
    let (ids, want, shape) = golden("smollm2.safetensors");
    let files = open(SMOLLM2);
    let m = model(&files);
    let got = logits(&m, &ids);
    let diff = max_abs_diff(&got, &want);
    eprintln!("SmolLM2 (GGUF) vs transformers: max |logit diff| {diff}");
    assert!(diff <= 5e-4, "SmolLM2 max |logit diff| {diff} > 5e-4");
    assert_eq!(
        argmax_rows(&got, shape[2]),
        argmax_rows(&want, shape[2]),
        "argmax differs"
    );
}

#[test]
fn gguf_converted_to_hf_dir_is_the_fixture_model() {
    // GGUF -> HF directory must undo llama.cpp's q/k permutation exactly: bit-identical weights.
    let d = tempfile::tempdir().unwrap();
    let g = fixture("stories260k.gguf");
    let tensors = ddp::io::export::read_all(g.weights.as_ref()).unwrap();
    ddp::io::export::write_hf_dir(d.path(), &g.config, &tensors, g.tokenizer.as_ref()).unwrap();
    let ours = ddp::io::open_model(d.path()).unwrap();
    let reference = fixture("stories260k");
    assert_eq!(ours.config, reference.config);
    for name in reference.weights.names() {
        assert_eq!(
            ours.weights.load(&name).unwrap(),
            reference.weights.load(&name).unwrap(),
            "{name}"
        );
    }
    assert_eq!(ours.weights.names(), reference.weights.names());
    check_tokenizer(&ours, "stories260k");
}

#[test]
fn smollm2_hf_dir_logits_match_transformers() {
    // The same model in HF form (written by `ddp-run convert`) gives the golden logits too.
    let d = tempfile::tempdir().unwrap();
    let g = open(SMOLLM2);
    let tensors = ddp::io::export::read_all(g.weights.as_ref()).unwrap();
    ddp::io::export::write_hf_dir(d.path(), &g.config, &tensors, g.tokenizer.as_ref()).unwrap();
    drop(tensors);
    let files = ddp::io::open_model(d.path()).unwrap();
    assert_eq!(files.format, "safetensors");
    check_tokenizer(&files, "smollm2");
    let (ids, want, shape) = golden("smollm2.safetensors");
    let got = logits(&model(&files), &ids);
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 5e-4, "SmolLM2 (HF dir) max |logit diff| {diff}");
    assert_eq!(argmax_rows(&got, shape[2]), argmax_rows(&want, shape[2]));
}
