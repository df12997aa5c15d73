use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(migrations = migrations)]
async fn migrations_not_a_string(db: PgliteDb) {}

fn main() {}
