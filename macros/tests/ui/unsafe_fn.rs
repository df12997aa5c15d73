use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
unsafe fn unsafe_fn(db: PgliteDb) {}

fn main() {}
