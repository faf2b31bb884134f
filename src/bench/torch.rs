//! The PyTorch eager side of `ddp-run bench --torch`: runs `torch_eager.py` (transformers) on a
//! Hugging Face directory with the same protocol, so both figures come from one command.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use super::{Stats, Throughput};
use crate::error::{Error, Result};

const SCRIPT: &str = include_str!("torch_eager.py");

/// A Hugging Face directory of the model for transformers: its own, or a GGUF exported into a
/// temporary one (kept while the returned guard lives).
pub fn hf_dir(
    files: &crate::io::ModelFiles,
) -> Result<(Option<tempfile::TempDir>, std::path::PathBuf)> {
    if files.format == "safetensors" {
        return Ok((None, files.path.clone()));
    }
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let tensors = crate::io::export::read_all(files.weights.as_ref())?;
    crate::io::export::write_hf_dir(
        tmp.path(),
        &files.config,
        &tensors,
        files.tokenizer.as_ref(),
    )?;
    let dir = tmp.path().to_path_buf();
    Ok((Some(tmp), dir))
}

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

const TRAIN_SCRIPT: &str = include_str!("torch_train.py");

/// The PyTorch side of `ddp-run bench --train --torch`: `torch_train.py` kept running so that
/// its steps can alternate with ours.
pub struct TorchTrainer {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    /// e.g. "torch 2.9.0, 2 threads".
    pub label: String,
}

impl TorchTrainer {
    /// Starts the script on a Hugging Face directory; `Ok(Err(reason))` when torch or
    /// transformers is not installed.
    pub fn start(
        hf_dir: &Path,
        p: &super::train::TrainProtocol,
    ) -> Result<std::result::Result<Self, String>> {
        use std::process::Stdio;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let args = json!({"dir": hf_dir, "batch": p.batch, "seq_len": p.seq_len,
                          "teacher": p.teacher, "topk": p.topk, "threads": threads});
        let mut child = Command::new("python3")
            .args(["-c", TRAIN_SCRIPT, &args.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Invalid(format!(
                    "could not run python3 for the PyTorch comparison: {e}"
                ))
            })?;
        let out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut t = Self {
            child,
            out,
            label: String::new(),
        };
        let v = t.line()?;
        if let Some(why) = v.get("unavailable").and_then(Value::as_str) {
            return Ok(Err(why.to_string()));
        }
        t.label = format!(
            "torch {}, {} threads",
            v["torch"].as_str().unwrap_or("?"),
            v["threads"]
        );
        Ok(Ok(t))
    }

    fn line(&mut self) -> Result<Value> {
        use std::io::BufRead;
        let mut s = String::new();
        self.out
            .read_line(&mut s)
            .map_err(|e| Error::Invalid(format!("reading the PyTorch trainer's output: {e}")))?;
        if s.trim().is_empty() {
            return Err(Error::Invalid(
                "the PyTorch trainer stopped (its error is printed above)".into(),
            ));
        }
        serde_json::from_str(&s)
            .map_err(|e| Error::Invalid(format!("unreadable PyTorch trainer output: {e}")))
    }

    /// Runs `n` steps; their phase times.
    pub fn steps(&mut self, n: usize) -> Result<Vec<crate::prune::train::StepTime>> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{}", json!({ "steps": n }))
            .and_then(|_| stdin.flush())
            .map_err(|e| Error::Invalid(format!("the PyTorch trainer stopped: {e}")))?;
        let v = self.line()?;
        let steps = v["steps"].as_array().cloned().unwrap_or_default();
        Ok(steps
            .iter()
            .map(|s| {
                let f = |i: usize| s[i].as_f64().unwrap_or(f64::NAN);
                crate::prune::train::StepTime {
                    teacher: f(0),
                    student: f(1),
                    backward: f(2),
                    update: f(3),
                }
            })
            .collect())
    }
}

impl Drop for TorchTrainer {
    fn drop(&mut self) {
        // Closing stdin ends the script's loop.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
