//! `ddp-run bench` on one model: ddp's prefill and decode throughput, with PyTorch eager and
//! llama.cpp on the same weights and protocol beside it when asked (llama.cpp sampled after
//! each of ddp's timed runs, so the two alternate).

use std::path::Path;

use burn::tensor::backend::Backend;
use indicatif::ProgressBar;

use super::llama_cpp::LlamaBench;
use super::{ratio_lines, throughput, Throughput};
use crate::backend::{build_info, run_on, BackendTask, DeviceSpec};
use crate::error::Result;
use crate::io::ModelFiles;

/// What to measure.
#[derive(Debug, Clone)]
pub struct DenseProtocol {
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// Tokens generated with the KV cache after the prompt.
    pub decode_tokens: usize,
    /// Sequences at once.
    pub batch: usize,
    /// Timed runs.
    pub repeats: usize,
    /// Untimed runs first.
    pub warmup: usize,
}

/// ddp's figures and the peers'.
#[derive(Debug)]
pub struct DenseReport {
    /// ddp on the chosen device.
    pub ddp: Throughput,
    /// The device and build, as the table's first row names it.
    pub label: String,
    /// PyTorch eager: figures and their label, or why it was skipped; `None` if not asked.
    pub torch: Option<std::result::Result<(Throughput, String), String>>,
    /// llama.cpp's llama-bench: figures and label; `None` if not asked.
    pub llama: Option<(Throughput, String)>,
    /// The warm-up runs, for the protocol line.
    pub warmup: usize,
}

/// Measures `files` on `device`; with `torch`, PyTorch afterwards on the same protocol; with
/// `llama_cpp` (a llama.cpp build directory), llama-bench after each timed run of ddp's. `bar`
/// advances once per tensor loaded.
pub fn run(
    device: DeviceSpec,
    files: &ModelFiles,
    p: &DenseProtocol,
    torch: bool,
    llama_cpp: Option<&Path>,
    bar: &ProgressBar,
) -> Result<DenseReport> {
    let mut llama = llama_cpp
        .map(|dir| LlamaBench::new(dir, files, p.batch, p.prompt_len, p.decode_tokens))
        .transpose()?;
    let ddp = run_on(
        device,
        Task {
            files,
            p,
            llama: llama.as_mut(),
            bar,
        },
    )?;
    let torch = torch.then(|| torch_side(files, &ddp)).transpose()?;
    let llama = llama.and_then(|l| Some((l.throughput()?, l.label.clone())));
    Ok(DenseReport {
        ddp,
        label: format!("ddp {device} ({})", build_info()),
        torch,
        llama,
        warmup: p.warmup,
    })
}

/// Runs the PyTorch side on a HF directory (exporting a GGUF to a temporary one first).
fn torch_side(
    files: &ModelFiles,
    r: &Throughput,
) -> Result<std::result::Result<(Throughput, String), String>> {
    let (_tmp, dir) = super::torch::hf_dir(files)?;
    super::torch::throughput(&dir, r.batch, r.prompt_len, r.decode_tokens, 1, r.repeats)
}

struct Task<'a> {
    files: &'a ModelFiles,
    p: &'a DenseProtocol,
    /// Sampled after each of ddp's timed runs.
    llama: Option<&'a mut LlamaBench>,
    bar: &'a ProgressBar,
}

impl BackendTask for Task<'_> {
    type Output = Throughput;
    fn run<B: Backend>(self, device: B::Device) -> Result<Throughput> {
        let model = self.files.load::<B>(&device, Some(self.bar))?;
        self.bar.finish_and_clear();
        let (mut runs, mut failed) = (0, None);
        let mut llama = self.llama;
        let p = self.p;
        let t = throughput(
            &model,
            p.batch,
            p.prompt_len,
            p.decode_tokens,
            p.warmup,
            p.repeats,
            || {
                runs += 1;
                if let (Some(l), true, None) = (llama.as_mut(), runs > p.warmup, &failed) {
                    failed = l.sample().err();
                }
            },
        );
        failed.map_or(Ok(t), Err)
    }
}

impl DenseReport {
    /// The figures as `bench --json` writes them: `ddp`, `torch` and `llama_cpp` (null when
    /// not measured).
    pub fn json(&self) -> serde_json::Value {
        let torch = self.torch.as_ref().and_then(|x| x.as_ref().ok());
        serde_json::json!({
            "ddp": self.ddp,
            "torch": torch.map(|x| &x.0),
            "llama_cpp": self.llama.as_ref().map(|x| &x.0),
        })
    }

    /// The protocol line, the table (ddp first, then the peers) and each peer's ratio lines.
    pub fn markdown(&self) -> String {
        let r = &self.ddp;
        let mut out = format!(
            "protocol prefill {} tokens, then decode {} tokens with the KV cache; batch {}; {} runs after {} warm-up\n\n",
            r.prompt_len, r.decode_tokens, r.batch, r.repeats, self.warmup
        );
        out += "| engine | prefill tok/s (median [min, max]) | decode tok/s (median [min, max]) |\n|---|---|---|\n";
        let row = |name: &str, t: &Throughput| {
            format!(
                "| {name} | {:.1} [{:.1}, {:.1}] | {:.1} [{:.1}, {:.1}] |\n",
                t.prefill_tok_s.median,
                t.prefill_tok_s.min,
                t.prefill_tok_s.max,
                t.decode_tok_s.median,
                t.decode_tok_s.min,
                t.decode_tok_s.max
            )
        };
        out += &row(&self.label, r);
        let mut peers = Vec::new();
        if let Some(Ok((t, what))) = &self.torch {
            peers.push(("torch", what.as_str(), t));
        }
        if let Some((t, what)) = &self.llama {
            peers.push(("llama.cpp", what.as_str(), t));
        }
        for (_, what, t) in &peers {
            out += &row(what, t);
        }
        for (name, _, t) in &peers {
            out.push('\n');
            for line in ratio_lines(r, name, t) {
                out += &line;
                out.push('\n');
            }
        }
        if let Some(Err(why)) = &self.torch {
            out += &format!("\nPyTorch comparison skipped: {why}\n");
        }
        out
    }
}
