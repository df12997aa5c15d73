use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(fixtures())]
async fn empty_list(db: PgliteDb) {}

fn main() {}
