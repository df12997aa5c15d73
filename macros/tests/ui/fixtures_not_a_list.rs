use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(fixtures = "users.sql")]
async fn fixtures_not_a_list(db: PgliteDb) {}

fn main() {}
