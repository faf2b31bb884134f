//! Weight-file variants: sharded safetensors, F16/BF16 tensors, GGUF version 2.

use crate::common::*;

use std::collections::BTreeMap;
use std::fs;

use ddp::io::export;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};

#[test]
fn sharded_safetensors_load_like_a_single_file() {
    let reference = fixture("stories260k");
    let tensors = export::read_all(reference.weights.as_ref()).unwrap();
    let d = tempfile::tempdir().unwrap();
    export::write_hf_dir_sharded(
        d.path(),
        &reference.config,
        &tensors,
        reference.tokenizer.as_ref(),
        300_000,
    )
    .unwrap();
    assert!(d.path().join("model.safetensors.index.json").exists());
    assert!(!d.path().join("model.safetensors").exists());
    let shards = fs::read_dir(d.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("model-")
        })
        .count();
    assert!(shards >= 3, "{shards} shards");
    let sharded = ddp::io::open_model(d.path()).unwrap();
    let (ids, want, _) = golden("stories260k.safetensors");
    assert!(max_abs_diff(&logits(&model(&sharded), &ids), &want) <= 1e-4);
}

fn write_converted(dtype: Dtype) -> (tempfile::TempDir, BTreeMap<String, Vec<f32>>) {
    let reference = fixture("stories260k");
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        fs::copy(fixtures().join("stories260k").join(f), d.path().join(f)).unwrap();
    }
    let mut bytes: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut rounded = BTreeMap::new();
    for name in reference.weights.names() {
        let t = reference.weights.load(&name).unwrap();
        let (b, r): (Vec<u8>, Vec<f32>) = match dtype {
            Dtype::F16 => (
                t.data
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
                t.data.iter().map(|x| f16::from_f32(*x).to_f32()).collect(),
            ),
            _ => (
                t.data
                    .iter()
                    .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                t.data.iter().map(|x| bf16::from_f32(*x).to_f32()).collect(),
            ),
        };
        bytes.insert(name.clone(), (t.shape.clone(), b));
        rounded.insert(name, r);
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, (s, b))| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &d.path().join("model.safetensors")).unwrap();
    (d, rounded)
}

#[test]
fn f16_and_bf16_weights_load_exactly() {
    for dtype in [Dtype::F16, Dtype::BF16] {
        let (d, rounded) = write_converted(dtype);
        let m = ddp::io::open_model(d.path()).unwrap();
        assert_eq!(m.weights.dtype_summary(), format!("{dtype:?}"));
        for (name, want) in &rounded {
            assert_eq!(
                &m.weights.load(name).unwrap().data,
                want,
                "{dtype:?} {name}"
            );
        }
        // Half precision keeps the model's predictions.
        let (ids, golden_logits, shape) = golden("stories260k.safetensors");
        let got = logits(&model(&m), &ids);
        let agree = argmax_rows(&got, shape[2])
            .iter()
            .zip(argmax_rows(&golden_logits, shape[2]))
            .filter(|(a, b)| **a == *b)
            .count();
        assert!(agree >= 60, "{dtype:?}: argmax agrees on {agree}/64");
    }
}

#[test]
fn gguf_version_2_reads_like_version_3() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v2.gguf");
    let mut b = fs::read(fixtures().join("stories260k.gguf")).unwrap();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&p, b).unwrap();
    let m = ddp::io::open_model(&p).unwrap();
    let (ids, want, _) = golden("stories260k.safetensors");
    assert!(max_abs_diff(&logits(&model(&m), &ids), &want) <= 1e-4);
    let mut b = fs::read(&p).unwrap();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    fs::write(&p, b).unwrap();
    let e = ddp::io::open_model(&p).err().unwrap().to_string();
    assert!(e.contains("GGUF version 1 is not supported"), "{e}");
}

#[test]
fn model_sources_parse_with_clear_errors() {
    use ddp::io::source::Source;
    assert_eq!(
        Source::parse("hf:meta-llama/Llama-2-7b-hf@main").unwrap(),
        Source::Hf {
            repo: "meta-llama/Llama-2-7b-hf".into(),
            revision: Some("main".into())
        }
    );
    assert!(Source::parse("hf:justaname")
        .unwrap_err()
        .to_string()
        .contains("hf:ORG/NAME"));
    assert!(Source::parse("pip:pkg==1.0:")
        .unwrap_err()
        .to_string()
        .contains("PATH/INSIDE/WHEEL"));
    assert!(matches!(
        Source::parse("./models/x").unwrap(),
        Source::Local(_)
    ));
}
