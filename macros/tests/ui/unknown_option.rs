use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(temp_dir, fixture("users.sql"))]
async fn unknown_option(db: PgliteDb) {}

fn main() {}
