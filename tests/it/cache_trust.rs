//! What the cache trusts and what it checks: an edited manifest is damaged (not believed), a
//! stray file in a stage's temp dir is not committed, leftovers of killed lock-file writers go,
//! cache directories that are files or not writable are named; and a recipe variable no stage
//! uses is refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ddp::engine::cache::Cache;
use ddp::engine::{Outcome, Reason, Status};

use crate::common::kinds::{registry, Env};

const CHAIN: &str = r#"
name = "chain"
[stages.a]
kind = "text"
value = "abc"
log = "LOG"
[stages.b]
kind = "text"
after = ["a"]
value = "de"
log = "LOG"
"#;

/// Rewrites an entry's manifest.json through `edit` (as a user's editor would: valid JSON).
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// `ddp-run --cache CACHE cache verify`: (success, stdout).
fn cache_verify(cache: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddp-run"))
        .args(["--cache", cache.to_str().unwrap(), "cache", "verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

#[test]
fn an_edited_metric_makes_the_entry_damaged_and_the_run_recomputes_it() {
    let env = Env::new();
    let r = env.recipe("chain.toml", CHAIN);
    let first = env.run(&r);
    assert!(!first.failed());
    let len = first
        .results
        .iter()
        .find(|d| d.name == "a")
        .unwrap()
        .metrics["len"];
    let key = env.keys(&r)["a"].clone();
    let dir = env.cache().entry_dir("text", &key);
    edit_manifest(&dir, |m| m["metrics"]["len"] = 999.0.into());
    let plan = env.plan(&r);
    assert!(
        matches!(&plan["a"], Status::Run(Reason::Damaged(w)) if w.contains("manifest.json was edited")),
        "{:?}",
        plan["a"]
    );
    let (ok, text) = cache_verify(&env.cache_dir());
    let short = &key[..12];
    assert!(!ok, "verify exits 1 on damage:\n{text}");
    assert!(
        text.contains(&format!("DAMAGED text/{short}")) && text.contains("edited"),
        "{text}"
    );
    let s = env.run(&r);
    let a = s.results.iter().find(|d| d.name == "a").unwrap();
    assert_eq!(a.outcome, Outcome::Ran);
    assert_eq!(env.executions("a"), 2);
    // The edited value reaches neither the run's results nor the lock file.
    assert_eq!(a.metrics["len"], len);
    let lock = ddp::engine::lockfile::LockFile::read(&r).unwrap();
    assert_eq!(lock.stages["a"].metrics["len"], len);
    assert!(cache_verify(&env.cache_dir()).0);
}

#[test]
fn a_manifest_whose_digest_was_removed_is_damaged() {
    let env = Env::new();
    let r = env.recipe("chain.toml", CHAIN);
    env.run(&r);
    let key = env.keys(&r)["b"].clone();
    let cache = env.cache();
    edit_manifest(&cache.entry_dir("text", &key), |m| {
        m.as_object_mut().unwrap().remove("digest");
    });
    let damaged = cache.damaged();
    assert!(
        damaged
            .iter()
            .any(|(kind, k, why)| kind == "text" && *k == key && why.contains("no digest")),
        "{damaged:?}"
    );
    // A manifest only re-indented (same content) is intact.
    let akey = env.keys(&r)["a"].clone();
    let p = cache.entry_dir("text", &akey).join("manifest.json");
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    assert_eq!(env.plan(&r)["a"], Status::Cached);
}

#[test]
fn a_stray_file_in_the_temp_dir_is_not_committed() {
    let env = Env::new();
    let r = env.recipe("chain.toml", CHAIN);
    let key = env.keys(&r)["a"].clone();
    let tmp = env.cache().temp_dir("text", &key);
    fs::create_dir_all(tmp.join("junk")).unwrap();
    fs::write(tmp.join("stray.bin"), b"not the stage's").unwrap();
    fs::write(tmp.join("junk/deep.txt"), b"nor this").unwrap();
    assert!(!env.run(&r).failed());
    let cache = env.cache();
    let m = cache.manifest("text", &key).unwrap();
    assert_eq!(m.files.keys().collect::<Vec<_>>(), ["out.txt"]);
    let dir = cache.entry_dir("text", &key);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "out.txt"]);
}

#[test]
fn lock_file_leftovers_of_dead_writers_are_removed() {
    let env = Env::new();
    let r = env.recipe("chain.toml", CHAIN);
    // A PID above the kernel's maximum names no process that can be alive.
    let Ok(max) = fs::read_to_string("/proc/sys/kernel/pid_max") else {
        eprintln!("skipped: no /proc/sys/kernel/pid_max (not Linux)");
        return;
    };
    let dead = max.trim().parse::<u64>().unwrap() + 1;
    let dead_tmp = env.root.join(format!("chain.toml.lock.tmp{dead}"));
    fs::write(&dead_tmp, "half a lock file").unwrap();
    // A writer still at work keeps its temporary file.
    let mut live = Command::new("sleep").arg("30").spawn().unwrap();
    let live_tmp = env.root.join(format!("chain.toml.lock.tmp{}", live.id()));
    fs::write(&live_tmp, "being written").unwrap();
    env.run(&r);
    let (dead_left, live_left) = (dead_tmp.exists(), live_tmp.exists());
    live.kill().unwrap();
    live.wait().unwrap();
    assert!(!dead_left, "a dead writer's {} is left", dead_tmp.display());
    assert!(live_left, "a live writer's temporary file was removed");
    assert!(ddp::engine::lockfile::LockFile::read(&r).is_some());
}

#[test]
fn a_cache_directory_that_is_a_file_is_named() {
    for d in [".locks", ".tmp"] {
        let env = Env::new();
        let root = env.cache_dir();
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join(d), "").unwrap();
        let err = Cache::open(&root).err().expect("opened").chain();
        let want = format!(
            "cache directory {} is a file, expected a directory",
            root.join(d).display()
        );
        assert!(err.contains(&want), "{err}");
    }
    // A kind's directory, found when an entry is committed.
    let env = Env::new();
    let r = env.recipe("chain.toml", CHAIN);
    let cache = env.cache();
    fs::write(cache.root.join("text"), "").unwrap();
    let s = env.run(&r);
    let a = s.results.iter().find(|d| d.name == "a").unwrap();
    let want = format!(
        "cache directory {} is a file, expected a directory",
        cache.root.join("text").display()
    );
    assert!(
        matches!(&a.outcome, Outcome::Failed(e) if e.contains(&want)),
        "{:?}",
        a.outcome
    );
}

/// Makes `dir` unwritable: a read-only tmpfs mounted on it as root (root ignores permission
/// bits), or its permission bits otherwise. `None` when that cannot be done here.
struct Unwritable(PathBuf, bool);

impl Unwritable {
    fn make(dir: &Path) -> Option<Self> {
        fs::create_dir_all(dir).unwrap();
        let uid = Command::new("id").arg("-u").output().ok()?;
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if !root {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
            return Some(Self(dir.to_path_buf(), false));
        }
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(dir.to_path_buf(), true))
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount").arg(&self.0).status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn an_unwritable_cache_directory_is_named() {
    let env = Env::new();
    let root = env.cache_dir();
    let Some(_guard) = Unwritable::make(&root) else {
        eprintln!("skipped: running as root and cannot mount a read-only tmpfs here");
        return;
    };
    let err = Cache::open(&root).err().expect("opened").chain();
    let want = format!(
        "{} is not writable (creating {})",
        root.display(),
        root.join(".tmp").display()
    );
    assert!(err.contains(&want), "{err}");
}

// ---- recipe variables ------------------------------------------------------------------------

#[test]
fn a_variable_no_stage_uses_is_refused_with_a_suggestion() {
    let env = Env::new();
    let body = r#"
[model]
sourse = "m.gguf"
[data]
calibration = "c.txt"
unused = "u.txt"
[vars]
n = 3
[stages.a]
kind = "text"
value = "${model.source} ${data.calibration} ${vars.n}"
"#;
    let p = env.recipe("bad.toml", body);
    let Err(err) = ddp::recipe::load(&p, &registry()) else {
        panic!("accepted");
    };
    let text = err.to_string();
    assert!(
        text.contains("bad.toml:3:1: [model] defines `sourse`, which no stage uses")
            && text.contains("(did you mean `source`?)"),
        "{text}"
    );
    assert!(
        text.contains("bad.toml:6:1: [data] defines `unused`, which no stage uses"),
        "{text}"
    );
    let unused = text.lines().find(|l| l.contains("`unused`")).unwrap();
    assert!(!unused.contains("did you mean"), "{unused}");
    assert!(
        !text.contains("`calibration`") && !text.contains("`n`"),
        "{text}"
    );
}

#[test]
fn variables_used_through_a_pipeline_or_replaced_there_are_accepted() {
    let env = Env::new();
    env.recipe(
        "pl.toml",
        "[data]\ntext = \"pipeline's\"\n[stages.a]\nkind = \"text\"\nvalue = \"${model.source}\"\n[stages.b]\nkind = \"text\"\nafter = [\"a\"]\nvalue = \"${data.text}\"\n",
    );
    // The recipe's [model] is used by the pipeline's stage; the pipeline's [data] name is no
    // longer used once the recipe sets the parameter itself, which is not the recipe's doing.
    let p = env.recipe(
        "r.toml",
        "pipeline = \"pl\"\n[model]\nsource = \"m\"\n[stages.b]\nvalue = \"own\"\n",
    );
    let rec = ddp::recipe::load(&p, &registry()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rec.instance("a").unwrap().params["value"].as_str(),
        Some("m")
    );
}
