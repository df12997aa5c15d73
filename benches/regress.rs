//! PostgreSQL 18's own regression suite through psql 18, against the PGlite server and, for
//! calibration, native PostgreSQL 18.6: how many tests give exactly their expected output.
//!
//! The suite's data (`sql/`, `expected/`, `data/`, prepared so that a server without access to
//! this machine's files can run it) is not part of this repository: it is read from
//! `$PGLITE_HARNESS_REGRESS_DIR`, else `../shared/regress/data` next to the crate. Without it,
//! this says so and exits successfully.
//!
//! Each test runs as pg_regress runs it (`psql -X -a -q`, the test file on standard input, its
//! session settings), in the order of PostgreSQL's `parallel_schedule`, one after another, each
//! test in a connection of its own. The COPY data files become the INSERT loaders the prepared
//! test files `\i`. A test passes when its output equals `expected/NAME.out` or one of its
//! alternatives (`NAME_1.out`, ...); the output of every failing test is kept under
//! the cargo target directory's `tmp/regress/` with a diff.
//!
//! ```text
//! cargo bench --bench regress                          # PGlite and native, every test
//! cargo bench --bench regress -- --pglite-only         # PGlite only
//! cargo bench --bench regress -- --only=test_setup,json,jsonb
//! cargo bench --bench regress -- --parallel            # each group's tests at once
//! ```
//!
//! With `--parallel`, each group's tests run at once, as pg_regress runs them: many clients
//! sharing the one PGlite session. Tests of a group that make temporary tables, or statements
//! with SQL `PREPARE`, of the same name then meet (the documented limit of the shared session).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pglite_harness::{Backend, Server};

/// The environment variable naming the suite's data directory.
const DATA_DIR_ENV: &str = "PGLITE_HARNESS_REGRESS_DIR";

/// The database the tests expect to run in.
const DATABASE: &str = "regression";

/// Longest a single test may run.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The groups of PostgreSQL 18's `parallel_schedule`, in order: tests depend on objects earlier
/// groups create. Tests of the data directory missing here run last, one by one, in name order.
const SCHEDULE: &[&str] = &[
    "test_setup",
    "boolean char name varchar text int2 int4 int8 oid float4 float8 bit numeric txid uuid enum money rangetypes pg_lsn regproc",
    "strings md5 numerology point lseg line box path polygon circle date time timetz timestamp timestamptz interval inet macaddr macaddr8 multirangetypes",
    "geometry tstypes horology regex type_sanity opr_sanity misc_sanity comments expressions unicode xid mvcc database stats_import",
    "copy copyselect copydml copyencoding insert insert_conflict",
    "create_function_c create_misc create_operator create_procedure create_table create_type create_schema",
    "create_index create_index_spgist create_view index_including index_including_gist",
    "create_aggregate create_function_sql create_cast constraints triggers select inherit typed_table vacuum drop_if_exists updatable_views roleattributes create_am hash_func errors infinite_recurse",
    "sanity_check",
    "select_into select_distinct select_distinct_on select_implicit select_having subselect union case join aggregates transactions random portals arrays btree_index hash_index update delete namespace prepared_xacts",
    "brin gin gist spgist privileges init_privs security_label collate matview lock replica_identity rowsecurity object_address tablesample groupingsets drop_operator password identity generated_stored join_hash",
    "brin_bloom brin_multi",
    "create_table_like alter_generic alter_operator misc async dbsize merge misc_functions sysviews tsrf tid tidscan tidrangescan collate.utf8 collate.icu.utf8 incremental_sort create_role without_overlaps generated_virtual",
    "rules psql psql_crosstab amutils stats_ext collate.linux.utf8 collate.windows.win1252",
    "select_parallel",
    "write_parallel",
    "vacuum_parallel",
    "publication subscription",
    "select_views portals_p2 foreign_key cluster dependency guc bitmapops combocid tsearch tsdicts foreign_data window xmlmap functional_deps advisory_lock indirect_toast equivclass stats_rewrite",
    "json jsonb json_encoding jsonpath jsonpath_encoding jsonb_jsonpath sqljson sqljson_queryfuncs sqljson_jsontable",
    "plancache limit plpgsql copy2 temp domain rangefuncs prepare conversion truncate alter_table sequence polymorphism rowtypes returning largeobject with xml",
    "partition_merge partition_split partition_join partition_prune reloptions hash_part indexing partition_aggregate partition_info tuplesort explain compression memoize stats predicate numa eager_aggregate planner_est",
    "oidjoins event_trigger",
    "event_trigger_login",
    "fast_default",
    "tablespace",
];

/// The settings pg_regress gives every test's session.
const SESSION_OPTIONS: &str = "-c intervalstyle=postgres_verbose -c lc_messages=C -c lc_monetary=C \
     -c lc_numeric=C -c lc_time=C -c bytea_output=hex -c timezone_abbreviations=Default";

fn main() {
    let only: Option<Vec<String>> = std::env::args().find_map(|a| {
        a.strip_prefix("--only=")
            .map(|names| names.split(',').map(str::to_owned).collect())
    });
    let pglite_only = std::env::args().any(|a| a == "--pglite-only");
    let parallel = std::env::args().any(|a| a == "--parallel");
    println!(
        "pglite-harness regression suite: PostgreSQL 18's tests through psql 18, {}\n",
        if parallel {
            "each group's tests at once"
        } else {
            "one test after another"
        }
    );

    let data = std::env::var_os(DATA_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/regress/data"));
    if !data.join("sql/test_setup.sql").is_file() {
        println!(
            "no regression data at {} (set {DATA_DIR_ENV}): nothing run",
            data.display()
        );
        return;
    }
    let psql = match support::native::bindir() {
        Ok(bindir) => bindir.join("psql"),
        Err(e) => {
            println!("psql 18 unavailable: {e}");
            return;
        }
    };
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("regress");
    let _ = std::fs::remove_dir_all(&work);
    let loaders = work.join("loaders");
    write_loaders(&data.join("data"), &loaders).expect("the COPY data files become loaders");
    let groups = schedule(&data, only.as_deref());
    let tests = groups.iter().map(Vec::len).sum::<usize>();
    let suite = Suite { psql, data, loaders };

    let server = Server::builder()
        .start(Backend::builder().database(DATABASE).open().unwrap())
        .unwrap();
    let pglite = suite.run(
        "PGlite",
        server.local_addr().port(),
        &groups,
        parallel,
        &work.join("pglite"),
    );
    drop(server);

    let native = if pglite_only {
        None
    } else {
        match support::native::NativePostgres::start(&["fsync=off"]) {
            Ok(native) => {
                let created = Command::new(&suite.psql)
                    .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                    .arg("-p")
                    .arg(native.port.to_string())
                    .args(["-c", &format!("CREATE DATABASE {DATABASE}")])
                    .status();
                assert!(created.is_ok_and(|s| s.success()), "CREATE DATABASE on native");
                Some(suite.run("native", native.port, &groups, parallel, &work.join("native")))
            }
            Err(e) => {
                println!("native PostgreSQL baseline unavailable: {e}");
                None
            }
        }
    };

    println!();
    for (who, outcome) in [("PGlite", Some(&pglite)), ("native", native.as_ref())] {
        let Some(outcome) = outcome else { continue };
        let failed: Vec<&str> = outcome.failed.keys().map(String::as_str).collect();
        println!(
            "{who:<7} {} of {} tests give their expected output ({:.1} s){}",
            tests - failed.len(),
            tests,
            outcome.took.as_secs_f64(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failed.join(" "))
            }
        );
    }
    if !pglite.failed.is_empty() {
        println!("\noutputs and diffs of the failed tests: {}", work.display());
    }
}

/// The suite's files and the psql that runs them.
struct Suite {
    psql: PathBuf,
    data: PathBuf,
    loaders: PathBuf,
}

/// How one server did: the failed tests, each with its first differing line.
struct Outcome {
    failed: BTreeMap<String, String>,
    took: Duration,
}

impl Suite {
    /// Runs the `groups` of tests against the server on `port`, the tests of a group one after
    /// another or, if `parallel`, all at once (each in a connection of its own, as pg_regress
    /// does), keeping the output of each failure in `out`.
    fn run(&self, who: &str, port: u16, groups: &[Vec<String>], parallel: bool, out: &Path) -> Outcome {
        std::fs::create_dir_all(out).unwrap();
        let started = Instant::now();
        let mut failed = BTreeMap::new();
        let result_of = |test: &str| out.join(format!("{test}.out"));
        for group in groups {
            if parallel {
                std::thread::scope(|scope| {
                    for test in group {
                        scope.spawn(|| self.run_test(port, test, &result_of(test)));
                    }
                });
            } else {
                for test in group {
                    self.run_test(port, test, &result_of(test));
                }
            }
            for test in group {
                if let Err(difference) = self.outcome(who, test, &result_of(test), out) {
                    failed.insert(test.clone(), difference);
                }
            }
        }
        Outcome {
            failed,
            took: started.elapsed(),
        }
    }

    /// Checks the output `result` of `test`: removed if right, else kept, with a diff, in `out`.
    fn outcome(&self, who: &str, test: &str, result: &Path, out: &Path) -> Result<(), String> {
        let output = std::fs::read_to_string(result).unwrap_or_default();
        let checked = self.check(test, &output);
        match &checked {
            Ok(()) => std::fs::remove_file(result).unwrap(),
            Err(difference) => {
                println!("{who}: {test} differs: {difference}");
                let expected = self.data.join("expected").join(format!("{test}.out"));
                if let Ok(diff) = Command::new("diff").arg("-u").arg(&expected).arg(result).output() {
                    std::fs::write(out.join(format!("{test}.diff")), diff.stdout).unwrap();
                }
            }
        }
        checked
    }

    /// Runs `test` with `psql -X -a -q` as pg_regress would, its output (standard output and
    /// error, in order) into the file `result`.
    fn run_test(&self, port: u16, test: &str, result: &Path) {
        let input = std::fs::File::open(self.data.join("sql").join(format!("{test}.sql"))).unwrap();
        let output = std::fs::File::create(result).unwrap();
        let errors = output.try_clone().unwrap();
        let mut child = Command::new(&self.psql)
            .args(["-X", "-a", "-q", "-d", DATABASE])
            .args(["-v", "HIDE_TABLEAM=on", "-v", "HIDE_TOAST_COMPRESSION=on"])
            .arg("-v")
            .arg(format!("loaderdir={}", self.loaders.display()))
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
            .env("PGAPPNAME", "pg_regress")
            .env("PGTZ", "PST8PDT")
            .env("PGDATESTYLE", "Postgres, MDY")
            .env("PGOPTIONS", SESSION_OPTIONS)
            .env("PG_ABS_SRCDIR", &self.data)
            .env("PG_ABS_BUILDDIR", &self.data)
            .env("PG_LIBDIR", "/pglite/lib/postgresql")
            .env("PG_DLSUFFIX", ".so")
            .env("LC_ALL", "C.UTF-8")
            .stdin(input)
            .stdout(output)
            .stderr(errors)
            .spawn()
            .expect("psql runs");
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if started.elapsed() > TEST_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("waiting for psql: {e}"),
            }
        }
    }

    /// `Ok` when `output` is `test`'s expected output or one of its alternatives, else the
    /// first line where it departs from the closest one.
    fn check(&self, test: &str, output: &str) -> Result<(), String> {
        let mut closest: Option<(usize, String)> = None;
        for candidate in expected_files(&self.data.join("expected"), test) {
            let expected = std::fs::read_to_string(&candidate).unwrap_or_default();
            if expected == output {
                return Ok(());
            }
            let same = expected
                .lines()
                .zip(output.lines())
                .take_while(|(e, o)| e == o)
                .count();
            if closest.as_ref().is_none_or(|(best, _)| same > *best) {
                let mut note = String::new();
                let _ = write!(
                    note,
                    "line {}: expected {:?}, got {:?}",
                    same + 1,
                    expected.lines().nth(same).unwrap_or("<end>"),
                    output.lines().nth(same).unwrap_or("<end>")
                );
                closest = Some((same, note));
            }
        }
        Err(closest.map_or_else(|| "no expected output".to_owned(), |(_, note)| note))
    }
}

/// `expected/TEST.out` and its alternatives `TEST_N.out`.
fn expected_files(dir: &Path, test: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".out")?;
            let alternative = stem
                .strip_prefix(test)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            (stem == test || alternative).then(|| dir.join(name))
        })
        .collect();
    files.sort();
    files
}

/// The tests to run, in groups: the schedule's, with the tests the data has, then each of the
/// data's other tests alone.
fn schedule(data: &Path, only: Option<&[String]>) -> Vec<Vec<String>> {
    let mut present: Vec<String> = std::fs::read_dir(data.join("sql"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".sql")?.to_owned())
        })
        .collect();
    present.sort();
    let wanted = |test: &String| only.is_none_or(|only| only.contains(test));
    let mut groups: Vec<Vec<String>> = SCHEDULE
        .iter()
        .map(|group| {
            group
                .split_whitespace()
                .map(str::to_owned)
                .filter(|t| present.contains(t) && wanted(t))
                .collect()
        })
        .collect();
    let scheduled: Vec<&str> = SCHEDULE.iter().flat_map(|g| g.split_whitespace()).collect();
    for test in &present {
        if !scheduled.contains(&test.as_str()) && wanted(test) {
            groups.push(vec![test.clone()]);
        }
    }
    groups.retain(|group| !group.is_empty());
    groups
}

/// Writes, for each COPY data file `X.data` in `data`, the loader `X.data.sql` the prepared tests
/// `\i` in place of `COPY :copy_target FROM file`: INSERTs into `:copy_target` of its rows (COPY
/// text format), then `\set ECHO all`, which the tests' expected output assumes.
fn write_loaders(data: &Path, loaders: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(loaders)?;
    for entry in std::fs::read_dir(data)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let rows: Vec<String> = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let values: Vec<String> = line.split('\t').map(sql_literal).collect();
                format!("({})", values.join(","))
            })
            .collect();
        let mut sql = String::new();
        for batch in rows.chunks(500) {
            sql.push_str("INSERT INTO :copy_target VALUES\n");
            sql.push_str(&batch.join(",\n"));
            sql.push_str(";\n");
        }
        sql.push_str("\\set ECHO all\n");
        std::fs::write(loaders.join(format!("{name}.sql")), sql)?;
    }
    Ok(())
}

/// A COPY text field as an SQL literal: `\N` is NULL; backslash escapes are undone.
fn sql_literal(field: &str) -> String {
    if field == "\\N" {
        return "NULL".to_owned();
    }
    let mut value = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            value.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            value.push('\\');
            break;
        };
        let simple = match next {
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            _ => None,
        };
        if let Some(c) = simple {
            value.push(c);
        } else if let Some(first) = next.to_digit(8) {
            value.push(escaped_char(first, &mut chars, 8));
        } else if next == 'x' && chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            value.push(escaped_char(0, &mut chars, 16));
        } else {
            value.push(next);
        }
    }
    format!("'{}'", value.replace('\'', "''"))
}

/// The character of a numeric escape (`\NNN` octal, `\xHH` hex) whose digits so far make
/// `code`: up to two more digits in `radix` are taken from `chars`.
fn escaped_char(mut code: u32, chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32) -> char {
    for _ in 0..2 {
        match chars.peek().and_then(|c| c.to_digit(radix)) {
            Some(digit) => {
                code = code * radix + digit;
                chars.next();
            }
            None => break,
        }
    }
    char::from_u32(code).unwrap_or('\u{fffd}')
}
