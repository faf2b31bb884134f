//! The `ddp-run` commands: one typed argument struct per command, grouped by what they work on
//! (recipes, the cache, models, measurements); each calls the library and prints.
// The doc comments on clap's argument structs are the terminal help, shown verbatim, so
// `cuda[:N]` and `OUT/<recipe>/` are text there, not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cache;
mod measure;
mod model;
mod progress;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use ddp::backend::DeviceSpec;

#[derive(Parser)]
#[command(
    name = "ddp-run",
    version,
    about = "Structured pruning of LLMs by Deterministic Differentiable Pruning"
)]
struct Cli {
    /// Content-addressed cache (downloads, stage outputs).
    #[arg(long, global = true, env = "DDP_CACHE", default_value = "cache")]
    cache: PathBuf,
    /// Compute device: cpu, cuda[:N], tch-cpu, tch-cuda[:N].
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a recipe: every stage that is not cached yet (`ddp-run RECIPE.toml` is the same).
    Run(run::RunArgs),
    /// The expanded stage graph, and for each instance CACHED or RUN with the reason.
    Plan(run::PlanArgs),
    /// What is done and what is missing, with headline metrics.
    Status(run::StatusArgs),
    /// A stage kind's parameters, defaults and meaning.
    Explain(run::ExplainArgs),
    /// Inspect the cache.
    Cache {
        #[command(subcommand)]
        cmd: cache::CacheCmd,
    },
    /// Remove cache entries: not referenced by the given recipes' lock files, older than N
    /// days, or the oldest until the cache fits a size.
    Gc(cache::GcArgs),
    /// One table over a sweep: each instance's parameters and metrics (Markdown, CSV, JSON).
    Compare(run::CompareArgs),
    /// Architecture, sizes and parameter counts of a model.
    Inspect(model::InspectArgs),
    /// Continue a prompt.
    Generate(model::GenerateArgs),
    /// Write a model as a Hugging Face directory (`--to hf`: f32 safetensors, config.json,
    /// tokenizer.json) or as a GGUF file for llama.cpp (`--to gguf`, `--type f32|f16|q8_0|q4_0`).
    Convert(model::ConvertArgs),
    /// Perplexity (and optionally cloze and multiple-choice tasks) of a model on a text: the
    /// code the `evaluate` stage runs.
    Eval(measure::EvalArgs),
    /// Dense forward throughput: prefill and KV-cached decode, median of repeated runs.
    Bench(measure::BenchArgs),
}

/// What every command gets besides its own arguments.
struct Global {
    cache: PathBuf,
    device: DeviceSpec,
}

/// Failures with their own exit code (everything else exits 1).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The recipe does not validate: nothing ran (exit code 2).
    #[error("invalid recipe\n{0}")]
    InvalidRecipe(String),
    /// A flag names something that is not there (e.g. `compare --columns`): exit code 2, as
    /// clap's own usage errors.
    #[error("{0}")]
    Usage(String),
}

/// Parses the command line, runs the command, prints an error and picks the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(with_default_command(std::env::args().collect()));
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Failure>() {
                Some(Failure::InvalidRecipe(_) | Failure::Usage(_)) => ExitCode::from(2),
                None => ExitCode::from(1),
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = Global {
        device: cli.device.parse()?,
        cache: cli.cache,
    };
    match cli.cmd {
        Cmd::Run(a) => run::run(a, &g),
        Cmd::Plan(a) => run::plan(a, &g),
        Cmd::Status(a) => run::status(a, &g),
        Cmd::Explain(a) => run::explain(a),
        Cmd::Compare(a) => run::compare(a),
        Cmd::Cache { cmd } => cache::cache(cmd, &g),
        Cmd::Gc(a) => cache::gc(a, &g),
        Cmd::Inspect(a) => model::inspect(a, &g),
        Cmd::Generate(a) => model::generate(a, &g),
        Cmd::Convert(a) => model::convert(a, &g),
        Cmd::Eval(a) => measure::eval(a, &g),
        Cmd::Bench(a) => measure::bench(a, &g),
    }
}

/// `ddp-run RECIPE.toml [flags]` means `ddp-run run RECIPE.toml [flags]`.
fn with_default_command(mut args: Vec<String>) -> Vec<String> {
    let cmd = Cli::command();
    let is_sub = |a: &str| a == "help" || cmd.get_subcommands().any(|s| s.get_name() == a);
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        if is_sub(a) {
            return args;
        }
        if a == "--cache" || a == "--device" {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            if a.ends_with(".toml") {
                args.insert(i, "run".into());
            }
            return args;
        }
        i += 1;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_recipe_alone_means_run_and_every_subcommand_is_known() {
        assert_eq!(
            with_default_command(args("ddp-run --device cpu r.toml --jobs 2")),
            args("ddp-run --device cpu run r.toml --jobs 2")
        );
        for sub in ["eval", "bench", "plan", "compare", "gc"] {
            let a = args(&format!("ddp-run {sub} r.toml"));
            assert_eq!(with_default_command(a.clone()), a, "{sub}");
        }
        Cli::command().debug_assert();
    }
}
