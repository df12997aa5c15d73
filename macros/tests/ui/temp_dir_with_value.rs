use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(temp_dir = true)]
async fn temp_dir_with_value(db: PgliteDb) {}

fn main() {}
