//! The Emscripten host for wasmtime: one shared engine and compiled module per process, the
//! imports of `pglite.wasm`, setjmp/longjmp, side-module loading.
//!
//! [`Runtime::global`] compiles (or loads from the [`ModuleCache`]) `pglite.wasm` once per process
//! and keeps a pre-linked instance template; every backend instantiates from it in its own store.

mod cache;
mod dylink;
pub(crate) mod guest;
mod guest_error;
mod imports;
mod instance;
mod interrupt;
mod memory;
mod rewrite;
pub(crate) mod sjlj;
mod snapshot_file;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, OptLevel};

pub use cache::{CACHE_DIR_ENV, CacheError, ModuleCache, ModuleSource};
pub(crate) use instance::{CallError, InstanceSnapshot, PgInstance};
pub(crate) use interrupt::InterruptFlags;
pub(crate) use memory::MemoryImage;
pub(crate) use rewrite::REWRITE_VERSION;
pub use rewrite::RewriteError;
pub use snapshot_file::SnapshotFileError;
pub(crate) use snapshot_file::{load as load_snapshot, save as save_snapshot};
pub(crate) use state::{HostState, MoreInput};

use crate::assets;

/// Native stack available to wasm code. Postgres recurses deeply (the planner, expression
/// evaluation); the official build runs on V8's ~1 MiB. Backends run on threads with
/// [`BACKEND_THREAD_STACK`] so that this limit is hit (a clean trap) before the thread's end.
pub(crate) const MAX_WASM_STACK: usize = 32 << 20;
/// Stack size of the threads that run backends.
pub(crate) const BACKEND_THREAD_STACK: usize = 48 << 20;

/// Errors of the runtime layer: building the engine, compiling or loading the module.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine could not be configured.
    #[error("wasmtime engine: {0}")]
    Engine(String),
    /// `pglite.wasm` could not be rewritten for this host.
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    /// Compiling, loading or linking the module failed.
    #[error("PGlite module: {0}")]
    Module(String),
    /// An earlier attempt in this process failed; the reason is repeated.
    #[error("the PGlite runtime is unavailable: {0}")]
    Unavailable(String),
}

/// The process-wide engine, compiled module and instance template.
pub struct Runtime {
    engine: Engine,
    instance_pre: InstancePre<HostState>,
    /// The type of the module's linear memory (the memory its images are for).
    memory_type: wasmtime::MemoryType,
    linker: Linker<HostState>,
    /// Export name -> slot the main module's element segment gives that function.
    main_table_slots: HashMap<String, u32>,
    /// Compiled side modules by the sha256 of their bytes.
    side_modules: Mutex<HashMap<[u8; 32], Module>>,
    cache: Option<ModuleCache>,
    source: ModuleSource,
    load_time: Duration,
    /// The memory of a fresh instance: the module's data segments laid out.
    initial_image: Arc<MemoryImage>,
    /// The mutable globals the rewrite exports: (global index, export name).
    mutable_globals: Vec<(u32, String)>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("source", &self.source)
            .field("load_time", &self.load_time)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// The runtime of this process, created on first use: the compiled module is loaded from the
    /// on-disk cache, or compiled (10–30 s) and stored there.
    ///
    /// ```no_run
    /// let runtime = pglite_harness::runtime::Runtime::global()?;
    /// println!("module ready in {:?} ({:?})", runtime.load_time(), runtime.module_source());
    /// # Ok::<(), pglite_harness::runtime::RuntimeError>(())
    /// ```
    pub fn global() -> Result<&'static Runtime, RuntimeError> {
        static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                Runtime::new(
                    ModuleCache::from_env()
                        .map_err(|e| tracing::warn!("{e}; compiling in memory only"))
                        .ok(),
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| RuntimeError::Unavailable(reason.clone()))
    }

    /// A runtime with its own engine, using `cache` for compiled modules (none: compile in memory).
    ///
    /// ```no_run
    /// use pglite_harness::runtime::{ModuleCache, Runtime};
    ///
    /// let runtime = Runtime::new(Some(ModuleCache::at("/tmp/pglite-modules")?))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(cache: Option<ModuleCache>) -> Result<Runtime, RuntimeError> {
        let started = Instant::now();
        let engine = Engine::new(&engine_config()).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let prepare = || rewrite::prepare_main_module(assets::PGLITE_WASM).map_err(wasmtime::Error::new);
        let (module, source) = match &cache {
            Some(cache) => cache
                .load_or_compile(&engine, "pglite", assets::PGLITE_WASM_SHA256, prepare)
                .map_err(|e| RuntimeError::Module(format!("{e:#}")))?,
            None => {
                let wasm = rewrite::prepare_main_module(assets::PGLITE_WASM)?;
                (
                    Module::new(&engine, wasm).map_err(|e| RuntimeError::Module(format!("{e:#}")))?,
                    ModuleSource::Compiled,
                )
            }
        };
        let mutable_globals = module
            .exports()
            .filter_map(|export| {
                let index = export
                    .name()
                    .strip_prefix(rewrite::GLOBAL_EXPORT_PREFIX)?
                    .parse()
                    .ok()?;
                Some((index, export.name().to_owned()))
            })
            .collect();
        let linker = imports::linker(&engine, &module).map_err(|e| RuntimeError::Module(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&module)
            .map_err(|e| RuntimeError::Module(format!("{e:#}")))?;
        let memory_type = match module.get_export("memory") {
            Some(wasmtime::ExternType::Memory(ty)) => ty,
            _ => return Err(RuntimeError::Module("pglite.wasm exports no memory".into())),
        };
        let main_table_slots =
            table_slots(assets::PGLITE_WASM).map_err(|e| RuntimeError::Module(e.to_string()))?;
        let segments = rewrite::initial_memory_image(assets::PGLITE_WASM)?;
        let extent = segments
            .iter()
            .map(|(at, bytes)| *at as usize + bytes.len())
            .max()
            .unwrap_or(0);
        let initial_image = Arc::new(
            MemoryImage::from_segments(&segments, extent)
                .map_err(|e| RuntimeError::Module(format!("cannot lay out the initial memory: {e}")))?,
        );
        let load_time = started.elapsed();
        tracing::debug!(?source, ?load_time, "PGlite runtime ready");
        Ok(Runtime {
            engine,
            instance_pre,
            memory_type,
            linker,
            main_table_slots,
            side_modules: Mutex::new(HashMap::new()),
            cache,
            source,
            load_time,
            initial_image,
            mutable_globals,
        })
    }

    /// Whether the module came from the disk cache or was compiled by this process.
    ///
    /// ```no_run
    /// use pglite_harness::runtime::{ModuleSource, Runtime};
    ///
    /// if Runtime::global()?.module_source() == ModuleSource::Compiled {
    ///     eprintln!("compiled pglite.wasm; later processes load it from the cache");
    /// }
    /// # Ok::<(), pglite_harness::runtime::RuntimeError>(())
    /// ```
    pub fn module_source(&self) -> ModuleSource {
        self.source
    }

    /// How long creating the runtime took (engine, module load or compile, linking).
    ///
    /// ```no_run
    /// let runtime = pglite_harness::runtime::Runtime::global()?;
    /// println!("module ready in {:?}", runtime.load_time());
    /// # Ok::<(), pglite_harness::runtime::RuntimeError>(())
    /// ```
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The memory image a fresh instance starts from.
    pub(crate) fn initial_image(&self) -> &Arc<MemoryImage> {
        &self.initial_image
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        &self.instance_pre
    }

    /// The type of the module's linear memory.
    pub(crate) fn memory_type(&self) -> &wasmtime::MemoryType {
        &self.memory_type
    }

    /// The mutable globals a snapshot records: (global index, export name), found once here
    /// rather than by walking the 2,000 exports of every new instance.
    pub(crate) fn mutable_globals(&self) -> &[(u32, String)] {
        &self.mutable_globals
    }

    pub(crate) fn main_table_slot(&self, export: &str) -> Option<u32> {
        self.main_table_slots.get(export).copied()
    }

    /// The compiled form of a side module (`.so`), compiled once per process and cached on disk.
    pub(crate) fn side_module(&self, wasm: &[u8]) -> wasmtime::Result<Module> {
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        if let Some(module) = self.side_modules.lock().expect("side module cache").get(&hash) {
            return Ok(module.clone());
        }
        let module = match &self.cache {
            Some(cache) => {
                cache
                    .load_or_compile(&self.engine, "side", &cache::hex(&hash), || Ok(wasm.to_vec()))?
                    .0
            }
            None => Module::new(&self.engine, wasm)?,
        };
        self.side_modules
            .lock()
            .expect("side module cache")
            .insert(hash, module.clone());
        Ok(module)
    }
}

fn engine_config() -> Config {
    let mut config = Config::new();
    config
        .cranelift_opt_level(OptLevel::Speed)
        // wasmtime requires the (unused) async stack to be at least the wasm stack.
        .async_stack_size(MAX_WASM_STACK + (1 << 20))
        .max_wasm_stack(MAX_WASM_STACK)
        // Postgres' errors unwind through longjmp (a host error); capturing wasm backtraces for
        // each would multiply their cost.
        .wasm_backtrace_max_frames(None)
        // Memories start from images this crate maps itself (see `memory`): a fresh boot from the
        // data segments, a clone from a snapshot.
        .with_host_memory(Arc::new(memory::ImageMemoryCreator))
        .memory_init_cow(false);
    // For `perf record`: `PGLITE_HARNESS_PERFMAP=1` writes /tmp/perf-<pid>.map naming the
    // compiled wasm functions.
    if std::env::var_os(PERFMAP_ENV).is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Set to `1` to have wasmtime write a perf map of the compiled wasm functions (for `perf`).
const PERFMAP_ENV: &str = "PGLITE_HARNESS_PERFMAP";

/// Maps each exported function of `wasm` to the table slot its active element segment gives it.
fn table_slots(wasm: &[u8]) -> Result<HashMap<String, u32>, wasmparser::BinaryReaderError> {
    use wasmparser::{ElementItems, ElementKind, ExternalKind, Operator, Parser, Payload};
    let mut exports: HashMap<u32, Vec<String>> = HashMap::new();
    let mut slot_of_func: HashMap<u32, u32> = HashMap::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    if export.kind == ExternalKind::Func {
                        exports
                            .entry(export.index)
                            .or_default()
                            .push(export.name.to_owned());
                    }
                }
            }
            Payload::ElementSection(reader) => {
                for element in reader {
                    let element = element?;
                    let ElementKind::Active { offset_expr, .. } = element.kind else {
                        continue;
                    };
                    let Some(Ok(Operator::I32Const { value: offset })) =
                        offset_expr.get_operators_reader().into_iter().next()
                    else {
                        continue;
                    };
                    if let ElementItems::Functions(funcs) = element.items {
                        for (i, func) in funcs.into_iter().enumerate() {
                            slot_of_func.entry(func?).or_insert(offset as u32 + i as u32);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(exports
        .into_iter()
        .filter_map(|(func, names)| {
            slot_of_func
                .get(&func)
                .map(|&slot| names.into_iter().map(move |n| (n, slot)))
        })
        .flatten()
        .collect())
}
