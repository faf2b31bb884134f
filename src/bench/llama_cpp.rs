//! The llama.cpp side of `ddp-run bench --llama-cpp DIR`: `llama-bench` on the same weights as
//! an F32 GGUF (`llama-quantize --allow-requantize ... F32` dequantizes a GGUF source exactly as
//! ddp's loader does), one repeat after each of ddp's so both engines see the same machine.
//! Decode is measured at the prompt's depth (`-d`), as ddp decodes after its prompt.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{Stats, Throughput};
use crate::error::{Error, Result};

/// A llama.cpp build's tool: `DIR/NAME` or `DIR/bin/NAME` (a cmake build directory).
fn tool(dir: &Path, name: &str) -> Result<PathBuf> {
    [dir.join(name), dir.join("bin").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "--llama-cpp {}: no {name} there or in its bin/ (pass llama.cpp's build directory)",
                dir.display()
            ))
        })
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::Invalid(format!("could not run {what}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Invalid(format!(
            "{what} failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// llama-bench kept ready on an F32 copy of the model, collecting one sample per call.
pub struct LlamaBench {
    bench: PathBuf,
    gguf: PathBuf,
    _tmp: tempfile::TempDir,
    threads: usize,
    prompt_len: usize,
    decode_tokens: usize,
    prefill: Vec<f64>,
    decode: Vec<f64>,
    /// e.g. "llama.cpp 7241 (abc1234), F32, 2 threads".
    pub label: String,
}

impl LlamaBench {
    /// Converts `files` (a GGUF) to F32 with the build's llama-quantize. llama-bench runs one
    /// sequence, so only batch 1 is comparable.
    pub fn new(
        dir: &Path,
        files: &crate::io::ModelFiles,
        batch: usize,
        prompt_len: usize,
        decode_tokens: usize,
    ) -> Result<Self> {
        if batch != 1 {
            return Err(Error::Invalid(format!(
                "--llama-cpp: llama-bench decodes one sequence; use --batch 1 (got {batch})"
            )));
        }
        if files.format != "gguf" {
            return Err(Error::Invalid(format!(
                "--llama-cpp: {} is a {} model, and llama.cpp reads GGUF; convert it with llama.cpp's convert_hf_to_gguf.py and pass the .gguf",
                files.path.display(),
                files.format
            )));
        }
        let bench = tool(dir, "llama-bench")?;
        let quantize = tool(dir, "llama-quantize")?;
        let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let gguf = tmp.path().join("model-f32.gguf");
        run(
            Command::new(&quantize)
                .arg("--allow-requantize")
                .arg(&files.path)
                .arg(&gguf)
                .arg("F32"),
            "llama-quantize",
        )?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            bench,
            gguf,
            _tmp: tmp,
            threads,
            prompt_len,
            decode_tokens,
            prefill: Vec::new(),
            decode: Vec::new(),
            label: format!("llama.cpp F32, {threads} threads"),
        })
    }

    /// One llama-bench test (`-r 1`): its tokens/s and the build it reports.
    fn once(&self, prompt: usize, gen: usize, depth: usize) -> Result<(f64, String)> {
        let n = |v: usize| v.to_string();
        let out = run(
            Command::new(&self.bench)
                .arg("-m")
                .arg(&self.gguf)
                .args(["-p", &n(prompt), "-n", &n(gen), "-d", &n(depth)])
                .args(["-t", &n(self.threads), "-r", "1", "-o", "json"]),
            "llama-bench",
        )?;
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| Error::Invalid(format!("unreadable llama-bench output: {e}")))?;
        let test = v
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| Error::Invalid("llama-bench printed no test result".to_string()))?;
        let ts = test["samples_ts"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::Invalid("llama-bench result without samples_ts".into()))?;
        let build = format!(
            "{} ({})",
            test["build_number"],
            test["build_commit"].as_str().unwrap_or("?")
        );
        Ok((ts, build))
    }

    /// One prefill and (with decode tokens) one decode sample.
    pub fn sample(&mut self) -> Result<()> {
        let (pf, build) = self.once(self.prompt_len, 0, 0)?;
        self.prefill.push(pf);
        if self.decode_tokens > 0 {
            let (dc, _) = self.once(0, self.decode_tokens, self.prompt_len)?;
            self.decode.push(dc);
        }
        self.label = format!("llama.cpp {build} F32, {} threads", self.threads);
        Ok(())
    }

    /// The samples so far as a [`Throughput`] (`None` before the first).
    pub fn throughput(&self) -> Option<Throughput> {
        (!self.prefill.is_empty()).then(|| Throughput {
            batch: 1,
            prompt_len: self.prompt_len,
            decode_tokens: self.decode_tokens,
            repeats: self.prefill.len(),
            prefill_tok_s: Stats::of(self.prefill.clone()),
            decode_tok_s: Stats::of(if self.decode.is_empty() {
                vec![0.0]
            } else {
                self.decode.clone()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory without the tools is named in the error, with the tool it lacks; a build
    /// directory's bin/ is found.
    #[test]
    fn finds_tools_or_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = tool(dir.path(), "llama-bench").unwrap_err().to_string();
        assert!(err.contains("llama-bench"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/llama-bench"), b"").unwrap();
        assert_eq!(
            tool(dir.path(), "llama-bench").unwrap(),
            dir.path().join("bin/llama-bench")
        );
    }
}
