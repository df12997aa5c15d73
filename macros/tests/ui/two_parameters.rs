use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
async fn two_parameters(db: PgliteDb, other: PgliteDb) {}

fn main() {}
