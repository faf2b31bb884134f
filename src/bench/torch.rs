//! The PyTorch eager side of `ddp-run bench --torch`: runs `torch_eager.py` (transformers) on a
//! Hugging Face directory with the same protocol, so both figures come from one command.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use super::{Stats, Throughput};
use crate::error::{Error, Result};

const SCRIPT: &str = include_str!("torch_eager.py");

/// `Ok(Err(reason))` when torch or transformers is not installed.
pub fn throughput(
    hf_dir: &Path,
    batch: usize,
    prompt_len: usize,
    decode_tokens: usize,
    warmup: usize,
    repeats: usize,
) -> Result<std::result::Result<(Throughput, String), String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args = json!({"dir": hf_dir, "batch": batch, "prompt_len": prompt_len, "decode_tokens": decode_tokens,
                      "warmup": warmup, "repeats": repeats, "threads": threads});
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &args.to_string()])
        .output()
        .map_err(|e| {
            Error::Invalid(format!(
                "could not run python3 for the PyTorch comparison: {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "the PyTorch benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .map_err(|e| Error::Invalid(format!("unreadable PyTorch benchmark output: {e}")))?;
    if let Some(why) = v.get("unavailable").and_then(Value::as_str) {
        return Ok(Err(why.to_string()));
    }
    let list = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    Ok(Ok((
        Throughput {
            batch,
            prompt_len,
            decode_tokens,
            repeats,
            prefill_tok_s: Stats::of(list("prefill")),
            decode_tok_s: Stats::of(list("decode")),
        },
        format!(
            "torch {} eager, {} threads",
            v["torch"].as_str().unwrap_or("?"),
            v["threads"]
        ),
    )))
}
