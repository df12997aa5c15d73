use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(user = "app", database = "shop", user = "other")]
async fn duplicate_option(db: PgliteDb) {}

fn main() {}
