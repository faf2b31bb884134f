//! GGUF output: ddp reads back its own GGUF with the source's logits (F32 exactly, F16/Q8_0/Q4_0
//! within their quantisation error), uniform models as `llama` and per-layer ones as `deci`;
//! the metadata llama.cpp requires is there with the right types; the tokenizer round-trips
//! from a GGUF source and from an HF directory; what cannot be written is refused clearly;
//! llama.cpp's own Python reader (gguf-py) parses the files and its quantisers agree byte for
//! byte when the test venv has it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

use ddp::io::gguf::{GgufFile, Value};
use ddp::io::gguf_write::{write_gguf, write_model_gguf, GgufOptions, EMPTY_FFN_WIDTH};
use ddp::io::quants::{self, GgmlType};
use ddp::io::{export, gguf_vocab, open_model, ModelFiles};
use ddp::model::config::{Arch, LayerShape};
use ddp::model::weights::HostTensor;
use ddp::prune::mask::{FinalMask, LayerMask};
use ddp::prune::slice;

/// Writes `files`' model (or `cfg`/`tensors` of a pruned one) as a GGUF of type `ty` in `dir`.
fn write(
    dir: &Path,
    files: &ModelFiles,
    cfg: &ddp::model::ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    ty: GgmlType,
) -> std::path::PathBuf {
    let out = dir.join(format!("model-{}.gguf", ty.name()));
    write_model_gguf(&out, files, cfg, tensors, ty).unwrap_or_else(|e| panic!("{e}"));
    out
}

fn all_tensors(files: &ModelFiles) -> BTreeMap<String, HostTensor> {
    export::read_all(files.weights.as_ref()).unwrap()
}

#[test]
fn stories260k_f32_round_trips_exactly() {
    let files = fixture("stories260k");
    let (ids, _, _) = golden("stories260k.safetensors");
    let tensors = all_tensors(&files);
    let d = tempfile::tempdir().unwrap();
    let out = write(d.path(), &files, &files.config, &tensors, GgmlType::F32);
    assert!(!d.path().join("model-F32.gguf.part").exists());
    let back = open_model(&out).unwrap();
    assert_eq!(back.config, files.config);
    // Every tensor bit for bit: names mapped back, q/k rows permuted and unpermuted.
    for (n, t) in &tensors {
        let b = back.weights.load(n).unwrap();
        assert_eq!((&b.shape, &b.data), (&t.shape, &t.data), "{n}");
    }
    let want = logits(&model(&files), &ids);
    let diff = max_abs_diff(&logits(&model(&back), &ids), &want);
    assert!(diff <= 1e-5, "logits differ by {diff}");
    // The same q rows as llama.cpp's own file of this model (its layout, not just ours).
    let theirs = GgufFile::open(&fixtures().join("stories260k.gguf")).unwrap();
    let ours = GgufFile::open(&out).unwrap();
    for n in [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "token_embd.weight",
    ] {
        assert_eq!(
            ours.dequantize(n).unwrap(),
            theirs.dequantize(n).unwrap(),
            "{n}"
        );
    }
}

/// Metadata value of `key`, or a panic naming it.
fn meta<'a>(f: &'a GgufFile, key: &str) -> &'a Value {
    f.get(key).unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn llama_metadata_has_what_llama_cpp_requires() {
    let files = fixture("stories260k");
    let d = tempfile::tempdir().unwrap();
    let out = write(
        d.path(),
        &files,
        &files.config,
        &all_tensors(&files),
        GgmlType::F32,
    );
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(
        meta(&f, "general.architecture"),
        &Value::Str("llama".into())
    );
    assert_eq!(meta(&f, "general.file_type"), &Value::U32(0));
    for (k, v) in [
        ("context_length", 512),
        ("embedding_length", 64),
        ("block_count", 5),
        ("feed_forward_length", 172),
        ("attention.head_count", 8),
        ("attention.head_count_kv", 4),
        ("attention.key_length", 8),
        ("attention.value_length", 8),
        ("rope.dimension_count", 8),
        ("vocab_size", 512),
    ] {
        assert_eq!(meta(&f, &format!("llama.{k}")), &Value::U32(v), "llama.{k}");
    }
    assert_eq!(
        meta(&f, "llama.attention.layer_norm_rms_epsilon"),
        &Value::F32(1e-5)
    );
    assert_eq!(meta(&f, "llama.rope.freq_base"), &Value::F32(10000.0));
    assert_eq!(meta(&f, "ddp.pruned"), &Value::Bool(false));
    // Untied: the output matrix is there; 5 layers of 9 tensors plus 3.
    assert!(f.tensors.contains_key("output.weight"));
    assert_eq!(f.tensors.len(), 48);
}

/// Logits of `ty` against F32; storage types; quantised matrices byte-equal to the fixture's
/// files that llama.cpp's tools quantised from the same weights.
#[test]
fn quantised_types_stay_within_their_error() {
    let files = fixture("stories260k");
    let (ids, _, _) = golden("stories260k.safetensors");
    let tensors = all_tensors(&files);
    let want = logits(&model(&files), &ids);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = tempfile::tempdir().unwrap();
    for (ty, reference) in [
        (GgmlType::F16, None),
        (GgmlType::Q8_0, Some("stories260k-q8_0.gguf")),
        (GgmlType::Q4_0, Some("stories260k-q4_0.gguf")),
    ] {
        let out = write(d.path(), &files, &files.config, &tensors, ty);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.tensors["blk.0.attn_q.weight"].ty, ty);
        assert_eq!(f.tensors["blk.0.attn_norm.weight"].ty, GgmlType::F32);
        // Rows of 172 are not whole blocks of 32: F16, as llama.cpp's converter falls back.
        assert_eq!(f.tensors["blk.0.ffn_down.weight"].ty, GgmlType::F16);
        let back = open_model(&out).unwrap();
        let diff = max_abs_diff(&logits(&model(&back), &ids), &want);
        eprintln!("{}: max |logit| {scale}, diff {diff}", ty.name());
        assert!(diff > 0.0, "{}: nothing was quantised", ty.name());
        let Some(reference) = reference else {
            assert!(diff <= 0.03, "F16: logits differ by {diff}");
            continue;
        };
        let theirs = GgufFile::open(&fixtures().join(reference)).unwrap();
        let mut same = 0;
        for (n, t) in theirs.tensors.iter().filter(|(_, t)| t.ty == ty) {
            assert_eq!(f.raw(&f.tensors[n]), theirs.raw(t), "{}: {n}", ty.name());
            same += 1;
        }
        assert_eq!(same, 32, "{}: 32 quantised matrices expected", ty.name());
        // Theirs keeps ffn_down F32, so it is the closer of the two, but not by much.
        let their_diff = max_abs_diff(
            &logits(&model(&open_model(&theirs.path).unwrap()), &ids),
            &want,
        );
        eprintln!("{}: llama.cpp's file differs by {their_diff}", ty.name());
        assert!(
            diff <= 1.5 * their_diff + 0.05,
            "{}: logits differ by {diff}",
            ty.name()
        );
    }
}

/// A per-layer mask of stories260k: layer 1 loses all its heads, layer 2 its whole FFN, the
/// others keep different numbers of KV groups and channels, gates in [0.5, 1.5].
fn per_layer_mask() -> FinalMask {
    let groups = [3usize, 0, 1, 4, 2];
    let channels = [150usize, 100, 0, 60, 172];
    let gate = |i: usize| 0.5 + (i * 37 % 11) as f32 / 10.0;
    let layers = (0..5)
        .map(|l| LayerMask {
            heads: (0..8)
                .map(|h| if h / 2 < groups[l] { gate(h + l) } else { 0.0 })
                .collect(),
            channels: (0..172)
                .map(|c| {
                    if c < channels[l] {
                        gate(c * 3 + l)
                    } else {
                        0.0
                    }
                })
                .collect(),
            experts: vec![],
        })
        .collect();
    FinalMask { layers }
}

#[test]
fn per_layer_model_is_written_as_deci_and_reads_back() {
    let files = fixture("stories260k");
    let (ids, _, _) = golden("stories260k.safetensors");
    let mask = per_layer_mask();
    let sliced = slice::slice(&files.config, files.weights.as_ref(), &mask, false, 1).unwrap();
    let c = &sliced.config;
    let shapes = c.layer_shapes.as_ref().expect("per-layer shapes");
    let d = tempfile::tempdir().unwrap();
    // The reference is the unsliced model under the mask's gates (what the sliced model must
    // compute, with its zero-width FFN; the GGUF pads that one).
    let want = gated_logits(&files, &mask, &ids);
    let hf = d.path().join("hf");
    ddp::io::export::write_hf_dir(&hf, c, &sliced.tensors, files.tokenizer.as_ref()).unwrap();
    let diff = max_abs_diff(&logits(&model(&open_model(&hf).unwrap()), &ids), &want);
    assert!(
        diff <= 1e-4,
        "the sliced directory's logits differ by {diff}"
    );

    let out = write(d.path(), &files, c, &sliced.tensors, GgmlType::F32);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(meta(&f, "general.architecture"), &Value::Str("deci".into()));
    let arr =
        |k: &str| -> Vec<Value> { meta(&f, &format!("deci.{k}")).as_array().unwrap().to_vec() };
    let ints = |v: Vec<usize>| {
        v.into_iter()
            .map(|x| Value::I32(x as i32))
            .collect::<Vec<_>>()
    };
    assert_eq!(arr("attention.head_count"), ints(vec![6, 0, 2, 8, 4]));
    assert_eq!(arr("attention.head_count_kv"), ints(vec![3, 0, 1, 4, 2]));
    assert_eq!(
        arr("feed_forward_length"),
        ints(vec![150, 100, EMPTY_FFN_WIDTH, 60, 172])
    );
    for k in [
        "attention.key_length",
        "attention.value_length",
        "rope.dimension_count",
    ] {
        assert_eq!(meta(&f, &format!("deci.{k}")), &Value::U32(8), "deci.{k}");
    }
    for k in [
        "vocab_size",
        "context_length",
        "embedding_length",
        "block_count",
    ] {
        assert!(f.get(&format!("deci.{k}")).is_some(), "deci.{k}");
    }
    assert_eq!(meta(&f, "ddp.pruned"), &Value::Bool(true));
    // The headless layer has no attention tensors (llama.cpp's deci reads none).
    assert!(!f.tensors.contains_key("blk.1.attn_q.weight"));
    assert!(!f.tensors.contains_key("blk.1.attn_norm.weight"));
    assert_eq!(f.tensors["blk.0.attn_q.weight"].ne, vec![64, 48]);

    let back = open_model(&out).unwrap();
    let mut expect: Vec<LayerShape> = shapes.clone();
    expect[2].intermediate_size = EMPTY_FFN_WIDTH;
    assert_eq!(back.config.layer_shapes.as_ref(), Some(&expect));
    let diff = max_abs_diff(&logits(&model(&back), &ids), &want);
    eprintln!("deci F32 against the gated model: {diff}");
    assert!(diff <= 1e-4, "per-layer GGUF logits differ by {diff}");
    // Q8_0 of the same model: close.
    let q8 = open_model(&write(d.path(), &files, c, &sliced.tensors, GgmlType::Q8_0)).unwrap();
    let diff = max_abs_diff(&logits(&model(&q8), &ids), &want);
    eprintln!("deci Q8_0 against the gated model: {diff}");
    assert!(diff <= 1.0, "per-layer Q8_0 logits differ by {diff}");
}

fn stories_texts() -> Vec<String> {
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/token_texts.json")).unwrap(),
    )
    .unwrap();
    vec![
        j["stories260k"]["text"].as_str().unwrap().to_string(),
        "Tim and Sue went to the park.\nThey saw 3 dogs!".into(),
    ]
}

#[test]
fn tokenizer_round_trips_from_a_gguf_source() {
    let files = fixture("stories260k.gguf");
    let d = tempfile::tempdir().unwrap();
    let out = write(
        d.path(),
        &files,
        &files.config,
        &all_tensors(&files),
        GgmlType::F32,
    );
    let (src, ours) = (
        GgufFile::open(&files.path).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    let keys = |f: &GgufFile| -> Vec<(String, Value)> {
        f.metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(keys(&ours), keys(&src), "tokenizer.* copied verbatim");
    let back = open_model(&out).unwrap();
    for text in stories_texts() {
        let (a, b) = (back.tokenizer().unwrap(), files.tokenizer().unwrap());
        assert_eq!(
            a.encode(&text, true).unwrap(),
            b.encode(&text, true).unwrap()
        );
    }
}

#[test]
fn tokenizer_round_trips_from_an_hf_directory() {
    let files = fixture("stories260k");
    let d = tempfile::tempdir().unwrap();
    let out = write(
        d.path(),
        &files,
        &files.config,
        &all_tensors(&files),
        GgmlType::F32,
    );
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        meta(&f, "tokenizer.ggml.model"),
        &Value::Str("llama".into())
    );
    assert_eq!(meta(&f, "tokenizer.ggml.bos_token_id"), &Value::U32(1));
    assert_eq!(meta(&f, "tokenizer.ggml.add_bos_token"), &Value::Bool(true));
    let back = open_model(&out).unwrap();
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/token_texts.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<u32> = serde_json::from_value(j["stories260k"]["ids"].clone()).unwrap();
    let text = j["stories260k"]["text"].as_str().unwrap();
    assert_eq!(back.tokenizer().unwrap().encode(text, true).unwrap(), want);
    for text in stories_texts() {
        let (a, b) = (back.tokenizer().unwrap(), files.tokenizer().unwrap());
        assert_eq!(
            a.encode(&text, true).unwrap(),
            b.encode(&text, true).unwrap()
        );
    }
}

/// A byte-level BPE (SmolLM2's, through an HF directory ddp wrote) with a chat template in
/// tokenizer_config.json: `gpt2` with pre `smollm`, the template carried over, same ids.
#[test]
fn byte_level_tokenizer_and_chat_template_from_an_hf_directory() {
    let smol = open(SMOLLM2);
    let tok = smol.tokenizer().unwrap();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tok.inner.to_string(false).unwrap(),
    )
    .unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}";
    let cfg = serde_json::json!({"chat_template": template, "pad_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    // The directory's tokenizer as ddp opens it (its tokenizer_config.json in `meta`).
    let hf_tok = ddp::io::tokenizer::Tokenizer::from_file(
        &dir.join("tokenizer.json"),
        tok.bos_id,
        tok.eos_id,
    )
    .unwrap();
    let m = gguf_vocab::from_hf_dir(&dir, smol.config.vocab_size, &hf_tok).unwrap();
    let get =
        |m: &[(String, Value)], k: &str| m.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    assert_eq!(
        get(&m, "tokenizer.ggml.model"),
        Some(Value::Str("gpt2".into()))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.pre"),
        Some(Value::Str("smollm".into()))
    );
    assert_eq!(
        get(&m, "tokenizer.chat_template"),
        Some(Value::Str(template.into()))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.padding_token_id"),
        Some(Value::U32(2))
    );
    // Into a tiny model's GGUF (the tokenizer is what is tested), checked against the source.
    let mut cfg = tiny::config(Arch::Llama, 2, 1);
    cfg.vocab_size = smol.config.vocab_size;
    cfg.bos_token_id = tok.bos_id;
    cfg.eos_token_id = tok.eos_id;
    let w = tiny::random_weights(&cfg, 1);
    let opts = GgufOptions {
        ty: GgmlType::F32,
        name: "tiny".into(),
        tokenizer: m,
        check_tokenizer: Some(tok),
        extra: vec![],
    };
    let out = d.path().join("tiny.gguf");
    write_gguf(&out, &cfg, &w.map, &opts).unwrap();
    let back = open_model(&out).unwrap();
    let text = "Hello world! 12345 naïve café\n\n  indented — 東京";
    assert_eq!(
        back.tokenizer().unwrap().encode(text, true).unwrap(),
        tok.encode(text, true).unwrap()
    );
}

#[test]
fn what_cannot_be_written_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.gguf");
    let opts = |tokenizer| GgufOptions {
        ty: GgmlType::F32,
        name: "x".into(),
        tokenizer,
        check_tokenizer: None,
        extra: vec![],
    };
    let tok = vec![(
        "tokenizer.ggml.model".to_string(),
        Value::Str("llama".into()),
    )];
    let err = |cfg: &ddp::model::ModelConfig, w: &BTreeMap<String, HostTensor>, o: &GgufOptions| {
        write_gguf(&out, cfg, w, o).unwrap_err().to_string()
    };
    let moe = tiny::config(Arch::Qwen2Moe, 2, 1);
    let e = err(&moe, &tiny::random_weights(&moe, 1).map, &opts(tok.clone()));
    assert!(e.contains("routed experts"), "{e}");
    // Per-layer widths of an architecture deci cannot hold (q/k norms).
    let mut q = tiny::config(Arch::Qwen3, 4, 2);
    let w = tiny::random_weights(&q, 1);
    q.layer_shapes = Some(vec![q.layer(0); 2]);
    let e = err(&q, &w.map, &opts(tok.clone()));
    assert!(e.contains("deci") && e.contains("qwen3"), "{e}");
    // llama.cpp's qwen2 needs as many query rows as the hidden size (4 heads of 8 != 16).
    let q = tiny::config(Arch::Qwen2, 4, 2);
    let e = err(&q, &tiny::random_weights(&q, 1).map, &opts(tok.clone()));
    assert!(e.contains("qwen2") && e.contains("16 query rows"), "{e}");
    let l = tiny::config(Arch::Llama, 2, 1);
    let e = err(&l, &tiny::random_weights(&l, 1).map, &opts(vec![]));
    assert!(e.contains("without a tokenizer"), "{e}");
    let e = write_gguf(
        &out,
        &l,
        &tiny::random_weights(&l, 1).map,
        &GgufOptions {
            ty: GgmlType::Q4K,
            ..opts(tok.clone())
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Q4_K") && e.contains("q8_0"), "{e}");
    let mut w = tiny::random_weights(&l, 1).map;
    w.insert(
        "model.layers.0.mlp.extra.weight".into(),
        HostTensor::new(vec![1], vec![0.0]),
    );
    let e = err(&l, &w, &opts(tok));
    assert!(e.contains("model.layers.0.mlp.extra.weight"), "{e}");
    assert!(!out.exists() && !d.path().join("x.gguf.part").exists());
}

#[test]
fn convert_command_writes_a_gguf() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("s.gguf");
    let src = fixtures().join("stories260k");
    let (ok, stdout, stderr) = ddp_run(&[
        "convert",
        "--to",
        "gguf",
        "--type",
        "q8_0",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(meta(&f, "general.file_type"), &Value::U32(7));
    let (ok, stdout, stderr) = ddp_run(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, _, stderr) = ddp_run(&[
        "convert",
        "--to",
        "gguf",
        "--type",
        "q5_k",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("q4_0"), "{stderr}");
}

const GGUF_PY: &str = r#"
import json, sys
import numpy as np
import gguf
out = {}
for path in sys.argv[2:]:
    r = gguf.GGUFReader(path)
    fields = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        types = [gguf.GGUFValueType(t).name for t in f.types]
        v = f.contents()
        fields[k] = [types, v if not k.startswith("tokenizer.ggml.") else None]
    tensors = {t.name: [t.tensor_type.name, [int(x) for x in t.shape]] for t in r.tensors}
    out[path] = {"fields": fields, "tensors": tensors}
# ggml's reference quantisers (gguf-py's numpy port) on the given f32 values.
x = np.fromfile(sys.argv[1], dtype="<f4").reshape(-1, 64)
q = {}
for name in ["Q8_0", "Q4_0", "F16"]:
    t = gguf.GGMLQuantizationType[name]
    q[name] = bytes(gguf.quants.quantize(x, t)).hex()
out["quantized"] = q
print(json.dumps(out))
"#;

/// llama.cpp's gguf-py parses ddp's files (uniform and deci), and its quantisers give the very
/// bytes ddp's do. Skipped without the test venv.
#[test]
fn gguf_py_reads_the_files_and_agrees_on_quantisation() {
    let py = Path::new("/work/torchenv/bin/python");
    if !py.exists() {
        eprintln!("skipping the gguf-py check: {} is absent", py.display());
        return;
    }
    let files = fixture("stories260k");
    let d = tempfile::tempdir().unwrap();
    let uniform = write(
        d.path(),
        &files,
        &files.config,
        &all_tensors(&files),
        GgmlType::Q8_0,
    );
    let sliced = slice::slice(
        &files.config,
        files.weights.as_ref(),
        &per_layer_mask(),
        false,
        1,
    )
    .unwrap();
    let deci_dir = d.path().join("deci");
    std::fs::create_dir_all(&deci_dir).unwrap();
    let deci = write(
        &deci_dir,
        &files,
        &sliced.config,
        &sliced.tensors,
        GgmlType::F32,
    );
    // Values with ties, zeros, a constant block and outliers.
    let x: Vec<f32> = (0..64 * 8)
        .map(|i| match i / 64 {
            0 => 0.0,
            1 => 0.25,
            _ => ((i * 7919 % 1000) as f32 - 500.0) / 37.0 * if i % 97 == 0 { 40.0 } else { 1.0 },
        })
        .collect();
    let raw = d.path().join("x.f32");
    std::fs::write(&raw, bytemuck::cast_slice::<f32, u8>(&x)).unwrap();
    let script = d.path().join("check.py");
    std::fs::write(&script, GGUF_PY).unwrap();
    let run = std::process::Command::new(py)
        .arg(&script)
        .args([&raw, &uniform, &deci])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    if stderr.contains("No module named 'gguf'") {
        eprintln!("skipping the gguf-py check: the venv has no gguf package");
        return;
    }
    assert!(run.status.success(), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    for (name, ty) in [
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_0", GgmlType::Q4_0),
        ("F16", GgmlType::F16),
    ] {
        let ours: String = quants::quantize(ty, &x)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(j["quantized"][name].as_str().unwrap(), ours, "{name}");
    }
    let u = &j[uniform.to_str().unwrap()];
    assert_eq!(u["fields"]["general.architecture"][1], "llama");
    assert_eq!(u["fields"]["llama.block_count"][0][0], "UINT32");
    assert_eq!(
        u["tensors"]["blk.0.attn_q.weight"],
        serde_json::json!(["Q8_0", [64, 64]])
    );
    assert_eq!(u["tensors"]["blk.0.attn_norm.weight"][0], "F32");
    let k = &j[deci.to_str().unwrap()];
    assert_eq!(k["fields"]["general.architecture"][1], "deci");
    assert_eq!(
        k["fields"]["deci.attention.head_count"],
        serde_json::json!([["ARRAY", "INT32"], [6, 0, 2, 8, 4]])
    );
    assert_eq!(
        k["fields"]["deci.feed_forward_length"][1],
        serde_json::json!([150, 100, EMPTY_FFN_WIDTH, 60, 172])
    );
    assert_eq!(
        k["tensors"]["blk.0.attn_k.weight"],
        serde_json::json!(["F32", [64, 24]])
    );
}

/// A 40-token sentencepiece vocabulary for the tiny models (`<unk>`, `<s>`, `</s>`, 37 pieces).
fn tiny_tokenizer() -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend(
        "▁abcdefghijklmnopqrstuvwxyz0123456789"
            .chars()
            .map(String::from),
    );
    let types = (0..40).map(|i| Value::I32([2, 3, 3].get(i).copied().unwrap_or(1)));
    vec![
        ("tokenizer.ggml.model".into(), Value::Str("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::Str).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(vec![Value::F32(0.0); 40]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ]
}

/// Tiny random models of each architecture written uniformly: qwen2 (biases, no permutation),
/// qwen3 (q/k norms), llama with tied embeddings (no output.weight) and llama3 RoPE scaling
/// (written as rope_freqs.weight, as the converter computes it) or linear scaling: each reads
/// back with the in-memory model's logits.
#[test]
fn tiny_architectures_read_back_with_the_same_logits() {
    use burn::backend::ndarray::NdArrayDevice;
    let d = tempfile::tempdir().unwrap();
    let ids: Vec<i64> = (0..24).map(|i| (i * 7 % 40) as i64).collect();
    let mut llama3 = tiny::config(Arch::Llama, 4, 2);
    llama3.tie_word_embeddings = true;
    llama3.rope_scaling = Some(tiny::llama3_scaling());
    let mut linear = tiny::config(Arch::Llama, 2, 2);
    linear.rope_scaling = Some(ddp::model::config::RopeScaling::Linear { factor: 2.0 });
    let cases = [
        (tiny::config(Arch::Qwen2, 2, 1), "qwen2"),
        (tiny::config(Arch::Qwen3, 4, 2), "qwen3"),
        (llama3, "llama"),
        (linear, "llama"),
    ];
    for (k, (mut cfg, arch)) in cases.into_iter().enumerate() {
        cfg.bos_token_id = Some(1);
        cfg.eos_token_id = Some(2);
        let w = tiny::random_weights(&cfg, k as u64);
        let opts = GgufOptions {
            ty: GgmlType::F32,
            name: arch.into(),
            tokenizer: tiny_tokenizer(),
            check_tokenizer: None,
            extra: vec![],
        };
        let out = d.path().join(format!("{k}.gguf"));
        write_gguf(&out, &cfg, &w.map, &opts).unwrap();
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(meta(&f, "general.architecture"), &Value::Str(arch.into()));
        assert_eq!(
            f.tensors.contains_key("output.weight"),
            !cfg.tie_word_embeddings
        );
        let back = open_model(&out).unwrap();
        let want = ddp::model::load::load_model::<B>(&cfg, &w, &NdArrayDevice::Cpu, None).unwrap();
        let diff = max_abs_diff(&logits(&model(&back), &ids), &logits(&want, &ids));
        assert!(diff <= 1e-5, "{arch} #{k}: logits differ by {diff}");
        match &cfg.rope_scaling {
            Some(ddp::model::config::RopeScaling::Llama3 { .. }) => {
                assert!(f.tensors.contains_key("rope_freqs.weight"))
            }
            Some(_) => assert_eq!(
                meta(&f, "llama.rope.scaling.type"),
                &Value::Str("linear".into())
            ),
            None => assert_eq!(back.config, cfg),
        }
    }
}
