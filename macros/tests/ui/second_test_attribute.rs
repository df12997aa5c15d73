use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test]
#[test]
async fn second_test_attribute(db: PgliteDb) {}

fn main() {}
