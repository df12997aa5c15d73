use pglite_harness_macros::pglite_test;

struct PgliteDb;

#[pglite_test(fixtures("users.sql"), fixtures("orders.sql"))]
async fn duplicate_list(db: PgliteDb) {}

fn main() {}
