use pglite_harness_macros::pglite_test;

struct PgliteDb;

struct Suite;

impl Suite {
    #[pglite_test]
    fn method(&self, db: PgliteDb) {}
}

fn main() {}
