//! Reading models from disk: HF directories (config.json, safetensors, tokenizer.json) and GGUF
//! files, plus the sources they are fetched from; writing them as HF directories (`export`)
//! and GGUF files (`gguf_write`, tokenizer metadata in `gguf_vocab`).

pub mod dtype;
pub mod export;
pub mod gguf;
pub(crate) mod gguf_model;
pub mod gguf_vocab;
pub mod gguf_write;
pub(crate) mod hf_config;
pub mod hf_tokenizer;
pub mod model_card;
pub mod quants;
pub(crate) mod safetensors;
pub mod source;
pub mod summary;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use burn::tensor::backend::Backend;
use indicatif::ProgressBar;

use crate::model::config::ModelConfig;
use crate::model::load::load_model;
use crate::model::weights::WeightSource;
use crate::model::Model;
use tokenizer::Tokenizer;

/// A model on disk, opened: its config, its weights (not yet on a device) and its tokenizer.
pub struct ModelFiles {
    /// The architecture, from `config.json` or the GGUF metadata.
    pub config: ModelConfig,
    /// Read access to the tensors (HF names and layouts, whatever the format).
    pub weights: Box<dyn WeightSource>,
    /// `None` for an HF directory without `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// "safetensors" or "gguf".
    pub format: &'static str,
    /// The directory or `.gguf` file it was opened from.
    pub path: PathBuf,
}

impl ModelFiles {
    /// Loads the model onto `device` (the one way every stage and command does it), advancing
    /// `bar` by one per tensor when given.
    pub fn load<B: Backend>(
        &self,
        device: &B::Device,
        bar: Option<&ProgressBar>,
    ) -> Result<Model<B>> {
        load_model(&self.config, self.weights.as_ref(), device, bar)
    }

    /// The tokenizer, or an error naming the model that has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::bad_file(&self.path, "the model has no tokenizer"))
    }
}

/// Opens a model given as a path or a source spec (`pip:`, `hf:`), fetching it into the cache.
pub fn open_source(spec: &str, cache: &Path) -> Result<ModelFiles> {
    open_model(&source::resolve(spec, cache)?)
}

/// What [`regular_file`] calls a model's files in messages.
pub(crate) const MODEL_FILE: &str = "a model file";

/// Refuses what is not a regular file before it is opened: opening a FIFO blocks until a
/// writer comes, and a device never ends. `what` says what the file was to be read as.
pub(crate) fn regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(());
    }
    Err(not_regular(path, &meta, what))
}

/// The error for a path that is a FIFO, device, socket or directory where a regular file was
/// to be read as `what`.
pub(crate) fn not_regular(path: &Path, meta: &std::fs::Metadata, what: &str) -> Error {
    Error::bad_file(
        path,
        format!(
            "{}, not a regular file: it cannot be read as {what}",
            file_kind(meta)
        ),
    )
}

/// What kind of file `meta` describes, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Opens a Hugging Face model directory or a `.gguf` file.
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    if path.is_dir() {
        let config = hf_config::load(&path.join("config.json"))?;
        let weights = safetensors::SafetensorsWeights::open_dir(path)?;
        let tok_path = path.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            let t = Tokenizer::from_file(&tok_path, config.bos_token_id, config.eos_token_id)?;
            t.check_fits(config.vocab_size, "config.json")?;
            Some(t)
        } else {
            None
        };
        return Ok(ModelFiles {
            config,
            weights: Box::new(weights),
            tokenizer,
            format: "safetensors",
            path: path.to_path_buf(),
        });
    }
    regular_file(path, MODEL_FILE)?;
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let _ = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    }
    let gguf_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if &head == b"GGUF" || gguf_name {
        let m = gguf_model::GgufModel::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&m.file)?;
        tokenizer.check_fits(m.config.vocab_size, "the GGUF metadata")?;
        return Ok(ModelFiles {
            config: m.config.clone(),
            weights: Box::new(m),
            tokenizer: Some(tokenizer),
            format: "gguf",
            path: path.to_path_buf(),
        });
    }
    Err(Error::bad_file(
        path,
        "not a model: expected a directory with config.json and safetensors, or a GGUF file",
    ))
}
