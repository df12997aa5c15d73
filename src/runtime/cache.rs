//! The on-disk cache of compiled modules.
//!
//! Compiling `pglite.wasm` with Cranelift takes 10–30 s; loading the compiled artifact with
//! `Module::deserialize_open_file` takes milliseconds and shares the code pages between processes
//! through the page cache. That matters for process-per-test runners such as cargo-nextest.
//!
//! * Location: `$PGLITE_HARNESS_CACHE_DIR`, else `$XDG_CACHE_HOME/pglite-harness`, else
//!   `$HOME/.cache/pglite-harness`; created user-private (0700). A directory that others may write
//!   to is not used.
//! * Key: the wasm's sha256 (computed at build time), the wasmtime version, the engine's
//!   compatibility hash (settings and target), the target triple and the rewrite version.
//! * Writes are atomic (temporary file, `fsync`, `rename`) and serialised by a lock file, so racing
//!   first runs compile once. Each artifact carries its sha256 in a sidecar file; an artifact that
//!   does not match it, or that wasmtime rejects, is rebuilt, never trusted.
//! * Artifacts of other keys (an older wasm, wasmtime or engine setting) that no process loaded
//!   for 30 days are removed when a new artifact is written; loading one marks it used (its
//!   modification time, refreshed at most daily).

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "PGLITE_HARNESS_CACHE_DIR";

/// Errors of the module cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory could not be created or is unsafe to use.
    #[error("module cache directory {path}: {reason}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a cache file failed.
    #[error("module cache file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Where compiled modules are kept.
#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
}

/// How a module was obtained, for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleSource {
    /// Loaded from a compiled artifact on disk.
    Disk,
    /// Compiled in this process (and written to disk when possible).
    Compiled,
}

impl ModuleCache {
    /// The cache at its default location (see the module docs).
    ///
    /// ```no_run
    /// let cache = pglite_harness::runtime::ModuleCache::from_env()?;
    /// println!("compiled modules in {}", cache.dir().display());
    /// # Ok::<(), pglite_harness::runtime::CacheError>(())
    /// ```
    pub fn from_env() -> Result<Self, CacheError> {
        let dir = if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            PathBuf::from(dir).join("pglite-harness")
        } else if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            PathBuf::from(home).join(".cache").join("pglite-harness")
        } else {
            std::env::temp_dir().join(format!("pglite-harness-{}", current_uid()))
        };
        Self::at(dir)
    }

    /// A cache in `dir`, created user-private if missing.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let cache = pglite_harness::runtime::ModuleCache::at(tmp.path().join("modules"))?;
    /// assert!(cache.dir().is_dir());
    /// # Ok::<(), pglite_harness::runtime::CacheError>(())
    /// ```
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        let err = |reason: String| CacheError::Directory {
            path: dir.clone(),
            reason,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
        let meta = fs::metadata(&dir).map_err(|e| err(e.to_string()))?;
        if !meta.is_dir() {
            return Err(err("not a directory".into()));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(err(format!(
                "group or others may write to it (mode {:o}); use a user-private directory",
                meta.permissions().mode() & 0o777
            )));
        }
        Ok(Self { dir })
    }

    /// The directory.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let cache = pglite_harness::runtime::ModuleCache::at(tmp.path())?;
    /// assert_eq!(cache.dir(), tmp.path());
    /// # Ok::<(), pglite_harness::runtime::CacheError>(())
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the compiled form of `wasm` (named `name`, with sha256 `wasm_sha256`), compiling
    /// and storing it on a miss. `prepare` turns the wasm into what is compiled (the rewrite).
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        name: &str,
        wasm_sha256: &str,
        prepare: impl FnOnce() -> wasmtime::Result<Vec<u8>>,
    ) -> wasmtime::Result<(Module, ModuleSource)> {
        let key = cache_key(engine, wasm_sha256);
        let artifact = self.dir.join(format!("{name}-{key}.cwasm"));
        if let Some(module) = self.try_load(engine, &artifact) {
            return Ok((module, ModuleSource::Disk));
        }
        // Serialise compilation between processes: the second one waits, then finds the file.
        let lock_path = self.dir.join(format!("{name}-{key}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| CacheError::Io {
                path: lock_path.clone(),
                source,
            })?;
        lock.lock().map_err(|source| CacheError::Io {
            path: lock_path.clone(),
            source,
        })?;
        if let Some(module) = self.try_load(engine, &artifact) {
            return Ok((module, ModuleSource::Disk));
        }
        tracing::info!(artifact = %artifact.display(), "compiling {name} (once per machine; takes 10-30 s)");
        let module = Module::new(engine, prepare()?)?;
        if let Err(e) = write_artifact(&artifact, &module.serialize()?) {
            tracing::warn!("could not store the compiled module: {e}");
        }
        drop(lock);
        prune_unused(&self.dir, name, UNUSED_ARTIFACT_LIFETIME);
        Ok((module, ModuleSource::Compiled))
    }

    fn try_load(&self, engine: &Engine, artifact: &Path) -> Option<Module> {
        let mut file = File::open(artifact).ok()?;
        let expected = fs::read_to_string(sidecar(artifact)).ok()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        if hex(&hasher.finalize()) != expected.trim() {
            tracing::warn!(artifact = %artifact.display(), "compiled module does not match its checksum; rebuilding");
            return None;
        }
        // SAFETY: the file was written by `write_artifact` in a user-private directory and its
        // contents match the checksum recorded when it was written; it is replaced only by atomic
        // renames, so the open file (and the mapping made from it) never changes underneath us.
        match unsafe { Module::deserialize_open_file(engine, file) } {
            Ok(module) => {
                mark_used(artifact);
                Some(module)
            }
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), "compiled module rejected ({e}); rebuilding");
                None
            }
        }
    }
}

/// Artifacts no process loaded for this long are removed when a new one is written: each is
/// ~25 MB, and every new wasm, wasmtime or engine setting makes a new one.
const UNUSED_ARTIFACT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Records that `artifact` was loaded (its modification time), at most once a day.
fn mark_used(artifact: &Path) {
    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let stale = fs::metadata(artifact)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age > DAY);
    if stale {
        let _ = File::open(artifact).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }
}

/// Removes the artifacts of module `name` (with their checksum and lock files) not loaded for
/// `lifetime`. A process that still maps one keeps its mapping.
fn prune_unused(dir: &Path, name: &str, lifetime: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}-");
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if !file_name.starts_with(&prefix) || !file_name.ends_with(".cwasm") {
            continue;
        }
        let unused_for = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if unused_for.is_none_or(|age| age < lifetime) {
            continue;
        }
        for file in [sidecar(&path), path.with_extension("lock"), path.clone()] {
            let _ = fs::remove_file(file);
        }
        tracing::debug!(artifact = %path.display(), "removed a compiled module unused for 30 days");
    }
}

fn sidecar(artifact: &Path) -> PathBuf {
    artifact.with_extension("cwasm.sha256")
}

fn write_artifact(artifact: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let write = |path: &Path, contents: &[u8]| -> Result<(), CacheError> {
        let io = |source| CacheError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(contents).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    };
    write(&sidecar(artifact), hex(&Sha256::digest(bytes)).as_bytes())?;
    write(artifact, bytes)
}

/// The part of the file name that changes whenever a compiled artifact would not fit.
fn cache_key(engine: &Engine, wasm_sha256: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    super::rewrite::REWRITE_VERSION.hash(&mut hasher);
    std::env::consts::ARCH.hash(&mut hasher);
    std::env::consts::OS.hash(&mut hasher);
    format!(
        "{}-wasmtime{}-{:016x}",
        &wasm_sha256[..16.min(wasm_sha256.len())],
        WASMTIME_VERSION,
        hasher.finish()
    )
}

/// The wasmtime version this crate is built against (pinned in Cargo.toml).
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid module: `(func (export "f") (result i32) i32.const 7)`.
    fn tiny_wasm() -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, TypeSection,
            ValType,
        };
        let mut module = wasm_encoder::Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], [ValType::I32]);
        module.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        module.section(&funcs);
        let mut exports = ExportSection::new();
        exports.export("f", ExportKind::Func, 0);
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::I32Const(7))
            .instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        module.finish()
    }

    fn load(cache: &ModuleCache, engine: &Engine) -> ModuleSource {
        let wasm = tiny_wasm();
        let sha = hex(&Sha256::digest(&wasm));
        let (module, source) = cache
            .load_or_compile(engine, "tiny", &sha, || Ok(wasm.clone()))
            .unwrap();
        assert!(module.exports().any(|e| e.name() == "f"));
        source
    }

    fn artifact(cache: &ModuleCache) -> PathBuf {
        fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .expect("an artifact was written")
    }

    #[test]
    fn a_miss_compiles_and_stores_then_later_loads_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::at(dir.path().join("cache")).unwrap();
        let engine = Engine::default();
        assert_eq!(load(&cache, &engine), ModuleSource::Compiled);
        assert_eq!(load(&cache, &engine), ModuleSource::Disk);
        let mode = fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the cache directory is user-private");
    }

    #[test]
    fn a_corrupt_artifact_is_rebuilt_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::at(dir.path()).unwrap();
        let engine = Engine::default();
        load(&cache, &engine);
        let path = artifact(&cache);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load(&cache, &engine), ModuleSource::Compiled);
        assert_eq!(
            load(&cache, &engine),
            ModuleSource::Disk,
            "the rebuilt artifact is good"
        );
    }

    #[test]
    fn a_foreign_file_with_a_matching_checksum_is_rejected_by_wasmtime_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::at(dir.path()).unwrap();
        let engine = Engine::default();
        load(&cache, &engine);
        let path = artifact(&cache);
        let foreign = b"\x7fELF this is not a wasmtime artifact".to_vec();
        fs::write(&path, &foreign).unwrap();
        fs::write(sidecar(&path), hex(&Sha256::digest(&foreign))).unwrap();
        assert_eq!(load(&cache, &engine), ModuleSource::Compiled);
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = ModuleCache::at(dir.path()).unwrap_err();
        assert!(err.to_string().contains("group or others may write"), "{err}");
    }

    #[test]
    fn artifacts_of_other_keys_unused_for_a_month_are_removed_when_one_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::at(dir.path()).unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(31 * 24 * 3600);
        let old = dir.path().join("tiny-oldkey.cwasm");
        let recent = dir.path().join("tiny-recentkey.cwasm");
        let other_module = dir.path().join("other-oldkey.cwasm");
        for path in [&old, &recent, &other_module] {
            fs::write(path, b"an artifact of another key").unwrap();
            fs::write(sidecar(path), "checksum").unwrap();
        }
        fs::write(old.with_extension("lock"), b"").unwrap();
        for path in [&old, &other_module] {
            File::open(path).unwrap().set_modified(long_ago).unwrap();
        }

        assert_eq!(load(&cache, &Engine::default()), ModuleSource::Compiled);
        assert!(!old.exists() && !sidecar(&old).exists() && !old.with_extension("lock").exists());
        assert!(recent.exists() && sidecar(&recent).exists(), "used lately: kept");
        assert!(
            other_module.exists(),
            "another module's artifacts are not this one's to prune"
        );
        let tiny: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tiny-") && n.ends_with(".cwasm"))
            .collect();
        assert_eq!(tiny.len(), 2, "the recent artifact and the new one: {tiny:?}");
    }

    #[test]
    fn loading_an_artifact_marks_it_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::at(dir.path()).unwrap();
        let engine = Engine::default();
        load(&cache, &engine);
        let path = artifact(&cache);
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 24 * 3600);
        File::open(&path).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(load(&cache, &engine), ModuleSource::Disk);
        let age = fs::metadata(&path)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap();
        assert!(age < std::time::Duration::from_secs(3600), "{age:?}");
    }

    #[test]
    fn keys_differ_between_engine_settings() {
        let wasm_sha = "ab".repeat(32);
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&config).unwrap();
        assert_ne!(
            cache_key(&Engine::default(), &wasm_sha),
            cache_key(&other, &wasm_sha)
        );
        assert!(cache_key(&other, &wasm_sha).contains("wasmtime48.0.8"));
    }
}
