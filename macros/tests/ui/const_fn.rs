use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
const fn const_fn(db: PgliteDb) {}

fn main() {}
