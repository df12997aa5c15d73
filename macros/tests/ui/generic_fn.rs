use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
async fn generic_fn<T: Default>(db: PgliteDb) {}

fn main() {}
