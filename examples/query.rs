//! Runs SQL on an embedded PostgreSQL 18.6 and prints the rows as text.
//!
//! ```text
//! cargo run --release --example query -- "select version()"
//! cargo run --release --example query -- --data-dir ./data "create table if not exists t(x int)"
//! ```
//!
//! Without `--data-dir` the database lives in memory and is gone at exit; with it, the directory
//! is created from the template on first use and reopened afterwards.

use std::process::ExitCode;

use pglite_harness::{Backend, DataDir, StatementResult};

fn main() -> ExitCode {
    let mut data_dir = DataDir::Memory;
    let mut sql = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => match args.next() {
                Some(dir) => data_dir = DataDir::parse(&dir),
                None => return usage("--data-dir needs a directory"),
            },
            "-h" | "--help" => return usage(""),
            _ => sql.push(arg),
        }
    }
    if sql.is_empty() {
        return usage("no SQL given");
    }

    let mut backend = match Backend::builder().data_dir(data_dir).open() {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut status = ExitCode::SUCCESS;
    for statement in sql {
        match backend.simple_query(&statement) {
            Ok(out) => {
                for notice in &out.notices {
                    eprintln!("{}: {}", notice.severity, notice.message);
                }
                for result in &out.statements {
                    print_result(result);
                }
                if let Some(error) = out.error {
                    eprintln!("{error}");
                    status = ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = backend.close() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    status
}

/// Prints a result the way psql's aligned format does.
fn print_result(result: &StatementResult) {
    if result.columns.is_empty() {
        println!("{}", result.tag);
        return;
    }
    let cell = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut widths: Vec<usize> = result.columns.iter().map(|c| c.chars().count()).collect();
    for row in &result.rows {
        for (w, v) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell(v).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(result.columns.clone()));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    for row in &result.rows {
        println!("{}", line(row.iter().map(cell).collect()));
    }
    let n = result.rows.len();
    println!("({n} row{})\n", if n == 1 { "" } else { "s" });
}

fn usage(problem: &str) -> ExitCode {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!("usage: query [--data-dir DIR] \"SQL\" [\"SQL\" ...]");
    if problem.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
