use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(user = "")]
async fn empty_string(db: PgliteDb) {}

fn main() {}
