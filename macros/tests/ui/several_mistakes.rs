use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(temp_dir, fixtures)]
async fn several_mistakes<T>(db: u32) {}

fn main() {}
