//! Text corpora -> token blocks for calibration, training and evaluation.
//!
//! Sources: a file, a directory (every `.txt` file, walked in name order), a glob-like
//! `dir/*.txt` pattern, or a JSONL file whose lines carry a `text` field. Documents are
//! tokenised without special tokens, joined with the tokenizer's conventions (BOS before each
//! document when the model adds one, EOS after it when it has one), and cut into blocks of
//! `seq_len` tokens. The split into train and validation blocks is deterministic: every
//! `1/val_fraction`-th block goes to validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use walkdir::WalkDir;

use crate::error::{Error, Result};
use crate::io::tokenizer::Tokenizer;

/// Resolves registry sources (`npm:PACKAGE@VERSION[:PATH]`) to local paths; others pass.
pub fn resolve(spec: &str, cache: &Path) -> Result<String> {
    if spec.starts_with("npm:") {
        crate::io::source::fetch_npm(spec, cache)
    } else {
        Ok(spec.to_string())
    }
}

/// The files a text source names, in a stable order.
pub fn source_files(spec: &str) -> Result<Vec<PathBuf>> {
    let bad = |what: String| Error::Source {
        spec: spec.into(),
        what,
    };
    let (dir, ext) = match spec.split_once("/*") {
        Some((d, e)) => (
            PathBuf::from(d),
            Some(e.trim_start_matches('.').to_string()),
        ),
        None => (PathBuf::from(spec), None),
    };
    if ext.is_none() && dir.is_file() {
        return Ok(vec![dir]);
    }
    if !dir.is_dir() {
        return Err(bad("no such file or directory (expected a text file, a directory, DIR/*.EXT or a .jsonl file)".into()));
    }
    let want = ext.unwrap_or_else(|| "txt".into());
    let files: Vec<PathBuf> = WalkDir::new(&dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|x| x.to_string_lossy() == want))
        .collect();
    if files.is_empty() {
        return Err(bad(format!("no .{want} files under {}", dir.display())));
    }
    Ok(files)
}

/// The documents of a file: the whole text, or the `text` field of each JSONL line.
pub fn documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|x| x == "json") {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::bad_file(path, "expected a string field `text`"))?;
        return Ok(vec![t.to_string()]);
    }
    if path.extension().is_some_and(|x| x == "jsonl") {
        let mut docs = vec![];
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::bad_file(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
            let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("line {}: expected a string field `text`", i + 1),
                )
            })?;
            docs.push(t.to_string());
        }
        Ok(docs)
    } else {
        Ok(vec![text])
    }
}

/// Token blocks of one length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Blocks {
    pub seq_len: usize,
    pub train: Vec<Vec<u32>>,
    pub validation: Vec<Vec<u32>>,
    /// Tokens read before the cap (for the record).
    pub tokens_seen: usize,
}

/// Tokenises the source and cuts it into blocks (at most `max_tokens` tokens in all).
pub fn blocks(
    spec: &str,
    tok: &Tokenizer,
    seq_len: usize,
    max_tokens: usize,
    val_every: usize,
) -> Result<Blocks> {
    if seq_len < 2 {
        return Err(Error::Invalid(format!(
            "seq_len {seq_len} is too short (need at least 2 tokens)"
        )));
    }
    let mut stream: Vec<u32> = vec![];
    'files: for f in source_files(spec)? {
        for doc in documents(&f)? {
            if tok.add_bos {
                stream.extend(tok.bos_id);
            }
            stream.extend(tok.encode(&doc, false)?);
            stream.extend(tok.eos_id);
            if stream.len() >= max_tokens {
                break 'files;
            }
        }
    }
    let tokens_seen = stream.len();
    stream.truncate(max_tokens);
    let mut train = vec![];
    let mut validation = vec![];
    for (i, b) in stream.chunks_exact(seq_len).enumerate() {
        if val_every > 0 && i % val_every == val_every - 1 {
            validation.push(b.to_vec());
        } else {
            train.push(b.to_vec());
        }
    }
    if train.is_empty() {
        return Err(Error::Source {
            spec: spec.into(),
            what: format!(
                "only {} tokens: not one training block of {seq_len}",
                stream.len()
            ),
        });
    }
    Ok(Blocks {
        seq_len,
        train,
        validation,
        tokens_seen,
    })
}
