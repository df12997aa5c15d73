use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(extensions(hstore))]
async fn extensions_not_strings(db: PgliteDb) {}

fn main() {}
