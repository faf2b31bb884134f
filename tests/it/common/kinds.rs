//! Test-only stage kinds (a double of the stage contract, not of the product) and a temporary
//! environment to run recipes of them in: the engine's, the cache's and the exposers' tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ddp::engine::cache::Cache;
use ddp::engine::params::{choice, float, int_in, StageParams};
use ddp::engine::registry::Registry;
use ddp::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use ddp::engine::{self, Options, Status};

/// `text`: concatenates its inputs' out.txt and its `value`, in `steps` checkpointed steps
/// of `sleep_ms` each; appends "<instance> <first step>" to the `log` file per execution.
pub struct Text;

ddp::choice_enum! {
    /// A choice parameter, to exercise choices.
    pub enum Mode {
        /// The default.
        A = "a",
        /// The other one.
        B = "b",
    }
}

ddp::stage_params! {
    /// The `text` kind's parameters.
    pub struct TextParams {
        /// text to append
        value: String = "v" => ParamType::Str,
        /// execution log
        log: String = "" => ParamType::Str,
        /// steps
        steps: i64 = 1 => int_in(1, 1000),
        /// sleep per step
        sleep_ms: u64 = 0 => int_in(0, 10_000),
        /// a number
        rate: f64 = 0.5 => float(0.0, 1.0),
        /// fail on purpose
        fail: bool = false => ParamType::Bool,
        /// a choice
        mode: Mode = "a" => choice::<Mode>(),
    }
}

impl StageKind for Text {
    fn name(&self) -> &'static str {
        "text"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test stage"
    }
    fn resume_files(&self) -> &'static [&'static str] {
        &["checkpoint"]
    }
    fn params(&self) -> Vec<ParamSpec> {
        TextParams::specs()
    }
    fn headline(&self) -> Option<&'static str> {
        Some("len")
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<Metrics> {
        let p: TextParams = ctx.typed()?;
        if p.fail {
            anyhow::bail!("failing on purpose");
        }
        let mut text = String::new();
        for input in ctx.inputs.values() {
            text.push_str(&fs::read_to_string(input.dir.join("out.txt"))?);
        }
        let ckpt = ctx.out_dir.join("checkpoint");
        let first: i64 = fs::read_to_string(&ckpt)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if !p.log.is_empty() {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p.log)?;
            writeln!(f, "{} {first}", ctx.instance)?;
        }
        for step in first..p.steps {
            std::thread::sleep(Duration::from_millis(p.sleep_ms));
            fs::write(&ckpt, (step + 1).to_string())?;
        }
        text.push_str(&format!("{}[{}]", p.value, p.steps));
        fs::write(ctx.out_dir.join("out.txt"), &text)?;
        fs::remove_file(&ckpt)?;
        Ok(Metrics::from([("len".to_string(), text.len() as f64)]))
    }
}

/// `needs-text`: declares a typed input, to exercise input matching.
pub struct NeedsText;

impl StageKind for NeedsText {
    fn name(&self) -> &'static str {
        "needs-text"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test stage with a declared input"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "source",
            kinds: &["text"],
            doc: "a text",
        }]
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<Metrics> {
        let t = fs::read_to_string(ctx.input("source")?.dir.join("out.txt"))?;
        fs::write(ctx.out_dir.join("out.txt"), t.to_uppercase())?;
        Ok(Metrics::new())
    }
}

/// The product's kinds and the test kinds.
pub fn registry() -> Registry {
    let mut r = ddp::stages::registry();
    r.register(Arc::new(Text));
    r.register(Arc::new(NeedsText));
    r
}

/// A temporary directory with a cache, an out root and an execution log.
pub struct Env {
    _dir: tempfile::TempDir,
    /// The directory (recipes are written here).
    pub root: PathBuf,
    /// The execution log the `text` kind appends to (`LOG` in a recipe).
    pub log: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Self {
            log: root.join("log.txt"),
            root,
            _dir: dir,
        }
    }
    pub fn recipe(&self, name: &str, body: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, body.replace("LOG", self.log.to_str().unwrap())).unwrap();
        p
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn cache(&self) -> Cache {
        Cache::open(&self.cache_dir()).unwrap()
    }
    pub fn opts(&self) -> Options {
        Options {
            out_root: Some(self.root.join("out")),
            ..Default::default()
        }
    }
    pub fn run(&self, recipe: &Path) -> engine::Summary {
        let r = ddp::recipe::load(recipe, &registry()).unwrap_or_else(|e| panic!("{e}"));
        engine::run(&r, &registry(), &self.cache(), &self.opts()).unwrap()
    }
    pub fn plan(&self, recipe: &Path) -> BTreeMap<String, Status> {
        let r = ddp::recipe::load(recipe, &registry()).unwrap_or_else(|e| panic!("{e}"));
        engine::plan(&r, &registry(), &self.cache(), &self.opts())
            .unwrap()
            .into_iter()
            .map(|p| (p.instance.name, p.status))
            .collect()
    }
    /// Each instance's key, by name.
    pub fn keys(&self, recipe: &Path) -> BTreeMap<String, String> {
        let r = ddp::recipe::load(recipe, &registry()).unwrap_or_else(|e| panic!("{e}"));
        engine::plan(&r, &registry(), &self.cache(), &self.opts())
            .unwrap()
            .into_iter()
            .map(|p| (p.instance.name, p.key))
            .collect()
    }
    pub fn log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    pub fn executions(&self, instance: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.split(' ').next() == Some(instance))
            .count()
    }
}
