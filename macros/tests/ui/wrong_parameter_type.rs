use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
async fn wrong_parameter_type(db: String) {}

fn main() {}
