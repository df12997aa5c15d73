use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
extern "C" fn extern_fn(db: PgliteDb) {}

fn main() {}
