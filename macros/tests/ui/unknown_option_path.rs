use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(sqlx::migrations = "migrations")]
async fn unknown_option_path(db: PgliteDb) {}

fn main() {}
