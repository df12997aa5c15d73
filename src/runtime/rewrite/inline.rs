//! Inlines small functions into their callers.
//!
//! Cranelift compiles every wasm call with fixed costs that native code does not pay: a
//! stack-limit check, a frame, callee-saved registers, arguments moved into place. A statement
//! runs over a thousand calls, many of tiny functions such as `palloc` (a load and an indirect
//! call), so those costs add up to a good share of its instructions. wasmtime's own inliner
//! (`Config::compiler_inlining`) removes them too, but holds the whole module's IR while it works
//! (8.2 GB to compile PGlite), so this pass does the same for small callees, in the wasm, before
//! compilation.
//!
//! A call `call $f` of an [inlinable](Callee::of) function becomes:
//!
//! ```text
//! local.set $fN ... local.set $f0      ;; the arguments, into fresh locals of the caller
//! <zero> local.set $fL ...             ;; $f's own locals start at zero, as at a call
//! block (result ...)                   ;; $f's function label
//!   <$f's body, `return` as a branch to this block>
//! end
//! ```
//!
//! Nothing else changes: every function keeps its index and its body (callers gain locals), so
//! tables, exports, side modules and the other passes see the module they expect.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, CodeSection, Function, Instruction, RawSection, ValType};
use wasmparser::{CompositeInnerType, FunctionBody, Operator, Parser, Payload, TypeRef};

use super::{RewriteError, reencode_error};

/// The largest body (in bytes, locals and instructions) inlined: some 60 simple instructions;
/// `palloc` is 36 bytes. Larger callees save less per instruction in call costs, and copying
/// them to every call site grows the module (see [`ROUNDS`] for figures).
const MAX_CALLEE_BYTES: usize = 200;

/// The most parameters and locals an inlined callee may have.
const MAX_CALLEE_LOCALS: usize = 24;

/// Rounds of inlining: the second inlines the callees that are still small with their own
/// callees inlined by the first.
///
/// Measured with the instructions bench: per statement, a prepared PK SELECT goes from 76.7k to
/// 66.3k instructions (-13.6%), an UPDATE from 120.0k to 104.4k (-13.0%), a row of a bulk INSERT
/// from 23.7k to 21.8k (-8.3%); one round gives about -11% and -6.6%. wasmtime's own inliner
/// gives the same -14%. The cost: the module grows from 9.0 to 20.0 MB of wasm (the compiled
/// one from 25 to 47 MB), and its one-time compile from 8-13 s and 0.4-0.6 GB to 16-17 s and
/// 1.1 GB on this 2-core machine.
const ROUNDS: usize = 2;

/// Returns `wasm` with calls of small functions replaced by their bodies.
pub(crate) fn inline_small_functions(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = inline_round(wasm)?;
    for _ in 1..ROUNDS {
        out = inline_round(&out)?;
    }
    Ok(out)
}

/// One round: every call of a function that is small at the start of the round is inlined.
fn inline_round(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let module = ModuleFunctions::of(wasm)?;
    let callees = module.inlinable()?;
    let mut out = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        if let Payload::CodeSectionStart { .. } = payload {
            let mut code = CodeSection::new();
            for (defined, body) in module.bodies.iter().enumerate() {
                let index = module.imported + defined as u32;
                match inline_calls(&module, &callees, index, body)? {
                    Some(function) => code.function(&function),
                    None => code.raw(&wasm[body.range()]),
                };
            }
            out.section(&code);
        } else if !matches!(payload, Payload::CodeSectionEntry(_)) {
            out.section(&RawSection {
                id,
                data: &wasm[range],
            });
        }
    }
    Ok(out.finish())
}

/// The function signatures and bodies of a module.
struct ModuleFunctions<'a> {
    /// Every type, `None` for a type that is not a function's.
    types: Vec<Option<wasmparser::FuncType>>,
    /// The number of imported functions: defined function `i` has index `imported + i`.
    imported: u32,
    /// The type index of every function, imported first.
    function_types: Vec<u32>,
    bodies: Vec<FunctionBody<'a>>,
}

impl<'a> ModuleFunctions<'a> {
    fn of(wasm: &'a [u8]) -> Result<Self, RewriteError> {
        let mut module = ModuleFunctions {
            types: Vec::new(),
            imported: 0,
            function_types: Vec::new(),
            bodies: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for ty in group?.into_types() {
                            module.types.push(match ty.composite_type.inner {
                                CompositeInnerType::Func(func) => Some(func),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        if let TypeRef::Func(ty) | TypeRef::FuncExact(ty) = import?.ty {
                            module.function_types.push(ty);
                            module.imported += 1;
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        module.function_types.push(ty?);
                    }
                }
                Payload::CodeSectionEntry(body) => module.bodies.push(body),
                _ => {}
            }
        }
        Ok(module)
    }

    fn func_type(&self, function: u32) -> Result<&wasmparser::FuncType, RewriteError> {
        self.function_types
            .get(function as usize)
            .and_then(|&ty| self.types.get(ty as usize)?.as_ref())
            .ok_or_else(|| RewriteError::Unexpected(format!("function {function} has no function type")))
    }

    /// The defined functions worth inlining, by function index.
    fn inlinable(&self) -> Result<HashMap<u32, Callee<'a>>, RewriteError> {
        let mut callees = HashMap::new();
        for (defined, body) in self.bodies.iter().enumerate() {
            let index = self.imported + defined as u32;
            if let Some(callee) = Callee::of(index, self.func_type(index)?, body)? {
                callees.insert(index, callee);
            }
        }
        Ok(callees)
    }
}

/// A function that is inlined where it is called.
struct Callee<'a> {
    params: Vec<ValType>,
    /// Its own locals, after the parameters.
    locals: Vec<ValType>,
    result: Option<ValType>,
    body: FunctionBody<'a>,
}

impl<'a> Callee<'a> {
    /// `Some` if the function at `index` is small, returns at most one value, has only numeric
    /// locals, and holds nothing whose meaning depends on being a function of its own: no
    /// exception handling (whose labels could meet the caller's), no tail call, no call of
    /// itself.
    fn of(
        index: u32,
        ty: &wasmparser::FuncType,
        body: &FunctionBody<'a>,
    ) -> Result<Option<Callee<'a>>, RewriteError> {
        if body.range().len() > MAX_CALLEE_BYTES || ty.results().len() > 1 {
            return Ok(None);
        }
        let mut params = Vec::new();
        for &param in ty.params() {
            let Some(param) = numeric(param) else {
                return Ok(None);
            };
            params.push(param);
        }
        let mut locals = Vec::new();
        for group in body.get_locals_reader()? {
            let (count, ty) = group?;
            let Some(ty) = numeric(ty) else {
                return Ok(None);
            };
            locals.extend(std::iter::repeat_n(ty, count as usize));
            if params.len() + locals.len() > MAX_CALLEE_LOCALS {
                return Ok(None);
            }
        }
        let result = match ty.results().first() {
            Some(&result) => match numeric(result) {
                Some(result) => Some(result),
                None => return Ok(None),
            },
            None => None,
        };
        let mut reader = body.get_operators_reader()?;
        while !reader.eof() {
            match reader.read()? {
                Operator::Call { function_index } if function_index == index => return Ok(None),
                Operator::Try { .. }
                | Operator::Catch { .. }
                | Operator::CatchAll
                | Operator::Delegate { .. }
                | Operator::Rethrow { .. }
                | Operator::Throw { .. }
                | Operator::ThrowRef
                | Operator::TryTable { .. }
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. } => return Ok(None),
                _ => {}
            }
        }
        Ok(Some(Callee {
            params,
            locals,
            result,
            body: body.clone(),
        }))
    }
}

fn numeric(ty: wasmparser::ValType) -> Option<ValType> {
    Some(match ty {
        wasmparser::ValType::I32 => ValType::I32,
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        wasmparser::ValType::V128 => ValType::V128,
        wasmparser::ValType::Ref(_) => return None,
    })
}

/// Locals added to a caller for its inlined callees, reused from one call site to the next (an
/// inlined body runs to its end before the caller goes on, and calls nothing inlined itself).
struct ScratchLocals {
    /// The index the first added local gets: after the caller's parameters and locals.
    first: u32,
    added: Vec<ValType>,
}

impl ScratchLocals {
    /// Indices for `types`, in order, each of its type, none twice.
    fn take(&mut self, types: &[ValType]) -> Vec<u32> {
        let mut used = vec![false; self.added.len()];
        types
            .iter()
            .map(|&ty| {
                let at = match (0..self.added.len()).find(|&i| !used[i] && self.added[i] == ty) {
                    Some(at) => at,
                    None => {
                        self.added.push(ty);
                        used.push(false);
                        self.added.len() - 1
                    }
                };
                used[at] = true;
                self.first + at as u32
            })
            .collect()
    }
}

/// The body of the function at `index` with its calls of `callees` inlined, or `None` if it
/// calls none of them.
fn inline_calls<'a>(
    module: &ModuleFunctions<'a>,
    callees: &HashMap<u32, Callee<'a>>,
    index: u32,
    body: &FunctionBody<'a>,
) -> Result<Option<Function>, RewriteError> {
    let calls_a_callee = {
        let mut reader = body.get_operators_reader()?;
        let mut found = false;
        while !reader.eof() && !found {
            found = matches!(reader.read()?, Operator::Call { function_index }
                if function_index != index && callees.contains_key(&function_index));
        }
        found
    };
    if !calls_a_callee {
        return Ok(None);
    }

    let mut reencoder = RoundtripReencoder;
    let mut locals = Vec::new();
    let mut local_count = module.func_type(index)?.params().len() as u32;
    for group in body.get_locals_reader()? {
        let (count, ty) = group?;
        locals.push((count, reencoder.val_type(ty).map_err(reencode_error)?));
        local_count += count;
    }
    let mut scratch = ScratchLocals {
        first: local_count,
        added: Vec::new(),
    };
    let mut instructions = Vec::new();
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        match reader.read()? {
            Operator::Call { function_index }
                if function_index != index && callees.contains_key(&function_index) =>
            {
                inline_body(&callees[&function_index], &mut scratch, &mut instructions)?;
            }
            op => instructions.push(reencoder.instruction(op).map_err(reencode_error)?),
        }
    }
    locals.extend(scratch.added.iter().map(|&ty| (1, ty)));
    let mut function = Function::new(locals);
    for instruction in &instructions {
        function.instruction(instruction);
    }
    Ok(Some(function))
}

/// Appends `callee`'s body, as a block, in place of a call of it.
fn inline_body<'a>(
    callee: &Callee<'a>,
    scratch: &mut ScratchLocals,
    out: &mut Vec<Instruction<'a>>,
) -> Result<(), RewriteError> {
    let all: Vec<ValType> = callee.params.iter().chain(&callee.locals).copied().collect();
    let slots = scratch.take(&all);
    for &slot in slots[..callee.params.len()].iter().rev() {
        out.push(Instruction::LocalSet(slot));
    }
    for (&slot, &ty) in slots[callee.params.len()..].iter().zip(&callee.locals) {
        out.push(zero(ty));
        out.push(Instruction::LocalSet(slot));
    }
    out.push(Instruction::Block(match callee.result {
        Some(ty) => BlockType::Result(ty),
        None => BlockType::Empty,
    }));
    let mut reencoder = RoundtripReencoder;
    let local = |index: u32| -> Result<u32, RewriteError> {
        slots
            .get(index as usize)
            .copied()
            .ok_or_else(|| RewriteError::Unexpected(format!("local {index} out of range")))
    };
    // Labels opened inside the callee: `return` branches past all of them to its own block.
    let mut depth = 0u32;
    let mut reader = callee.body.get_operators_reader()?;
    while !reader.eof() {
        let instruction = match reader.read()? {
            Operator::LocalGet { local_index } => Instruction::LocalGet(local(local_index)?),
            Operator::LocalSet { local_index } => Instruction::LocalSet(local(local_index)?),
            Operator::LocalTee { local_index } => Instruction::LocalTee(local(local_index)?),
            Operator::Return => Instruction::Br(depth),
            op => {
                match op {
                    Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => depth += 1,
                    Operator::End if depth > 0 => depth -= 1,
                    _ => {}
                }
                reencoder.instruction(op).map_err(reencode_error)?
            }
        };
        out.push(instruction);
    }
    Ok(())
}

/// The instruction that pushes the zero a local of type `ty` starts with.
fn zero(ty: ValType) -> Instruction<'static> {
    match ty {
        ValType::I32 => Instruction::I32Const(0),
        ValType::I64 => Instruction::I64Const(0),
        ValType::F32 => Instruction::F32Const(0.0.into()),
        ValType::F64 => Instruction::F64Const(0.0.into()),
        ValType::V128 => Instruction::V128Const(0),
        ValType::Ref(_) => unreachable!("only numeric locals are inlined"),
    }
}

#[cfg(test)]
mod tests {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, FunctionSection, Instruction as I, MemorySection, MemoryType,
        Module, TypeSection,
    };
    use wasmtime::{Engine, Instance, Store};

    use super::*;

    /// A module whose `run` calls small functions in the ways that matter: a `return` from
    /// inside a block, a local that must start at zero on every call (in a loop), parameters of
    /// mixed types in order, a callee without a result, a call in unreachable code, a callee
    /// that calls itself, and a callee too big to inline.
    fn module() -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32, ValType::I32], [ValType::I32]); // 0: pick
        types.ty().function([], [ValType::I32]); // 1: count
        types
            .ty()
            .function([ValType::I64, ValType::F64, ValType::I32], [ValType::I64]); // 2: mix
        types.ty().function([ValType::I32, ValType::I32], []); // 3: store
        types.ty().function([ValType::I32], [ValType::I64]); // 4: run
        types.ty().function([ValType::I32], [ValType::I32]); // 5: fact, big
        let mut functions = FunctionSection::new();
        for ty in [0, 1, 2, 3, 4, 5, 5] {
            functions.function(ty);
        }
        let mut code = CodeSection::new();
        let body = |locals: Vec<(u32, ValType)>, instructions: &[I]| {
            let mut f = Function::new(locals);
            for i in instructions {
                f.instruction(i);
            }
            f
        };
        // 0 pick(a, b): if a == 0 { return b } a + 100
        code.function(&body(
            vec![],
            &[
                I::Block(BlockType::Empty),
                I::LocalGet(0),
                I::BrIf(0),
                I::LocalGet(1),
                I::Return,
                I::End,
                I::LocalGet(0),
                I::I32Const(100),
                I::I32Add,
                I::End,
            ],
        ));
        // 1 count(): its local starts at zero, so it always answers 1.
        code.function(&body(
            vec![(1, ValType::I32)],
            &[I::LocalGet(0), I::I32Const(1), I::I32Add, I::LocalTee(0), I::End],
        ));
        // 2 mix(a: i64, b: f64, c: i32) = a * 1000 + trunc(b) * 10 + c
        code.function(&body(
            vec![],
            &[
                I::LocalGet(0),
                I::I64Const(1000),
                I::I64Mul,
                I::LocalGet(1),
                I::I64TruncF64S,
                I::I64Const(10),
                I::I64Mul,
                I::I64Add,
                I::LocalGet(2),
                I::I64ExtendI32S,
                I::I64Add,
                I::End,
            ],
        ));
        // 3 store(addr, value)
        code.function(&body(
            vec![],
            &[
                I::LocalGet(0),
                I::LocalGet(1),
                I::I32Store(wasm_encoder::MemArg {
                    offset: 0,
                    align: 2,
                    memory_index: 0,
                }),
                I::End,
            ],
        ));
        // 4 run(x): store(8, pick(x, 7)); 10 calls of count; mix(4, 5.9, load(8) + counts)
        code.function(&body(
            vec![(2, ValType::I32)],
            &[
                I::I32Const(8),
                I::LocalGet(0),
                I::I32Const(7),
                I::Call(0),
                I::Call(3),
                I::Loop(BlockType::Empty),
                I::LocalGet(1),
                I::Call(1),
                I::I32Add,
                I::LocalSet(1),
                I::LocalGet(2),
                I::I32Const(1),
                I::I32Add,
                I::LocalTee(2),
                I::I32Const(10),
                I::I32LtU,
                I::BrIf(0),
                I::End,
                I::I64Const(4),
                I::F64Const(5.9.into()),
                I::I32Const(8),
                I::I32Load(wasm_encoder::MemArg {
                    offset: 0,
                    align: 2,
                    memory_index: 0,
                }),
                I::LocalGet(1),
                I::I32Add,
                I::LocalGet(0),
                I::Call(6),
                I::I32Add,
                I::Call(2),
                I::Return,
                // Unreachable: the stack is whatever a call needs.
                I::Call(0),
                I::Drop,
                I::I64Const(0),
                I::End,
            ],
        ));
        // 5 fact(n): calls itself, so it is never inlined.
        code.function(&body(
            vec![],
            &[
                I::LocalGet(0),
                I::I32Eqz,
                I::If(BlockType::Result(ValType::I32)),
                I::I32Const(1),
                I::Else,
                I::LocalGet(0),
                I::LocalGet(0),
                I::I32Const(1),
                I::I32Sub,
                I::Call(5),
                I::I32Mul,
                I::End,
                I::End,
            ],
        ));
        // 6 big(n): more than MAX_CALLEE_BYTES of `n + 1 - 1 ...`, so it stays a call; answers 0.
        let mut big = vec![I::LocalGet(0)];
        for _ in 0..MAX_CALLEE_BYTES {
            big.extend([I::I32Const(1), I::I32Add]);
        }
        big.extend([
            I::LocalGet(0),
            I::I32Sub,
            I::I32Const(MAX_CALLEE_BYTES as i32),
            I::I32Sub,
        ]);
        big.push(I::End);
        code.function(&body(vec![], &big));

        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut exports = ExportSection::new();
        exports.export("run", ExportKind::Func, 4);
        exports.export("fact", ExportKind::Func, 5);
        let mut module = Module::new();
        module
            .section(&types)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code);
        module.finish()
    }

    fn run(wasm: &[u8], x: i32) -> (i64, i32) {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let run = instance.get_typed_func::<i32, i64>(&mut store, "run").unwrap();
        let fact = instance.get_typed_func::<i32, i32>(&mut store, "fact").unwrap();
        (
            run.call(&mut store, x).unwrap(),
            fact.call(&mut store, 5).unwrap(),
        )
    }

    /// The calls `run` makes of each function.
    fn calls_in_run(wasm: &[u8]) -> Vec<u32> {
        let module = ModuleFunctions::of(wasm).unwrap();
        let mut reader = module.bodies[4].get_operators_reader().unwrap();
        let mut calls = Vec::new();
        while !reader.eof() {
            if let Operator::Call { function_index } = reader.read().unwrap() {
                calls.push(function_index);
            }
        }
        calls
    }

    #[test]
    fn inlined_calls_compute_what_the_calls_did() {
        let before = module();
        let after = inline_small_functions(&before).unwrap();
        wasmparser::Validator::new().validate_all(&after).unwrap();
        for x in [0, 1, 42] {
            assert_eq!(run(&after, x), run(&before, x), "run({x})");
        }
        // x = 0: pick returns 7 from inside its block; ten counts of 1; big(0) = 0.
        assert_eq!(run(&after, 0), (4_000 + 50 + 17, 120));
        assert_eq!(calls_in_run(&before), [0, 3, 1, 6, 2, 0]);
        assert_eq!(calls_in_run(&after), [6], "all but the big callee are inlined");
    }

    #[test]
    fn pglite_keeps_its_functions_and_palloc_is_inlined_where_it_was_called() {
        let wasm = super::super::own_memory(crate::assets::PGLITE_WASM).unwrap();
        let after = inline_small_functions(&wasm).unwrap();
        let palloc_calls = |wasm: &[u8]| {
            let palloc = super::super::function_exports(wasm).unwrap()["palloc"];
            let functions = ModuleFunctions::of(wasm).unwrap().bodies.len();
            (functions, super::super::calls_of(wasm, palloc))
        };
        let (functions_before, calls_before) = palloc_calls(&wasm);
        let (functions_after, calls_after) = palloc_calls(&after);
        assert_eq!(
            functions_after, functions_before,
            "no function is added or removed"
        );
        // A few calls come from inside callees inlined in the second round.
        assert!(
            calls_before > 1000 && calls_after < calls_before / 50,
            "calls of palloc: {calls_before} before, {calls_after} after"
        );
    }
}
