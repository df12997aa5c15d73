//! A dynamic linker for Emscripten side modules (`.so` files with a `dylink.0` section), the part
//! of the Emscripten runtime that `dlopen` reaches through `_dlopen_js`/`_dlsym_js` (§8 of the ABI
//! notes). It loads `plpgsql.so` (every `DO` block and PL/pgSQL function) and the `.so` files of
//! extension bundles (`CREATE EXTENSION hstore`, ...).
//!
//! For each library: memory from the main module's `calloc`, a range of new table slots, imports
//! resolved against the main module's exports, the host's own imports and libraries loaded before
//! (one global namespace), `GOT.mem`/`GOT.func` globals shared by every module of the instance,
//! then `__wasm_apply_data_relocs` and `__wasm_call_ctors`.

use std::collections::HashMap;

use wasmtime::{
    AsContextMut, Caller, Extern, Func, FuncType, Global, GlobalType, Instance, Mutability, Ref, Val, ValType,
};

use super::Runtime;
use super::guest;
use super::guest_error;
use super::imports::with_memory;
use super::sjlj;
use super::snapshot_file::{Decoder, Encoder, SnapshotFileError, invalid};
use super::state::HostState;

type C<'a> = Caller<'a, HostState>;

/// Anything the linker can work through: a `Caller` (inside `dlopen`) or the `Store` (replaying
/// a snapshot's libraries).
pub(crate) trait Ctx: AsContextMut<Data = HostState> {
    fn state(&self) -> &HostState;
    fn state_mut(&mut self) -> &mut HostState;
}

impl Ctx for Caller<'_, HostState> {
    fn state(&self) -> &HostState {
        self.data()
    }
    fn state_mut(&mut self) -> &mut HostState {
        self.data_mut()
    }
}

impl Ctx for wasmtime::Store<HostState> {
    fn state(&self) -> &HostState {
        self.data()
    }
    fn state_mut(&mut self) -> &mut HostState {
        self.data_mut()
    }
}

/// Offset of the file name (an inline C string) in Emscripten's `struct dso`.
const DSO_NAME_OFFSET: i32 = 36;

/// Side modules loaded into one instance, and the global offset table they share.
#[derive(Default)]
pub(crate) struct Dylinker {
    libraries: Vec<Library>,
    by_path: HashMap<String, usize>,
    by_handle: HashMap<i32, usize>,
    /// `GOT.mem.X` and `GOT.func.X` globals, and whether each has been given its value.
    got: HashMap<(GotKind, String), (Global, bool)>,
    /// Table slots handed out for functions, so a function gets one slot however often asked.
    slots: HashMap<(Option<usize>, String), u32>,
    /// What changed the table, in order: replayed to rebuild it in a restored instance.
    events: Vec<LinkEvent>,
}

/// A step of the linker that a restored instance must repeat.
#[derive(Debug, Clone)]
enum LinkEvent {
    /// A library was loaded at these bases.
    Load {
        path: String,
        memory_base: u32,
        memory_size: u32,
        table_base: u32,
    },
    /// A function got a new table slot.
    Slot {
        library: Option<usize>,
        name: String,
        slot: u32,
    },
}

/// The linker's state in a snapshot, independent of any store.
#[derive(Debug, Clone, Default)]
pub(crate) struct DylinkSnapshot {
    events: Vec<LinkEvent>,
    by_handle: Vec<(i32, usize)>,
    got: Vec<(GotKind, String, i32, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GotKind {
    Mem,
    Func,
}

struct Library {
    path: String,
    instance: Instance,
    memory_base: u32,
}

impl DylinkSnapshot {
    /// Writes the records for a saved snapshot.
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u32(self.events.len() as u32);
        for event in &self.events {
            match event {
                LinkEvent::Load {
                    path,
                    memory_base,
                    memory_size,
                    table_base,
                } => {
                    e.u8(0);
                    e.str(path);
                    e.u32(*memory_base);
                    e.u32(*memory_size);
                    e.u32(*table_base);
                }
                LinkEvent::Slot { library, name, slot } => {
                    e.u8(1);
                    e.u32(library.map_or(u32::MAX, |l| l as u32));
                    e.str(name);
                    e.u32(*slot);
                }
            }
        }
        e.u32(self.by_handle.len() as u32);
        for (handle, index) in &self.by_handle {
            e.u32(*handle as u32);
            e.u32(*index as u32);
        }
        e.u32(self.got.len() as u32);
        for (kind, name, value, done) in &self.got {
            e.u8(matches!(kind, GotKind::Func) as u8);
            e.str(name);
            e.u32(*value as u32);
            e.u8(*done as u8);
        }
    }

    /// Reads what [`encode`](Self::encode) wrote, checking that every reference is in range.
    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<DylinkSnapshot, SnapshotFileError> {
        let mut events = Vec::new();
        let mut libraries = 0usize;
        for _ in 0..d.count()? {
            events.push(match d.u8()? {
                0 => {
                    libraries += 1;
                    LinkEvent::Load {
                        path: d.string()?,
                        memory_base: d.u32()?,
                        memory_size: d.u32()?,
                        table_base: d.u32()?,
                    }
                }
                1 => {
                    let library = match d.u32()? {
                        u32::MAX => None,
                        l if (l as usize) < libraries => Some(l as usize),
                        _ => return Err(invalid("a table slot of a library not loaded yet")),
                    };
                    LinkEvent::Slot {
                        library,
                        name: d.string()?,
                        slot: d.u32()?,
                    }
                }
                _ => return Err(invalid("an unknown linker record")),
            });
        }
        let by_handle = (0..d.count()?)
            .map(|_| {
                let (handle, index) = (d.u32()? as i32, d.u32()? as usize);
                if index >= libraries {
                    return Err(invalid("a dlopen handle of a library not loaded"));
                }
                Ok((handle, index))
            })
            .collect::<Result<_, _>>()?;
        let got = (0..d.count()?)
            .map(|_| {
                let kind = if d.u8()? == 1 { GotKind::Func } else { GotKind::Mem };
                Ok((kind, d.string()?, d.u32()? as i32, d.u8()? == 1))
            })
            .collect::<Result<_, _>>()?;
        Ok(DylinkSnapshot {
            events,
            by_handle,
            got,
        })
    }
}

/// Records the linker's state of the instance in `store` (between calls).
pub(crate) fn snapshot(store: &mut impl Ctx) -> DylinkSnapshot {
    let dylinker = &store.state().dylinker;
    let events = dylinker.events.clone();
    let by_handle = dylinker.by_handle.iter().map(|(&h, &i)| (h, i)).collect();
    let got: Vec<(GotKind, String, Global, bool)> = dylinker
        .got
        .iter()
        .map(|((kind, name), (global, done))| (*kind, name.clone(), *global, *done))
        .collect();
    let got = got
        .into_iter()
        .map(|(kind, name, global, done)| {
            let value = global.get(&mut *store).i32().unwrap_or(0);
            (kind, name, value, done)
        })
        .collect();
    DylinkSnapshot {
        events,
        by_handle,
        got,
    }
}

/// Rebuilds, in a restored instance, the libraries and table slots `snapshot` recorded: each
/// library is instantiated again at its old bases, without running its initialisers, and its
/// memory (which instantiation overwrote with its data segments) is put back from `image`.
pub(crate) fn replay(
    store: &mut impl Ctx,
    snapshot: &DylinkSnapshot,
    image: &super::MemoryImage,
) -> Result<(), String> {
    for (kind, name, value, done) in &snapshot.got {
        let ty = GlobalType::new(ValType::I32, Mutability::Var);
        let global = Global::new(&mut *store, ty, Val::I32(*value)).map_err(|e| e.to_string())?;
        store
            .state_mut()
            .dylinker
            .got
            .insert((*kind, name.clone()), (global, *done));
    }
    for event in &snapshot.events {
        match event {
            LinkEvent::Load {
                path,
                memory_base,
                memory_size,
                table_base,
            } => {
                let placed = Placement {
                    memory_base: *memory_base,
                    table_base: *table_base,
                };
                let index = load_at(store, path, Some(placed)).map_err(|e| match e {
                    LoadError::Message(m) => format!("cannot reload {path}: {m}"),
                    LoadError::Guest(e) => format!("cannot reload {path}: {e}"),
                })?;
                store.state_mut().dylinker.by_path.insert(path.clone(), index);
                let memory = store.state().exports().memory;
                let range = *memory_base as usize..(*memory_base + *memory_size) as usize;
                let bytes = memory
                    .data_mut(&mut *store)
                    .get_mut(range)
                    .ok_or_else(|| format!("{path}'s memory lies outside the linear memory"))?;
                image
                    .read_at(bytes, *memory_base as usize)
                    .map_err(|e| format!("cannot restore {path}'s memory: {e}"))?;
            }
            LinkEvent::Slot { library, name, slot } => {
                let func = match library {
                    None => {
                        let main = store.state().exports().instance;
                        main.get_func(&mut *store, name)
                    }
                    Some(index) => {
                        let instance = store.state().dylinker.libraries[*index].instance;
                        instance.get_func(&mut *store, name)
                    }
                }
                .ok_or_else(|| format!("the function {name} of a table slot is gone"))?;
                let got = slot_for(store, *library, name, func).map_err(|e| e.to_string())?;
                if got != *slot {
                    return Err(format!("{name} got table slot {got}, the snapshot had {slot}"));
                }
            }
        }
    }
    store.state_mut().dylinker.by_handle = snapshot.by_handle.iter().copied().collect();
    Ok(())
}

/// Where a replayed library goes.
#[derive(Clone, Copy)]
struct Placement {
    memory_base: u32,
    table_base: u32,
}

/// The memory and table needs of a side module, from its `dylink.0` section.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DylinkInfo {
    pub memory_size: u32,
    pub memory_align: u32,
    pub table_size: u32,
    pub table_align: u32,
    pub needed: Vec<String>,
}

/// Reads the `dylink.0` custom section, which must come first in a side module.
pub(crate) fn dylink_info(wasm: &[u8]) -> Result<DylinkInfo, String> {
    use wasmparser::{Dylink0Subsection, KnownCustom, Parser, Payload};
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version { .. } => continue,
            Payload::CustomSection(section) => {
                let KnownCustom::Dylink0(reader) = section.as_known() else {
                    break;
                };
                let mut info = DylinkInfo::default();
                for sub in reader {
                    match sub.map_err(|e| e.to_string())? {
                        Dylink0Subsection::MemInfo(m) => {
                            info.memory_size = m.memory_size;
                            info.memory_align = m.memory_alignment;
                            info.table_size = m.table_size;
                            info.table_align = m.table_alignment;
                        }
                        Dylink0Subsection::Needed(libs) => {
                            info.needed = libs.iter().map(|s| s.to_string()).collect();
                        }
                        _ => {}
                    }
                }
                return Ok(info);
            }
            _ => break,
        }
    }
    Err("not an Emscripten side module (no dylink.0 section first)".into())
}

/// `_dlopen_js(struct dso *handle) -> bool`.
pub(crate) fn dlopen(c: &mut C<'_>, handle: i32) -> wasmtime::Result<i32> {
    let path = with_memory(c, |mem, _| {
        guest::cstr(mem, handle + DSO_NAME_OFFSET).map(|p| p.to_vec())
    });
    let path = match path {
        Ok(p) => String::from_utf8_lossy(&p).into_owned(),
        Err(_) => return Ok(0),
    };
    if let Some(&index) = c.data().dylinker.by_path.get(&path) {
        c.data_mut().dylinker.by_handle.insert(handle, index);
        return Ok(1);
    }
    match load(c, &path) {
        Ok(index) => {
            c.data_mut().dylinker.by_handle.insert(handle, index);
            Ok(1)
        }
        Err(LoadError::Message(message)) => {
            tracing::debug!(target: "pglite_harness::dylink", "dlopen {path} failed: {message}");
            set_error(c, &format!("could not load {path}: {message}"))?;
            Ok(0)
        }
        Err(LoadError::Guest(e)) => Err(e),
    }
}

/// `_dlsym_js(handle, symbol, *symbol_index) -> address or table slot`.
pub(crate) fn dlsym(c: &mut C<'_>, handle: i32, symbol: i32, _index: i32) -> wasmtime::Result<i32> {
    let name = with_memory(c, |mem, _| {
        guest::cstr(mem, symbol).map(|s| String::from_utf8_lossy(s).into_owned())
    });
    let Ok(name) = name else { return Ok(0) };
    let dylinker = &c.data().dylinker;
    let candidates: Vec<usize> = match dylinker.by_handle.get(&handle) {
        Some(&index) => vec![index],
        None => (0..dylinker.libraries.len()).collect(),
    };
    for index in candidates {
        let library = &c.data().dylinker.libraries[index];
        let (instance, base) = (library.instance, library.memory_base);
        match instance.get_export(&mut *c, &name) {
            Some(Extern::Func(func)) => return Ok(slot_for(c, Some(index), &name, func)? as i32),
            Some(Extern::Global(global)) => {
                return Ok(global.get(&mut *c).i32().unwrap_or(0).wrapping_add(base as i32));
            }
            _ => {}
        }
    }
    let lib = c
        .data()
        .dylinker
        .by_handle
        .get(&handle)
        .map(|&i| c.data().dylinker.libraries[i].path.clone());
    set_error(
        c,
        &format!(
            "Tried to lookup unknown symbol \"{name}\" in dynamic lib: {}",
            lib.unwrap_or_default()
        ),
    )?;
    Ok(0)
}

enum LoadError {
    /// The library cannot be loaded; `dlerror` reports this.
    Message(String),
    /// The guest exited or trapped while initialising it; propagates as is.
    Guest(wasmtime::Error),
}

impl From<String> for LoadError {
    fn from(message: String) -> Self {
        LoadError::Message(message)
    }
}

fn load(c: &mut impl Ctx, path: &str) -> Result<usize, LoadError> {
    load_at(c, path, None)
}

/// Loads a library; with `placed`, at those bases and without its initialisers (a replay: its
/// needed libraries were replayed before it).
fn load_at(c: &mut impl Ctx, path: &str, placed: Option<Placement>) -> Result<usize, LoadError> {
    let bytes = c
        .state()
        .vfs
        .read_file(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let info = dylink_info(&bytes)?;
    for needed in info.needed.iter().filter(|_| placed.is_none()) {
        let needed_path = format!("/pglite/lib/postgresql/{needed}");
        if !c.state().dylinker.by_path.contains_key(&needed_path) {
            let index = load(c, &needed_path)?;
            c.state_mut().dylinker.by_path.insert(needed_path, index);
        }
    }
    let runtime = Runtime::global().map_err(|e| e.to_string())?;
    let module = runtime
        .side_module(&bytes)
        .map_err(|e| format!("cannot compile it: {e}"))?;
    let exports = c.state().exports().clone();

    // Memory and table space of its own.
    let memory_base = if let Some(placed) = placed {
        placed.memory_base
    } else if info.memory_size > 0 {
        let align = 1i32 << info.memory_align.min(16);
        let raw = exports
            .calloc
            .call(&mut *c, (info.memory_size as i32 + align, 1))
            .map_err(LoadError::Guest)?;
        if raw == 0 {
            return Err(format!("out of memory allocating {} bytes for it", info.memory_size).into());
        }
        ((raw + align - 1) & !(align - 1)) as u32
    } else {
        0
    };
    let table_base = exports.table.size(&*c) as u32;
    if let Some(placed) = placed
        && placed.table_base != table_base
    {
        return Err(format!(
            "the table has {table_base} slots, the snapshot placed it at {}",
            placed.table_base
        )
        .into());
    }
    if info.table_size > 0 {
        exports
            .table
            .grow(&mut *c, u64::from(info.table_size), Ref::Func(None))
            .map_err(|e| format!("cannot grow the table: {e}"))?;
    }

    let mut imports = Vec::new();
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        let ext = match (m, name, import.ty()) {
            ("env", "memory", _) => Extern::Memory(exports.memory),
            ("env", "__indirect_function_table", _) => Extern::Table(exports.table),
            ("env", "__stack_pointer", _) => Extern::Global(exports.stack_pointer),
            ("env", "__memory_base", _) => Extern::Global(const_i32(c, memory_base)?),
            ("env", "__table_base", _) => Extern::Global(const_i32(c, table_base)?),
            ("GOT.mem", _, _) => Extern::Global(got_entry(c, GotKind::Mem, name)?),
            ("GOT.func", _, _) => Extern::Global(got_entry(c, GotKind::Func, name)?),
            (_, _, wasmtime::ExternType::Func(ty)) => {
                Extern::Func(resolve_function(c, runtime, path, name, ty)?)
            }
            ("env", _, wasmtime::ExternType::Global(_)) => match exports.instance.get_export(&mut *c, name) {
                Some(Extern::Global(g)) => Extern::Global(g),
                _ => return Err(format!("unresolved global import env.{name}").into()),
            },
            (m, name, ty) => return Err(format!("unsupported import {m}.{name} ({ty:?})").into()),
        };
        imports.push(ext);
    }
    let instance =
        Instance::new(&mut *c, &module, &imports).map_err(|e| format!("cannot instantiate it: {e}"))?;
    let index = c.state().dylinker.libraries.len();
    let dylinker = &mut c.state_mut().dylinker;
    dylinker.libraries.push(Library {
        path: path.to_owned(),
        instance,
        memory_base,
    });
    dylinker.by_path.insert(path.to_owned(), index);
    dylinker.events.push(LinkEvent::Load {
        path: path.to_owned(),
        memory_base,
        memory_size: info.memory_size,
        table_base,
    });
    if placed.is_some() {
        return Ok(index);
    }

    resolve_got(c).map_err(LoadError::Guest)?;
    for init in ["__wasm_apply_data_relocs", "__wasm_call_ctors"] {
        if let Ok(func) = instance.get_typed_func::<(), ()>(&mut *c, init) {
            func.call(&mut *c, ()).map_err(LoadError::Guest)?;
        }
    }
    tracing::debug!(target: "pglite_harness::dylink", path, memory_base, table_base, "loaded side module");
    Ok(index)
}

fn const_i32(c: &mut impl Ctx, value: u32) -> Result<Global, LoadError> {
    let ty = GlobalType::new(ValType::I32, Mutability::Const);
    Global::new(&mut *c, ty, Val::I32(value as i32)).map_err(|e| LoadError::Message(e.to_string()))
}

fn got_entry(c: &mut impl Ctx, kind: GotKind, name: &str) -> Result<Global, LoadError> {
    if let Some((global, _)) = c.state().dylinker.got.get(&(kind, name.to_owned())) {
        return Ok(*global);
    }
    let ty = GlobalType::new(ValType::I32, Mutability::Var);
    let global = Global::new(&mut *c, ty, Val::I32(0)).map_err(|e| LoadError::Message(e.to_string()))?;
    c.state_mut()
        .dylinker
        .got
        .insert((kind, name.to_owned()), (global, false));
    Ok(global)
}

/// Gives every GOT entry not yet resolved its address or table slot, where a definition exists.
fn resolve_got(c: &mut impl Ctx) -> wasmtime::Result<()> {
    let pending: Vec<(GotKind, String, Global)> = c
        .state()
        .dylinker
        .got
        .iter()
        .filter(|(_, (_, done))| !done)
        .map(|((kind, name), (global, _))| (*kind, name.clone(), *global))
        .collect();
    let main = c.state().exports().instance;
    for (kind, name, global) in pending {
        let value = match kind {
            GotKind::Mem => data_address(c, main, &name),
            GotKind::Func => function_slot(c, main, &name)?,
        };
        if let Some(value) = value {
            global.set(&mut *c, Val::I32(value as i32))?;
            c.state_mut()
                .dylinker
                .got
                .get_mut(&(kind, name))
                .expect("entry exists")
                .1 = true;
        }
    }
    Ok(())
}

/// The address of data symbol `name`: the main module's first, then each library's.
fn data_address(c: &mut impl Ctx, main: Instance, name: &str) -> Option<u32> {
    if let Some(Extern::Global(g)) = main.get_export(&mut *c, name) {
        return g.get(&mut *c).i32().map(|v| v as u32);
    }
    let libraries: Vec<(Instance, u32)> = c
        .state()
        .dylinker
        .libraries
        .iter()
        .map(|l| (l.instance, l.memory_base))
        .collect();
    libraries
        .into_iter()
        .find_map(|(instance, base)| match instance.get_export(&mut *c, name) {
            Some(Extern::Global(g)) => g.get(&mut *c).i32().map(|v| (v as u32).wrapping_add(base)),
            _ => None,
        })
}

/// The table slot of function `name`: the main module's first, then each library's.
fn function_slot(c: &mut impl Ctx, main: Instance, name: &str) -> wasmtime::Result<Option<u32>> {
    if let Some(Extern::Func(f)) = main.get_export(&mut *c, name) {
        return slot_for(c, None, name, f).map(Some);
    }
    let libraries: Vec<Instance> = c.state().dylinker.libraries.iter().map(|l| l.instance).collect();
    for (index, instance) in libraries.into_iter().enumerate() {
        if let Some(Extern::Func(f)) = instance.get_export(&mut *c, name) {
            return slot_for(c, Some(index), name, f).map(Some);
        }
    }
    Ok(None)
}

/// A table slot holding `func`: the slot the main module's element segment already gave it, or
/// a new one appended to the table (once per function).
fn slot_for(c: &mut impl Ctx, library: Option<usize>, name: &str, func: Func) -> wasmtime::Result<u32> {
    let key = (library, name.to_owned());
    if let Some(&slot) = c.state().dylinker.slots.get(&key) {
        return Ok(slot);
    }
    let existing = if library.is_none() {
        Runtime::global()?.main_table_slot(name)
    } else {
        None
    };
    let slot = match existing {
        Some(slot) => slot,
        None => {
            let table = c.state().exports().table;
            let slot = table.grow(&mut *c, 1, Ref::Func(Some(func)))? as u32;
            c.state_mut().dylinker.events.push(LinkEvent::Slot {
                library,
                name: name.to_owned(),
                slot,
            });
            slot
        }
    };
    c.state_mut().dylinker.slots.insert(key, slot);
    Ok(slot)
}

/// What a function import `name` of a side module binds to.
fn resolve_function(
    c: &mut impl Ctx,
    runtime: &Runtime,
    path: &str,
    name: &str,
    ty: FuncType,
) -> Result<Func, LoadError> {
    let main = c.state().exports().instance;
    let main_name = match name {
        "getTempRet0" => "_emscripten_tempret_get",
        "setTempRet0" => "_emscripten_tempret_set",
        other => other,
    };
    if let Some(Extern::Func(f)) = main.get_export(&mut *c, main_name) {
        return Ok(f);
    }
    if let Some(invoke) = sjlj::invoke_func(&mut *c, name) {
        return Ok(invoke);
    }
    if let Ok(Extern::Func(f)) = runtime.linker.get(&mut *c, "env", name) {
        return Ok(f);
    }
    let libraries: Vec<Instance> = c.state().dylinker.libraries.iter().map(|l| l.instance).collect();
    for instance in libraries {
        if let Some(Extern::Func(f)) = instance.get_export(&mut *c, name) {
            return Ok(f);
        }
    }
    // Like Emscripten's lazy stubs: the library loads, and only a call to the symbol fails. It
    // fails as a Postgres ERROR in the calling statement, which the backend survives.
    let message = format!(
        "{path} needs {name}, which PGlite's main module does not export: this feature is unavailable in PGlite"
    );
    Ok(Func::new(&mut *c, ty, move |mut caller, _, _| {
        Err(guest_error::raise(&mut caller, b"0A000", &message))
    }))
}

/// Records a `dlerror` message through `__dl_seterr`.
fn set_error(c: &mut C<'_>, message: &str) -> wasmtime::Result<()> {
    let text = message.replace('%', "%%");
    let exports = c.data().exports().clone();
    let ptr = exports.malloc.call(&mut *c, text.len() as i32 + 1)?;
    if ptr == 0 {
        return Ok(());
    }
    with_memory(c, |mem, _| {
        let _ = guest::write_bytes(mem, ptr, text.as_bytes());
        let _ = guest::write_bytes(mem, ptr + text.len() as i32, &[0]);
    });
    exports.dl_seterr.call(&mut *c, (ptr, 0))
}
