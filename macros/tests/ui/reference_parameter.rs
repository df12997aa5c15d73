use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
fn reference_parameter(db: &PgliteDb) {}

fn main() {}
