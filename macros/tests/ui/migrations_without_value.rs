use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(migrations)]
async fn migrations_without_value(db: PgliteDb) {}

fn main() {}
