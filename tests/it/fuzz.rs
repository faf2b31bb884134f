//! Bounded fuzzing in `cargo test`: seeded mutations of recipes through the recipe parser and
//! validator, and of model files (GGUF, safetensors, config.json, tokenizer.json) through the
//! loaders `ddp-run inspect` and `eval` use. Zero panics, no case slower than [`SLOW`], and
//! every failure an error with a message (naming the file, for the loaders). A failing case
//! prints its seed and mutations; `DDP_FUZZ_SCALE=N` runs N times as many cases and
//! `DDP_FUZZ_SEED=S` starts from another seed. Then the campaign's damaged model files as
//! named cases, and one regression case per loader bug the fuzzers found.

use crate::common::*;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ddp::io::{open_model, ModelFiles};
use serde_json::{json, Value};

/// A case slower than this is a hang or an unbounded loop (cases take milliseconds).
const SLOW: Duration = Duration::from_secs(5);

/// xorshift64*: a small seeded generator, so a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// How many cases a fuzzer runs: `n` times `DDP_FUZZ_SCALE` (default 1).
fn cases(n: usize) -> usize {
    let scale = std::env::var("DDP_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok());
    n * scale.unwrap_or(1)
}

/// The seed of case `i` of a fuzzer (`DDP_FUZZ_SEED` moves them all).
fn seed(i: usize) -> u64 {
    let base = std::env::var("DDP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    base.unwrap_or(14) * 1_000_003 + i as u64
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(not a string)".into())
}

/// Runs one case; a panic (an assertion of the case included) or a case slower than [`SLOW`]
/// fails the test naming the target, the seed and the input (`show`), to replay it.
fn run_case<T>(target: &str, seed: u64, show: impl Fn() -> String, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(f));
    let took = t.elapsed();
    match r {
        Ok(_) if took > SLOW => {
            panic!("{target}: seed {seed} took {took:?} (a hang?)\n{}", show())
        }
        Ok(v) => v,
        Err(p) => panic!(
            "{target}: seed {seed} panicked: {}\n{}",
            panic_text(p.as_ref()),
            show()
        ),
    }
}

/// Successes and errors of a fuzzer, to show (and check) that it reaches past the first check.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    err: usize,
}

impl Tally {
    fn add<T, E>(&mut self, r: &Result<T, E>) {
        if r.is_ok() {
            self.ok += 1
        } else {
            self.err += 1
        }
    }
    /// Both outcomes at least `min` times: a fuzzer whose cases all fail the first check (or
    /// none) tests little.
    fn check(&self, target: &str, min: usize) {
        eprintln!("{target}: {self:?}");
        assert!(self.ok >= min && self.err >= min, "{target}: {self:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Recipes

/// Values of every TOML type, and the extremes, put in place of a value.
#[rustfmt::skip]
const TOML_VALUES: &[&str] = &[
    "\"x\"", "\"\"", "0", "1", "-1", "2", "1e308", "-1e308", "nan", "inf", "-inf", "0.5", "1e-320",
    "9223372036854775807", "-9223372036854775808", "18446744073709551615", "true", "false", "[]",
    "[1, \"a\"]", "[[]]", "[0.1, 0.2, 0.3]", "{}", "{ values = [1, 2] }", "1979-05-27T07:32:00Z",
    "\"${model.source}\"", "\"${nope}\"", "\"${vars.x\"", "\"${}\"", "\"é漢字🦀\"", "\"\\u0000\"",
    "\"../../../etc/passwd\"", "\"load\"", "[\"load\"]", "[\"nope\"]", "\"topk\"", "\"*\"", "0.0",
    "-0.0", "1_000_000_000_000",
];

/// Lines inserted into a recipe: tables, cross-references, cycles, odd keys.
#[rustfmt::skip]
const TOML_LINES: &[&str] = &[
    "[sweep]\nsparsity = [0.1, 0.2]",
    "[sweep]\nx = { values = [1], param = \"steps\", stages = [\"nope\"] }",
    "[stages.x]\nkind = \"load\"", "[stages.y]\nkind = \"threshold\"\nafter = [\"y\"]",
    "after = [\"load\"]", "after = [\"nope\", \"load\", \"load\"]", "pipeline = \"ddp\"",
    "pipeline = \"ddp-prune\"", "pipeline = \"nope\"", "pipeline = \"../recipes/quickstart\"",
    "pipeline = \"fuzz\"", "[model]\nfoo = 1", "[vars]\nx = \"${vars.x}\"",
    "[vars]\na = \"${vars.b}\"\nb = \"${vars.a}\"", "name = \"a/b\"", "name = \"\"",
    "kind = \"nope\"", "[stages]", "[[stages.load]]", "[stages.load.nested]\nx = 1",
    "steps = 100000000000", "seq_len = 0", "max_tokens = -5", "sparsity = 1.5",
    "checkpoint_every = 0", "\u{feff}", "# comment ${vars.x}",
];

/// Recipes to mutate: the shipped ones, the pipelines, and those the tests run.
fn recipe_seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<String> = ["recipes", "pipelines"]
        .iter()
        .flat_map(|d| fs::read_dir(root.join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    let moby = fixtures().join("corpora/moby-dick.txt");
    seeds.push(recipes::stories("topk", false));
    seeds.push(recipes::stories("uniform", true));
    seeds.push(recipes::moe(Path::new("/nonexistent/tiny-moe")));
    seeds.push(recipes::sweep(&moby.to_string_lossy()));
    seeds
}

/// A char boundary of `s` at or after `at`.
fn boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// One to four mutations of a recipe: byte flips, deletions, duplicated, deleted, swapped and
/// spliced lines, values swapped for other TOML types, inserted tables and unicode.
fn mutate_recipe(rng: &mut Rng, text: &str, seeds: &[String]) -> String {
    let mut s = text.to_string();
    for _ in 0..1 + rng.below(4) {
        let mut lines: Vec<String> = s.lines().map(String::from).collect();
        let n = lines.len().max(1);
        match rng.below(10) {
            0 => {
                let mut b = s.into_bytes();
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                s = String::from_utf8_lossy(&b).into_owned();
                continue;
            }
            1 => {
                let a = boundary(&s, rng.below(s.len() + 1));
                let b = boundary(&s, a + rng.below(40));
                s.replace_range(a..b, "");
                continue;
            }
            2 if !lines.is_empty() => {
                let i = rng.below(n);
                let l = lines[i].clone();
                lines.insert(rng.below(n), l);
            }
            3 if !lines.is_empty() => {
                lines.remove(rng.below(n));
            }
            4 => {
                let other: Vec<&str> = rng.pick(seeds).lines().collect();
                let l = rng.pick(&other).to_string();
                lines.insert(rng.below(n), l);
            }
            5 if !lines.is_empty() => lines.swap(rng.below(n), rng.below(n)),
            6 | 7 => {
                let with_value: Vec<usize> = (0..lines.len())
                    .filter(|&i| lines[i].contains(" = "))
                    .collect();
                if !with_value.is_empty() {
                    let i = *rng.pick(&with_value);
                    let key = lines[i].split(" = ").next().unwrap().to_string();
                    lines[i] = format!("{key} = {}", rng.pick(TOML_VALUES));
                }
            }
            8 => lines.insert(rng.below(n), rng.pick(TOML_LINES).to_string()),
            _ => {
                let at = boundary(&s, rng.below(s.len() + 1));
                #[rustfmt::skip]
                let junk = [
                    "é", "🦀", "\u{0}", "\"", "${", "]", "[", "=", "99999999999999999999",
                ];
                let j = rng.pick(&junk).to_string();
                s.insert_str(at, &j);
                continue;
            }
        }
        s = lines.join("\n");
    }
    s
}

#[test]
fn fuzz_recipes_parse_or_explain() {
    let registry = ddp::stages::registry();
    let seeds = recipe_seeds();
    // Beside the shipped recipes, so `pipeline = "ddp"` resolves as it does for them.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/fuzz.toml");
    let mut tally = Tally::default();
    for i in 0..cases(10_000) {
        let s = seed(i);
        let mut rng = Rng::new(s);
        let base = rng.pick(&seeds).clone();
        let text = mutate_recipe(&mut rng, &base, &seeds);
        let r = run_case(
            "recipe",
            s,
            || format!("recipe:\n{text}"),
            || {
                let r = ddp::recipe::parse(&text, &path, &registry);
                if let Err(e) = &r {
                    assert!(!e.0.is_empty() && !e.to_string().trim().is_empty());
                    for p in &e.0 {
                        assert!(!p.message.trim().is_empty(), "an empty message in {e}");
                    }
                }
                r.map(|_| ())
            },
        );
        tally.add(&r);
    }
    tally.check("recipes", 500);
}

// ------------------------------------------------------------------------------------------
// Model files: where the cases are written, and what every case does with what it opened

/// A temporary directory in memory where there is one (/dev/shm): the cases rewrite files of
/// a megabyte thousands of times.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// The first index (from the end with `rev`) where `a` and `b`, of one length, differ;
/// compared in blocks, as a byte loop is slow at the tests' optimisation level.
fn first_diff(a: &[u8], b: &[u8], rev: bool) -> Option<usize> {
    const K: usize = 4096;
    let n = a.len();
    let at = |i: usize| if rev { n - 1 - i } else { i };
    let mut i = 0;
    while i < n {
        let k = K.min(n - i);
        let (x, y) = match rev {
            true => (&a[n - i - k..n - i], &b[n - i - k..n - i]),
            false => (&a[i..i + k], &b[i..i + k]),
        };
        if x != y {
            return (i..i + k).find(|&j| a[at(j)] != b[at(j)]);
        }
        i += k;
    }
    None
}

/// A file rewritten case after case: only the bytes that differ from the last case's are
/// written, as most cases change a few bytes of the header of a megabyte.
struct Scratch {
    path: PathBuf,
    cur: Vec<u8>,
}

impl Scratch {
    fn new(path: PathBuf) -> Self {
        fs::write(&path, b"").unwrap();
        Scratch { path, cur: vec![] }
    }
    fn write(&mut self, b: &[u8]) {
        use std::os::unix::fs::FileExt;
        let n = self.cur.len().min(b.len());
        let lo = first_diff(&self.cur[..n], &b[..n], false).unwrap_or(n);
        let hi = match self.cur.len() == b.len() {
            true => first_diff(&self.cur[lo..], &b[lo..], true).map_or(lo, |i| b.len() - i),
            false => b.len(),
        };
        let f = fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(&b[lo..hi.max(lo)], lo as u64).unwrap();
        f.set_len(b.len() as u64).unwrap();
        self.cur = b.to_vec();
    }
}

/// What `inspect` and `eval` do with an opened model: the summary, a round trip through the
/// tokenizer, and (with `load`, as it costs milliseconds) the weights on the NdArray backend.
/// Every error must name one of `files`.
fn use_model(files: ddp::Result<ModelFiles>, names: &[&str], load: bool) -> Result<(), String> {
    let named = |e: ddp::Error| {
        let m = e.to_string();
        assert!(
            names.iter().any(|n| m.contains(n)),
            "an error that names none of {names:?}: {m}"
        );
        m
    };
    let files = files.map_err(named)?;
    let _ = ddp::io::summary::text(&files, "fuzz");
    let _ = ddp::io::summary::json(&files, "fuzz");
    if let Some(t) = &files.tokenizer {
        let ids = t.encode("Once upon a time, Lily ate 3 apples. é🦀", true);
        let ids = ids.map_err(named)?;
        t.decode(&ids).map_err(named)?;
    }
    if load {
        files.load::<B>(&Default::default(), None).map_err(named)?;
    }
    Ok(())
}

/// Interesting values for a field of `width` bytes that now holds `cur`, in a file of `len`.
fn interesting(rng: &mut Rng, width: usize, cur: u64, len: u64) -> u64 {
    #[rustfmt::skip]
    let common = [
        0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 255, cur.wrapping_add(1), cur.wrapping_sub(1),
    ];
    #[rustfmt::skip]
    let wide = [
        u32::MAX as u64, 1 << 32, 1 << 40, 1 << 62, i64::MAX as u64, u64::MAX, u64::MAX - 1, len,
        len + 1, len / 2, cur.wrapping_mul(2), cur << 32,
    ];
    let v = match rng.below(4) {
        0 => *rng.pick(&wide),
        1 => rng.next(),
        _ => *rng.pick(&common),
    };
    match width {
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        4 => v & 0xFFFF_FFFF,
        _ => v,
    }
}

fn read_le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut x = [0u8; 8];
    x[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(x)
}

fn write_le(b: &mut [u8], at: usize, width: usize, v: u64) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Cuts `b` at a random offset, mostly within the first `head` bytes.
fn truncate(rng: &mut Rng, b: &mut Vec<u8>, head: usize, log: &mut Vec<String>) {
    let at = if rng.one_in(3) {
        rng.below(b.len())
    } else {
        rng.below(head.min(b.len()))
    };
    b.truncate(at);
    log.push(format!("truncate at {at}"));
}

// ------------------------------------------------------------------------------------------
// GGUF

/// A field of a GGUF header: where, how wide, and what it is (for the case's log).
#[derive(Debug, Clone)]
struct Field {
    at: usize,
    width: usize,
    what: String,
}

/// The fields of a well-formed GGUF header (counts, lengths, types, dims, offsets and
/// scalar values), and where the tensor infos end.
fn gguf_fields(b: &[u8]) -> (Vec<Field>, usize) {
    let mut fields = vec![];
    let mut p = 8;
    let mut field = |p: &mut usize, width: usize, what: String| {
        fields.push(Field {
            at: *p,
            width,
            what,
        });
        let v = read_le(b, *p, width);
        *p += width;
        v
    };
    let nt = field(&mut p, 8, "tensor count".into());
    let nkv = field(&mut p, 8, "metadata count".into());
    fn skip_str(b: &[u8], p: &mut usize) -> String {
        let n = read_le(b, *p, 8) as usize;
        let s = String::from_utf8_lossy(&b[*p + 8..*p + 8 + n]).into_owned();
        *p += 8 + n;
        s
    }
    let scalar = |t: u64| match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => 0,
    };
    for _ in 0..nkv {
        field(&mut p, 8, "key length".into());
        p -= 8;
        let key = skip_str(b, &mut p);
        let t = field(&mut p, 4, format!("{key}: type"));
        match t {
            8 => {
                field(&mut p, 8, format!("{key}: length"));
                p -= 8;
                skip_str(b, &mut p);
            }
            9 => {
                let it = field(&mut p, 4, format!("{key}: element type"));
                let n = field(&mut p, 8, format!("{key}: count"));
                for j in 0..n {
                    if it == 8 {
                        if j < 4 {
                            field(&mut p, 8, format!("{key}[{j}]: length"));
                            p -= 8;
                        }
                        skip_str(b, &mut p);
                    } else {
                        p += scalar(it);
                    }
                }
            }
            t => {
                field(&mut p, scalar(t), format!("{key}: value"));
            }
        }
    }
    for _ in 0..nt {
        field(&mut p, 8, "tensor name length".into());
        p -= 8;
        let name = skip_str(b, &mut p);
        let nd = field(&mut p, 4, format!("{name}: n_dims"));
        for d in 0..nd {
            field(&mut p, 8, format!("{name}: ne[{d}]"));
        }
        field(&mut p, 4, format!("{name}: ggml type"));
        field(&mut p, 8, format!("{name}: offset"));
    }
    (fields, p)
}

/// One to three mutations of a GGUF: fields set to extremes, bit flips and overwritten or
/// copied bytes in the header, truncation (last, as it moves the end).
fn mutate_gguf(
    rng: &mut Rng,
    orig: &[u8],
    fields: &[Field],
    head: usize,
) -> (Vec<u8>, Vec<String>) {
    let mut b = orig.to_vec();
    let mut log = vec![];
    let len = b.len() as u64;
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            0..=3 => {
                let f = rng.pick(fields);
                let v = interesting(rng, f.width, read_le(&b, f.at, f.width), len);
                write_le(&mut b, f.at, f.width, v);
                log.push(format!("{} (at {}) = {v}", f.what, f.at));
            }
            4 => {
                let at = rng.below(head);
                let bit = rng.below(8);
                b[at] ^= 1 << bit;
                log.push(format!("flip bit {bit} of byte {at}"));
            }
            5 => {
                let at = rng.below(head);
                b[at] = rng.next() as u8;
                log.push(format!("byte {at} = {}", b[at]));
            }
            6 => {
                let (from, to, n) = (rng.below(head), rng.below(head), 1 + rng.below(16));
                let n = n.min(head - from).min(head - to);
                b.copy_within(from..from + n, to);
                log.push(format!("copy {n} bytes from {from} to {to}"));
            }
            _ => {
                truncate(rng, &mut b, head + 64, &mut log);
                break;
            }
        }
    }
    (b, log)
}

/// Mutated GGUFs (the F32 and the Q4_0 stories260k) through `open_model` and what follows.
fn fuzz_gguf(fixture: &str, n: usize, tag: &str) {
    let orig = fs::read(fixtures().join(fixture)).unwrap();
    let (fields, head) = gguf_fields(&orig);
    let d = scratch_dir();
    let p = d.path().join("fuzz.gguf");
    let mut file = Scratch::new(p.clone());
    let mut tally = Tally::default();
    for i in 0..cases(n) {
        let s = seed(i);
        let mut rng = Rng::new(s);
        let (b, log) = mutate_gguf(&mut rng, &orig, &fields, head);
        file.write(&b);
        let load = rng.one_in(4);
        let show = || format!("{fixture} with: {}", log.join("; "));
        let r = run_case(tag, s, show, || {
            use_model(open_model(&p), &["fuzz.gguf"], load)
        });
        tally.add(&r);
    }
    tally.check(tag, n / 50);
}

#[test]
fn fuzz_gguf_f32() {
    fuzz_gguf("stories260k.gguf", 2_500, "gguf-f32");
}

#[test]
fn fuzz_gguf_q4_0() {
    fuzz_gguf("stories260k-q4_0.gguf", 1_500, "gguf-q4_0");
}

// ------------------------------------------------------------------------------------------
// Safetensors

/// The header of a safetensors file as JSON, and where the data starts.
fn st_header(b: &[u8]) -> (Value, usize) {
    let n = read_le(b, 0, 8) as usize;
    (serde_json::from_slice(&b[8..8 + n]).unwrap(), 8 + n)
}

/// `header` + the data of `orig` (which starts at `data`), with a correct length field; a
/// shorter header is padded with spaces (as the format allows) so the data stays in place.
fn st_with_header(header: &[u8], orig: &[u8], data: usize) -> Vec<u8> {
    let mut header = header.to_vec();
    header.resize(header.len().max(data - 8), b' ');
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&header);
    b.extend_from_slice(&orig[data..]);
    b
}

/// A JSON value of any type, and the extremes.
fn any_json(rng: &mut Rng) -> Value {
    #[rustfmt::skip]
    let vals = [
        json!(null), json!(true), json!(0), json!(1), json!(-1), json!(8), json!(64), json!(0.5),
        json!(1e300), json!(-1e300), json!(1e-30), json!(u64::MAX), json!(i64::MIN),
        json!(1u64 << 53), json!(1u64 << 63), json!(""), json!("x"), json!("é🦀"), json!([]),
        json!([1, 2]), json!([0.5]), json!(["a"]), json!([[]]), json!({}), json!({"a": 1}),
    ];
    rng.pick(&vals).clone()
}

/// Sets `key` of a tensor's entry, if the entry is still an object.
fn set(entry: &mut Value, key: &str, v: Value) {
    if let Some(t) = entry.as_object_mut() {
        t.insert(key.into(), v);
    }
}

/// A structural mutation of a safetensors header: a tensor's dtype, shape or offsets set to
/// something else, a tensor or field removed or renamed, odd `__metadata__`, or another JSON.
fn mutate_st_json(rng: &mut Rng, h: &mut Value, log: &mut Vec<String>) {
    let names: Vec<String> = h
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if names.is_empty() || rng.one_in(30) {
        *h = any_json(rng);
        log.push(format!("header = {h}"));
        return;
    }
    let name = rng.pick(&names).clone();
    let t = &h[&name];
    let offset = |i: usize| t["data_offsets"][i].as_u64().unwrap_or(0);
    let (a, b) = (offset(0), offset(1));
    let shape: Vec<u64> = t["shape"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let o = h.as_object_mut().unwrap();
    let new = match rng.below(9) {
        0 => {
            #[rustfmt::skip]
            let dtypes = [
                "F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "", "f32",
            ];
            let v = if rng.one_in(4) {
                any_json(rng)
            } else {
                json!(rng.pick(&dtypes))
            };
            set(&mut o[&name], "dtype", v.clone());
            format!("{name}.dtype = {v}")
        }
        1 | 2 => {
            let mut rev = shape.clone();
            rev.reverse();
            let first = shape.first().copied().unwrap_or(1);
            #[rustfmt::skip]
            let shapes = [
                json!([]), json!([0]), json!([1]), json!([u64::MAX]),
                json!([1u64 << 32, 1u64 << 32]), json!([-1]), json!(rev), json!([first, 1, 1]),
                json!(["a"]), json!(1.5), json!([first.wrapping_mul(2)]),
                json!([shape.iter().fold(1u64, |p, &x| p.wrapping_mul(x))]), any_json(rng),
            ];
            let v = rng.pick(&shapes).clone();
            set(&mut o[&name], "shape", v.clone());
            format!("{name}.shape = {v}")
        }
        3 | 4 => {
            #[rustfmt::skip]
            let offs = [
                json!([b, a]), json!([a, a]), json!([0, b]), json!([a.wrapping_add(1), b.wrapping_add(1)]),
                json!([a, b.wrapping_add(4)]), json!([0, u64::MAX]), json!([u64::MAX - 1, u64::MAX]),
                json!([-1, 0]), json!([a]), json!("x"), json!([a, b, b]), any_json(rng),
            ];
            let v = rng.pick(&offs).clone();
            set(&mut o[&name], "data_offsets", v.clone());
            format!("{name}.data_offsets = {v}")
        }
        5 => {
            o.remove(&name);
            format!("remove {name}")
        }
        6 => {
            let key = *rng.pick(&["dtype", "shape", "data_offsets"]);
            o[&name].as_object_mut().map(|m| m.remove(key));
            format!("remove {name}.{key}")
        }
        7 => {
            let v = o.remove(&name).unwrap();
            let to = rng
                .pick(&["", "é🦀", "model.embed_tokens.weight", "x.weight"])
                .to_string();
            o.insert(to.clone(), v);
            format!("rename {name} to {to:?}")
        }
        _ => {
            let v = any_json(rng);
            o.insert("__metadata__".into(), v.clone());
            format!("__metadata__ = {v}")
        }
    };
    log.push(new);
}

/// One to three mutations of a safetensors file: the header length set to extremes, the
/// header's JSON mutated (structurally, or its bytes), truncation.
fn mutate_st(rng: &mut Rng, orig: &[u8]) -> (Vec<u8>, Vec<String>) {
    let (mut h, data) = st_header(orig);
    let mut b = orig.to_vec();
    let mut log = vec![];
    for _ in 0..1 + rng.below(3) {
        let hlen = read_le(&b, 0, 8) as usize;
        match rng.below(6) {
            0 => {
                let v = interesting(rng, 8, hlen as u64, b.len() as u64);
                write_le(&mut b, 0, 8, v);
                log.push(format!("header length = {v}"));
            }
            1 | 2 => {
                mutate_st_json(rng, &mut h, &mut log);
                b = st_with_header(h.to_string().as_bytes(), orig, data);
            }
            3 if hlen < b.len() => {
                let at = 8 + rng.below(hlen.min(b.len() - 8));
                b[at] ^= 1 << rng.below(8);
                log.push(format!("flip a bit of byte {at}"));
            }
            4 => {
                let delta = rng.below(17) as i64 - 8;
                let v = (hlen as u64).saturating_add_signed(delta);
                write_le(&mut b, 0, 8, v);
                log.push(format!("header length = {v} (was {hlen})"));
            }
            _ => {
                truncate(rng, &mut b, data + 64, &mut log);
                break;
            }
        }
    }
    (b, log)
}

/// A directory holding the stories260k config.json, ready for a mutated weights file (or,
/// with `weights`, the real one linked in, for a mutated config.json or tokenizer.json).
fn hf_dir(weights: bool) -> tempfile::TempDir {
    let d = scratch_dir();
    let src = fixtures().join("stories260k");
    fs::copy(src.join("config.json"), d.path().join("config.json")).unwrap();
    if weights {
        std::os::unix::fs::symlink(
            src.join("model.safetensors"),
            d.path().join("model.safetensors"),
        )
        .unwrap();
    }
    d
}

#[test]
fn fuzz_safetensors() {
    let orig = fs::read(fixtures().join("stories260k/model.safetensors")).unwrap();
    let d = hf_dir(false);
    let mut file = Scratch::new(d.path().join("model.safetensors"));
    let mut tally = Tally::default();
    let n = 3_000;
    for i in 0..cases(n) {
        let s = seed(i);
        let mut rng = Rng::new(s);
        let (b, log) = mutate_st(&mut rng, &orig);
        file.write(&b);
        let load = rng.one_in(3);
        let show = || format!("model.safetensors with: {}", log.join("; "));
        let r = run_case("safetensors", s, show, || {
            use_model(open_model(d.path()), &["model.safetensors"], load)
        });
        tally.add(&r);
    }
    tally.check("safetensors", n / 50);
}

// ------------------------------------------------------------------------------------------
// config.json

/// Keys the config reader knows, present in the fixture or not.
#[rustfmt::skip]
const CONFIG_KEYS: &[&str] = &[
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias", "vocab_size",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "ddp_layer_shapes", "sliding_window",
    "use_sliding_window", "max_window_layers", "num_local_experts", "num_experts",
    "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
    "decoder_sparse_step", "mlp_only_layers", "norm_topk_prob",
];

/// Values a config key may be given: [`any_json`], the names of architectures and RoPE
/// scalings, and well-formed objects with bad insides.
fn config_value(rng: &mut Rng) -> Value {
    #[rustfmt::skip]
    let vals = [
        json!("llama"), json!("mistral"), json!("qwen2"), json!("qwen3"), json!("qwen2_moe"),
        json!("qwen3_moe"), json!("mixtral"), json!("silu"), json!("gelu"), json!(4), json!(5),
        json!(2), json!(16), json!(172), json!(512), json!(1u64 << 40),
        json!({"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 16}),
        json!({"rope_type": "linear", "factor": -1}),
        json!({"type": "ddp_factors", "factors": [1, 2, 3, 4]}),
        json!({"rope_type": "ddp_factors", "factors": ["a"]}), json!({"rope_type": 5}),
        json!([{"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 172}]),
        Value::Array(vec![json!({"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 0}); 5]),
        json!([0, 1, 99, 1u64 << 40]),
    ];
    if rng.one_in(2) {
        any_json(rng)
    } else {
        rng.pick(&vals).clone()
    }
}

/// One to three mutations of config.json: keys set to other values or removed, or its text
/// flipped, cut or spliced.
fn mutate_config(rng: &mut Rng, orig: &str) -> (String, Vec<String>) {
    let mut v: Value = serde_json::from_str(orig).unwrap();
    let mut log = vec![];
    let mut text = None;
    for _ in 0..1 + rng.below(3) {
        let o = v.as_object_mut().unwrap();
        match rng.below(8) {
            0..=4 => {
                let k = *rng.pick(CONFIG_KEYS);
                let x = config_value(rng);
                log.push(format!("{k} = {x}"));
                o.insert(k.into(), x);
            }
            5 => {
                let k = *rng.pick(CONFIG_KEYS);
                o.remove(k);
                log.push(format!("remove {k}"));
            }
            _ => {
                let mut b = v.to_string().into_bytes();
                let at = rng.below(b.len());
                if rng.one_in(2) {
                    b[at] ^= 1 << rng.below(8);
                    log.push(format!("flip a bit of byte {at}"));
                } else {
                    b.truncate(at);
                    log.push(format!("truncate at {at}"));
                }
                text = Some(String::from_utf8_lossy(&b).into_owned());
                break;
            }
        }
    }
    (
        text.unwrap_or_else(|| serde_json::to_string_pretty(&v).unwrap()),
        log,
    )
}

#[test]
fn fuzz_config_json() {
    let orig = fs::read_to_string(fixtures().join("stories260k/config.json")).unwrap();
    let d = hf_dir(true);
    let mut file = Scratch::new(d.path().join("config.json"));
    let mut tally = Tally::default();
    let n = 3_000;
    for i in 0..cases(n) {
        let s = seed(i);
        let mut rng = Rng::new(s);
        let (text, log) = mutate_config(&mut rng, &orig);
        file.write(text.as_bytes());
        let load = rng.one_in(2);
        let show = || format!("config.json with: {}\n{text}", log.join("; "));
        // A config error names config.json; a shape contradicting it names the weights.
        let names = ["config.json", "model.safetensors"];
        let r = run_case("config.json", s, show, || {
            use_model(open_model(d.path()), &names, load)
        });
        tally.add(&r);
    }
    tally.check("config.json", n / 50);
}

// ------------------------------------------------------------------------------------------
// tokenizer.json

/// One or two structural mutations of tokenizer.json (vocabulary, merges, added tokens,
/// post-processor, model type), or its text flipped or cut.
fn mutate_tokenizer(rng: &mut Rng, orig: &Value) -> (String, Vec<String>) {
    let mut v = orig.clone();
    let mut log = vec![];
    for _ in 0..1 + rng.below(2) {
        match rng.below(7) {
            0 => {
                let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                let keys: Vec<String> = vocab.keys().cloned().collect();
                let k = rng.pick(&keys).clone();
                let x = any_json(rng);
                log.push(format!("vocab[{k:?}] = {x}"));
                vocab.insert(k, x);
            }
            1 => {
                let keep = rng.below(600);
                let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                let kept: serde_json::Map<String, Value> = vocab
                    .iter()
                    .take(keep)
                    .map(|(k, x)| (k.clone(), x.clone()))
                    .collect();
                *vocab = kept;
                log.push(format!("keep {keep} vocab entries"));
            }
            2 => {
                let m = &mut v["model"]["merges"];
                let x = if rng.one_in(2) {
                    any_json(rng)
                } else {
                    json!([["zz", "qq"], ["a"]])
                };
                log.push(format!("merges = {x}"));
                *m = x;
            }
            3 => {
                let x = json!([{"id": rng.pick(&[0u64, 3, 511, 512, 1 << 31, u32::MAX as u64]),
                    "content": "<s>", "special": true}]);
                log.push(format!("added_tokens = {x}"));
                v["added_tokens"] = x;
            }
            4 => {
                let x = any_json(rng);
                let key = *rng.pick(&["post_processor", "normalizer", "decoder", "pre_tokenizer"]);
                log.push(format!("{key} = {x}"));
                v[key] = x;
            }
            5 => {
                let x = json!(rng.pick(&["BPE", "WordPiece", "Unigram", "WordLevel", "nope"]));
                log.push(format!("model.type = {x}"));
                v["model"]["type"] = x;
            }
            _ => {
                let mut b = v.to_string().into_bytes();
                let at = rng.below(b.len());
                b.truncate(at);
                log.push(format!("truncate at {at}"));
                return (String::from_utf8_lossy(&b).into_owned(), log);
            }
        }
    }
    (v.to_string(), log)
}

#[test]
fn fuzz_tokenizer_json() {
    let orig = fs::read_to_string(fixtures().join("stories260k/tokenizer.json")).unwrap();
    let orig: Value = serde_json::from_str(&orig).unwrap();
    let d = hf_dir(true);
    let mut file = Scratch::new(d.path().join("tokenizer.json"));
    let mut tally = Tally::default();
    let n = 400;
    for i in 0..cases(n) {
        let s = seed(i);
        let mut rng = Rng::new(s);
        let (text, log) = mutate_tokenizer(&mut rng, &orig);
        file.write(text.as_bytes());
        let show = || format!("tokenizer.json with: {}", log.join("; "));
        let r = run_case("tokenizer.json", s, show, || {
            use_model(open_model(d.path()), &["tokenizer.json"], false)
        });
        tally.add(&r);
    }
    tally.check("tokenizer.json", n / 50);
}

// ------------------------------------------------------------------------------------------
// The campaign's damaged model files, as named cases

/// The error of opening `path` and, when that succeeds, of loading its weights (some damage
/// shows only then); `None` when both succeed.
fn open_and_load(path: &Path) -> Option<String> {
    match open_model(path) {
        Ok(files) => files
            .load::<B>(&Default::default(), None)
            .err()
            .map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// The stories260k GGUF, its header fields and the end of its tensor infos.
fn gguf_fixture() -> (Vec<u8>, Vec<Field>, usize) {
    let b = fs::read(fixtures().join("stories260k.gguf")).unwrap();
    let (fields, head) = gguf_fields(&b);
    (b, fields, head)
}

fn field<'a>(fields: &'a [Field], what: &str) -> &'a Field {
    fields.iter().find(|f| f.what == what).unwrap()
}

#[test]
fn gguf_truncated_at_many_offsets_is_an_error_naming_the_file() {
    let (orig, _, head) = gguf_fixture();
    let d = scratch_dir();
    let p = d.path().join("cut.gguf");
    let mut file = Scratch::new(p.clone());
    // Every few bytes of the header, then across the tensor data, and one byte short.
    let cuts = (0..head)
        .step_by(23)
        .chain((head..orig.len()).step_by(orig.len() / 50))
        .chain([orig.len() - 1]);
    for at in cuts {
        file.write(&orig[..at]);
        let e = open_and_load(&p).unwrap_or_else(|| panic!("cut at {at}: no error"));
        assert!(
            e.contains("cut.gguf") && e.contains("truncated"),
            "cut at {at}: {e}"
        );
    }
}

#[test]
fn gguf_header_byte_flips_are_errors_naming_the_file_or_harmless() {
    let (orig, fields, head) = gguf_fixture();
    let d = scratch_dir();
    let p = d.path().join("flip.gguf");
    let mut file = Scratch::new(p.clone());
    let flip = |at: usize| {
        let mut b = orig.clone();
        b[at] ^= 0xFF;
        b
    };
    // Counts, lengths, types, dims and offsets: every flip of their low byte is an error.
    for f in fields.iter().filter(|f| !f.what.ends_with(": value")) {
        file.write(&flip(f.at));
        let e = open_and_load(&p).unwrap_or_else(|| panic!("{}: flipped, no error", f.what));
        assert!(e.contains("flip.gguf"), "{}: {e}", f.what);
    }
    // Anywhere in the header (a token's text, a value): an error naming the file, or a model.
    let mut errors = 0;
    for at in (0..head).step_by(17) {
        file.write(&flip(at));
        if let Some(e) = open_and_load(&p) {
            assert!(e.contains("flip.gguf"), "byte {at}: {e}");
            errors += 1;
        }
    }
    assert!(errors > 0);
}

#[test]
fn safetensors_truncated_or_flipped_header_is_an_error_naming_the_file() {
    let orig = fs::read(fixtures().join("stories260k/model.safetensors")).unwrap();
    let (_, data) = st_header(&orig);
    let d = hf_dir(false);
    let mut file = Scratch::new(d.path().join("model.safetensors"));
    let cuts = (0..data)
        .step_by(19)
        .chain((data..orig.len()).step_by(orig.len() / 50))
        .chain([orig.len() - 1]);
    for at in cuts {
        file.write(&orig[..at]);
        let e = open_and_load(d.path()).unwrap_or_else(|| panic!("cut at {at}: no error"));
        assert!(
            e.contains("model.safetensors") && e.contains("truncated"),
            "cut at {at}: {e}"
        );
    }
    // The length field and the JSON header: every byte flipped is an error.
    for at in (0..data).step_by(5) {
        let mut b = orig.clone();
        b[at] ^= 0xFF;
        file.write(&b);
        let e = open_and_load(d.path()).unwrap_or_else(|| panic!("byte {at}: no error"));
        assert!(e.contains("model.safetensors"), "byte {at}: {e}");
    }
}

/// The error of the stories260k directory with `config` as its config.json.
fn config_error(d: &Path, config: &Value) -> Option<String> {
    fs::write(d.join("config.json"), config.to_string()).unwrap();
    open_and_load(d)
}

#[test]
fn config_json_missing_keys_and_wrong_types_name_the_key() {
    let d = hf_dir(true);
    let orig: Value = serde_json::from_str(
        &fs::read_to_string(fixtures().join("stories260k/config.json")).unwrap(),
    )
    .unwrap();
    #[rustfmt::skip]
    let required = [
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "vocab_size",
    ];
    for key in required {
        let mut c = orig.clone();
        c.as_object_mut().unwrap().remove(key);
        let e = config_error(d.path(), &c).unwrap_or_else(|| panic!("without {key}: no error"));
        assert!(
            e.contains("config.json") && e.contains(&format!("`{key}`")),
            "{key}: {e}"
        );
    }
    let bools = ["attention_bias", "mlp_bias", "tie_word_embeddings"];
    #[rustfmt::skip]
    let read = [
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
        "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "vocab_size",
        "bos_token_id", "eos_token_id", "attention_bias", "mlp_bias", "tie_word_embeddings",
    ];
    for key in read {
        let other = if bools.contains(&key) {
            json!(1)
        } else {
            json!(true)
        };
        for wrong in [json!("x"), json!([[]]), json!(-1.5), other] {
            let mut c = orig.clone();
            c[key] = wrong.clone();
            let e =
                config_error(d.path(), &c).unwrap_or_else(|| panic!("{key} = {wrong}: no error"));
            assert!(
                e.contains("config.json") && e.contains(key),
                "{key} = {wrong}: {e}"
            );
        }
    }
    fs::write(d.path().join("config.json"), "{\"model_type\": ").unwrap();
    let e = open_and_load(d.path()).unwrap();
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

/// The stories260k tokenizer.json, cut down to its three special tokens.
fn three_token_tokenizer() -> String {
    let text = fs::read_to_string(fixtures().join("stories260k/tokenizer.json")).unwrap();
    let mut t: Value = serde_json::from_str(&text).unwrap();
    t["model"]["vocab"] = json!({"<unk>": 0, "<s>": 1, "</s>": 2});
    t["model"]["merges"] = json!([]);
    t.to_string()
}

#[test]
fn garbage_tokenizer_json_is_an_error_naming_it() {
    let d = hf_dir(true);
    let real = fs::read_to_string(fixtures().join("stories260k/tokenizer.json")).unwrap();
    let garbage = [
        String::new(),
        "{ not json".into(),
        "{}".into(),
        "[1, 2]".into(),
        real[..real.len() / 2].to_string(),
        three_token_tokenizer(),
    ];
    for g in garbage {
        fs::write(d.path().join("tokenizer.json"), &g).unwrap();
        let e = open_and_load(d.path())
            .unwrap_or_else(|| panic!("no error for tokenizer.json {:.40}", g));
        assert!(e.contains("tokenizer.json"), "{:.40}: {e}", g);
    }
}

/// The tokenizers library `expect`s a well-formed decoder and a precompiled normalizer's
/// map: a tokenizer.json cut inside its decoder, or naming a `Precompiled` normalizer without
/// its map, panicked the process.
#[test]
fn tokenizer_json_the_library_would_panic_on_is_an_error() {
    let d = hf_dir(true);
    let real = fs::read_to_string(fixtures().join("stories260k/tokenizer.json")).unwrap();
    let compact = serde_json::from_str::<Value>(&real).unwrap().to_string();
    let at = compact.find("\"decoder\":{").unwrap() + 20;
    let mut v: Value = serde_json::from_str(&real).unwrap();
    v["normalizer"] = json!({"type": "Precompiled"});
    for (bad, cause) in [
        (compact[..at].to_string(), "invalid JSON"),
        (v.to_string(), "Precompiled"),
    ] {
        fs::write(d.path().join("tokenizer.json"), bad).unwrap();
        let e = open_model(d.path())
            .err()
            .expect("a broken tokenizer")
            .to_string();
        assert!(e.contains("tokenizer.json") && e.contains(cause), "{e}");
    }
}

/// Issue 14 #9: a tokenizer of 3 tokens turned the evaluation text into a token or two, and
/// `eval` blamed the text. The tokenizer is now refused when the model is opened.
#[test]
fn a_three_token_tokenizer_is_blamed_not_the_evaluation_text() {
    let d = hf_dir(true);
    fs::write(d.path().join("tokenizer.json"), three_token_tokenizer()).unwrap();
    let e = open_model(d.path())
        .err()
        .expect("a 3-token tokenizer for 512 ids")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("only 3 token ids") && e.contains("512"),
        "{e}"
    );
    let text = fixtures().join("corpora/moby-dick.txt");
    let (ok, _, err) = ddp_run(&[
        "eval",
        "--model",
        d.path().to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--max-tokens",
        "300",
        "--seq-len",
        "64",
    ]);
    assert!(!ok);
    assert!(
        err.contains("tokenizer.json") && !err.contains("evaluation text"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_with_ids_past_the_embedding_is_refused() {
    let d = hf_dir(true);
    let mut c: Value =
        serde_json::from_str(&fs::read_to_string(d.path().join("config.json")).unwrap()).unwrap();
    c["eos_token_id"] = json!(600);
    fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    fs::copy(
        fixtures().join("stories260k/tokenizer.json"),
        d.path().join("tokenizer.json"),
    )
    .unwrap();
    let e = open_model(d.path())
        .err()
        .expect("EOS 600 of 512 ids")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("600") && e.contains("vocab_size 512"),
        "{e}"
    );
}

/// Runs `f` on a thread and fails the test when it takes over 10 s.
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} hangs"))
}

#[test]
fn fifos_inside_a_model_directory_are_refused_not_read_forever() {
    let src = fixtures().join("stories260k");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let d = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            if f != name {
                std::os::unix::fs::symlink(src.join(f), d.path().join(f)).unwrap();
            }
        }
        let ok = std::process::Command::new("mkfifo")
            .arg(d.path().join(name))
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfifo is not available");
            return;
        }
        let dir = d.path().to_path_buf();
        let e = within_10s(name, move || open_model(&dir).err().map(|e| e.to_string()));
        let e = e.unwrap_or_else(|| panic!("a FIFO {name} opened"));
        assert!(e.contains(name) && e.contains("regular file"), "{e}");
    }
}

// ------------------------------------------------------------------------------------------
// Regression cases: loader bugs the fuzzers found

#[test]
fn gguf_sizes_and_offsets_that_overflow_are_errors() {
    let (orig, fields, _) = gguf_fixture();
    let d = scratch_dir();
    let p = d.path().join("big.gguf");
    let name = "blk.0.attn_q.weight";
    let set = |pairs: &[(&str, u64)]| {
        let mut b = orig.clone();
        for (what, v) in pairs {
            let f = field(&fields, &format!("{name}: {what}"));
            write_le(&mut b, f.at, f.width, *v);
        }
        fs::write(&p, b).unwrap();
        open_and_load(&p).expect("an error")
    };
    // 2^32 x 2^32 elements, and an offset at the end of the address space: both overflowed.
    let e = set(&[("ne[0]", 1 << 32), ("ne[1]", 1 << 32)]);
    assert!(e.contains(name) && e.contains("overflow"), "{e}");
    let e = set(&[("offset", u64::MAX - 31)]);
    assert!(e.contains(name) && e.contains("past the end"), "{e}");
    // A zero dimension hid the others' sizes (a stack of 2^40 empty experts was mapped one
    // by one).
    let e = set(&[("ne[1]", 0)]);
    assert!(e.contains(name) && e.contains("zero"), "{e}");
}

#[test]
fn gguf_misaligned_tensor_data_is_refused() {
    let (mut b, fields, _) = gguf_fixture();
    let f = field(&fields, "blk.0.attn_q.weight: offset");
    let v = read_le(&b, f.at, 8);
    // Still inside the file: the weights were read 4 bytes off, silently.
    write_le(&mut b, f.at, 8, v + 4);
    let d = scratch_dir();
    let p = d.path().join("m.gguf");
    fs::write(&p, b).unwrap();
    let e = open_and_load(&p).expect("a misaligned tensor");
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("alignment 32"),
        "{e}"
    );
}

#[test]
fn gguf_one_dimensional_embedding_without_vocab_size_is_an_error() {
    let (orig, fields, head) = gguf_fixture();
    // No vocab_size and no token list (keys renamed), and token_embd.weight made 1-D: its
    // missing second dimension was indexed.
    let mut b = orig.clone();
    for key in ["llama.vocab_size", "tokenizer.ggml.tokens"] {
        let at = b
            .windows(key.len())
            .position(|w| w == key.as_bytes())
            .unwrap();
        b[at + key.len() - 1] = b'X';
    }
    let nd = field(&fields, "token_embd.weight: n_dims");
    write_le(&mut b, nd.at, 4, 1);
    let ne1 = field(&fields, "token_embd.weight: ne[1]").at;
    // Drop ne[1] and pad before the data, which stays where it was.
    assert_eq!((head - 8).div_ceil(32), head.div_ceil(32));
    let mut c = b[..ne1].to_vec();
    c.extend_from_slice(&b[ne1 + 8..head]);
    c.extend_from_slice(&[0; 8]);
    c.extend_from_slice(&b[head..]);
    let d = scratch_dir();
    let p = d.path().join("m.gguf");
    fs::write(&p, c).unwrap();
    let e = open_and_load(&p).expect("no vocabulary size");
    assert!(e.contains("m.gguf") && e.contains("vocab_size"), "{e}");
}

#[test]
fn absurd_layer_counts_are_refused_quickly() {
    let d = hf_dir(true);
    let mut c: Value =
        serde_json::from_str(&fs::read_to_string(d.path().join("config.json")).unwrap()).unwrap();
    c["num_hidden_layers"] = json!(1u64 << 40);
    fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let dir = d.path().to_path_buf();
    let e = within_10s("2^40 layers", move || {
        open_model(&dir).err().map(|e| e.to_string())
    });
    let e = e.expect("2^40 layers");
    assert!(
        e.contains("config.json") && e.contains("num_hidden_layers"),
        "{e}"
    );
    // The same in a GGUF's metadata (a u32 there).
    let (mut b, fields, _) = gguf_fixture();
    let f = field(&fields, "llama.block_count: value");
    write_le(&mut b, f.at, 4, u32::MAX as u64);
    let p = d.path().join("m.gguf");
    fs::write(&p, b).unwrap();
    let e = within_10s("2^32 blocks", move || {
        open_model(&p).err().map(|e| e.to_string())
    });
    let e = e.expect("2^32 blocks");
    assert!(e.contains("m.gguf") && e.contains("block_count"), "{e}");
}

#[test]
fn sizes_whose_parameter_count_overflows_are_refused() {
    let d = hf_dir(true);
    let mut c: Value =
        serde_json::from_str(&fs::read_to_string(d.path().join("config.json")).unwrap()).unwrap();
    // Accepted, then `inspect` overflowed counting 2^40 x 2^40 embedding parameters.
    c["hidden_size"] = json!(1u64 << 40);
    c["vocab_size"] = json!(1u64 << 40);
    fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    let e = open_model(d.path())
        .err()
        .expect("2^80 parameters")
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("2^50 parameters"),
        "{e}"
    );
}
