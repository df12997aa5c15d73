use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
async fn no_parameter() {}

fn main() {}
