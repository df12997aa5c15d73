//! The config file: instances and defaults parsed, and every mistake refused as a whole, naming the
//! file, line, field and fix.

use std::path::Path;

use pglite_harness::{Backend, Config, ConfigError, DataDir};

const EXAMPLE: &str = r#"
[defaults]
host = "127.0.0.1"
debug = 0

[instances.default]
port = 0
data_dir = "memory://"          # ephemeral

[instances.app]
port = 0
data_dir = "./data/app"         # persistent; relative to the config file
username = "app"
password = "secret"
database = "app"
extensions = ["pg_trgm"]
settings = { work_mem = "16MB", enable_seqscan = false }
"#;

/// The one problem of a refused config: (line, field, message, fix).
fn problem(err: &ConfigError) -> (Option<usize>, String, String, String) {
    assert_eq!(err.problems().len(), 1, "{err}");
    let p = &err.problems()[0];
    (p.line, p.field.clone(), p.message.clone(), p.fix.clone())
}

#[test]
fn the_example_parses_with_defaults_and_paths_relative_to_the_file() {
    let config = Config::parse(EXAMPLE, "/srv/db/pglite.toml").unwrap();
    let instances: Vec<_> = config.instances().collect();
    assert_eq!(instances.len(), 2);
    let (name, default) = instances[0];
    assert_eq!(name, "default");
    assert_eq!(default.data_dir, DataDir::Memory);
    assert_eq!(default.user, "postgres");
    assert_eq!(default.debug, None);
    let (name, app) = instances[1];
    assert_eq!(name, "app");
    assert_eq!(app.host, "127.0.0.1");
    assert_eq!(app.data_dir, DataDir::Path("/srv/db/./data/app".into()));
    assert_eq!((app.user.as_str(), app.database.as_str()), ("app", "app"));
    assert_eq!(app.password.as_deref(), Some("secret"));
    assert_eq!(app.extensions, ["pg_trgm"]);
    assert_eq!(
        app.settings,
        [
            ("enable_seqscan".to_owned(), "off".to_owned()),
            ("work_mem".to_owned(), "16MB".to_owned())
        ]
    );
}

#[test]
fn an_absent_data_dir_is_in_memory_and_a_file_url_is_on_disk() {
    let config = Config::parse(
        "[instances.a]\n[instances.b]\ndata_dir = \"file:///var/db/b\"\n",
        "pglite.toml",
    )
    .unwrap();
    let dirs: Vec<_> = config.instances().map(|(_, c)| c.data_dir.clone()).collect();
    assert_eq!(dirs, [DataDir::Memory, DataDir::Path("/var/db/b".into())]);
}

#[test]
fn an_unknown_key_is_refused_with_its_line_and_the_known_keys() {
    let text = "[instances.app]\nport = 5433\nprot = 5434\n";
    let err = Config::parse(text, "conf/pglite.toml").unwrap_err();
    let (line, field, message, fix) = problem(&err);
    assert_eq!(line, Some(3));
    assert_eq!(field, "instances.app.prot");
    assert!(message.contains("unknown field `prot`"), "{message}");
    assert!(fix.contains("`port`") && fix.contains("`data_dir`"), "{fix}");
    let shown = err.to_string();
    assert!(
        shown.contains("conf/pglite.toml:3: instances.app.prot"),
        "{shown}"
    );
}

#[test]
fn a_wrong_type_is_refused_with_the_expected_one() {
    let text = "[instances.app]\ndata_dir = \"./x\"\nport = \"5433\"\n";
    let err = Config::parse(text, "pglite.toml").unwrap_err();
    let (line, field, message, fix) = problem(&err);
    assert_eq!((line, field.as_str()), (Some(3), "instances.app.port"));
    assert!(message.contains("invalid type"), "{message}");
    assert!(fix.contains("without quotes"), "{fix}");

    let err = Config::parse("[defaults]\nextensions = \"pg_trgm\"\n", "pglite.toml").unwrap_err();
    let (line, field, _, fix) = problem(&err);
    assert_eq!((line, field.as_str()), (Some(2), "defaults.extensions"));
    assert!(fix.contains("[\"pg_trgm\"]"), "{fix}");
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let err = Config::parse("[instances.app]\nport = = 1\n", "pglite.toml").unwrap_err();
    let (line, _, _, fix) = problem(&err);
    assert_eq!(line, Some(2));
    assert!(fix.contains("TOML syntax"), "{fix}");
}

#[test]
fn two_instances_on_one_port_are_refused() {
    let text = "[instances.a]\nport = 6543\n\n[instances.b]\nport = 6543\n[instances.c]\nport = 0\n[instances.d]\nport = 0\n";
    let err = Config::parse(text, "pglite.toml").unwrap_err();
    let (line, field, message, fix) = problem(&err);
    assert_eq!((line, field.as_str()), (Some(5), "instances.b.port"));
    assert!(message.contains("instance \"a\" (line 2)"), "{message}");
    assert!(fix.contains("port = 0"), "{fix}");
}

#[test]
fn two_instances_on_one_data_dir_are_refused_however_it_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pglite.toml");
    let text = format!(
        "[instances.a]\ndata_dir = \"./data/app\"\n[instances.b]\ndata_dir = \"file://{}/data/../data/app\"\n",
        dir.path().display()
    );
    let err = Config::parse(&text, &file).unwrap_err();
    let (line, field, message, fix) = problem(&err);
    assert_eq!((line, field.as_str()), (Some(4), "instances.b.data_dir"));
    assert!(message.contains("instance \"a\" (line 2)"), "{message}");
    assert!(fix.contains("memory://"), "{fix}");
}

#[test]
fn unknown_extensions_and_debug_levels_are_refused_all_at_once() {
    let text = "[instances.a]\nextensions = [\"pg_nope\"]\ndebug = 9\n";
    let err = Config::parse(text, "pglite.toml").unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 2, "{err}");
    assert_eq!(problems[0].field, "instances.a.debug");
    assert_eq!(problems[0].line, Some(3));
    assert_eq!(problems[1].field, "instances.a.extensions");
    assert!(problems[1].fix.contains("pg_trgm"), "{}", problems[1].fix);
}

#[test]
fn a_port_in_use_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pglite.toml");
    std::fs::write(
        &file,
        format!("[instances.free]\nport = 0\n\n[instances.busy]\nport = {port}\n"),
    )
    .unwrap();
    let err = Config::load(&file).unwrap_err();
    let (line, field, message, _) = problem(&err);
    assert_eq!((line, field.as_str()), (Some(5), "instances.busy.port"));
    assert!(
        message.contains(&format!("port {port} on 127.0.0.1 is in use")),
        "{message}"
    );
    assert!(err.to_string().contains(&file.display().to_string()));
    drop(taken);
    Config::load(&file).unwrap();
}

#[test]
fn a_data_dir_open_elsewhere_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pglite.toml");
    std::fs::write(&file, "[instances.app]\ndata_dir = \"app\"\n").unwrap();
    let open = Backend::builder()
        .data_dir(dir.path().join("app"))
        .open()
        .unwrap();
    let err = Config::load(&file).unwrap_err();
    let (line, field, message, _) = problem(&err);
    assert_eq!((line, field.as_str()), (Some(2), "instances.app.data_dir"));
    assert!(message.contains("open in another PGlite backend"), "{message}");
    open.close().unwrap();
    Config::load(&file).unwrap();
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = Config::load(Path::new("/nonexistent/pglite.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/pglite.toml"), "{err}");
}
