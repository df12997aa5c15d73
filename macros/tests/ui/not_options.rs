use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test("users.sql")]
async fn not_options(db: PgliteDb) {}

fn main() {}
