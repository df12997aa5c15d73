//! The config file (`pglite.toml`): named instances and their defaults, checked as a whole before
//! anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::InstanceConfig;
use crate::backend::{DataDir, LOCK_FILE};

/// The config file's default name.
pub const DEFAULT_CONFIG_FILE: &str = "pglite.toml";

/// A parsed and checked config file: the instances to start, in file order.
///
/// ```no_run
/// use pglite_harness::{Config, Instances};
///
/// let config = Config::load("pglite.toml")?;       // refused as a whole if anything is wrong
/// let instances = Instances::new();
/// for (name, result) in instances.start_config(&config) {
///     match result {
///         Ok(info) => println!("{name}: {}", info.url),
///         Err(e) => eprintln!("{name}: {e}"),
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    file: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    config: InstanceConfig,
    /// Lines of the instance's table, its `port` and its `data_dir`.
    line: usize,
    port_line: Option<usize>,
    data_dir_line: Option<usize>,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file has mistakes; nothing was started.
    #[error("{} is invalid:\n{}", file.display(), render(file, problems))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every mistake found.
        problems: Vec<ConfigProblem>,
    },
}

/// One mistake in a config file: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The line (1-based), when the mistake has one.
    pub line: Option<usize>,
    /// The field, as a dotted path (`instances.app.port`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    /// The mistakes found (empty when the file could not be read).
    ///
    /// ```
    /// let err = pglite_harness::Config::parse("[instances.a]\nprot = 1\n", "pglite.toml").unwrap_err();
    /// assert_eq!(err.problems()[0].field, "instances.a.prot");
    /// ```
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render(file: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            let at = match p.line {
                Some(line) => format!("{}:{line}", file.display()),
                None => file.display().to_string(),
            };
            format!("  {at}: {}: {}\n    fix: {}", p.field, p.message, p.fix)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {} (fix: {})", self.field, self.message, self.fix)
    }
}

/// The file's shape. Every table refuses keys it does not know.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawInstance,
    #[serde(default)]
    instances: BTreeMap<String, Spanned<RawInstance>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    host: Option<String>,
    port: Option<Spanned<u16>>,
    data_dir: Option<Spanned<String>>,
    #[serde(alias = "user")]
    username: Option<String>,
    password: Option<String>,
    database: Option<String>,
    extensions: Option<Vec<String>>,
    settings: Option<BTreeMap<String, Spanned<toml::Value>>>,
    debug: Option<Spanned<u8>>,
}

impl RawInstance {
    /// This instance's keys, falling back on `defaults` for those it does not set.
    fn or(self, defaults: &RawInstance) -> RawInstance {
        let d = defaults.clone();
        RawInstance {
            host: self.host.or(d.host),
            port: self.port.or(d.port),
            data_dir: self.data_dir.or(d.data_dir),
            username: self.username.or(d.username),
            password: self.password.or(d.password),
            database: self.database.or(d.database),
            extensions: self.extensions.or(d.extensions),
            settings: match (self.settings, d.settings) {
                (Some(mine), Some(mut all)) => {
                    all.extend(mine);
                    Some(all)
                }
                (mine, all) => mine.or(all),
            },
            debug: self.debug.or(d.debug),
        }
    }
}

impl Config {
    /// Reads and checks `file`: its syntax and fields ([`parse`](Self::parse)), then that every
    /// port is free and every data directory unused ([`check_available`](Self::check_available)).
    /// Relative data directories are relative to the file.
    ///
    /// ```no_run
    /// let config = pglite_harness::Config::load("pglite.toml")?;
    /// for (name, instance) in config.instances() {
    ///     println!("{name}: port {}", instance.port);
    /// }
    /// # Ok::<(), pglite_harness::ConfigError>(())
    /// ```
    pub fn load(file: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let file = &std::path::absolute(file.as_ref()).unwrap_or_else(|_| file.as_ref().to_owned());
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let config = Config::parse(&text, file)?;
        config.check_available()?;
        Ok(config)
    }

    /// Parses the text of a config file named `file` (used in messages, and as the base of
    /// relative data directories) and checks it: unknown keys, wrong types, duplicate ports, two
    /// instances on one data directory, unknown extensions, debug levels.
    ///
    /// ```
    /// let config = pglite_harness::Config::parse(
    ///     "[instances.default]\nport = 0\n[instances.app]\ndata_dir = \"./data/app\"\n",
    ///     "/srv/pglite.toml",
    /// )?;
    /// let names: Vec<&str> = config.instances().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["default", "app"]);
    /// # Ok::<(), pglite_harness::ConfigError>(())
    /// ```
    pub fn parse(text: &str, file: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let file = file.as_ref().to_owned();
        let lines = LineIndex::new(text);
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            file: file.clone(),
            problems: vec![lines.toml_problem(&e)],
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut instances: Vec<_> = raw.instances.into_iter().collect();
        instances.sort_by_key(|(_, table)| table.span().start);
        for (name, table) in instances {
            let line = lines.line(table.span().start);
            let raw = table.into_inner().or(&raw.defaults);
            match instance_config(&name, raw, base, &lines) {
                Ok(entry) => entries.push(Entry { line, ..entry }),
                Err(mut more) => problems.append(&mut more),
            }
        }
        check_conflicts(&entries, &mut problems);
        if problems.is_empty() {
            Ok(Config { file, entries })
        } else {
            Err(ConfigError::Invalid { file, problems })
        }
    }

    /// Checks what can change between parsing and starting: every non-zero port can be bound
    /// now, and no data directory is open in a PGlite backend (of this process or another).
    ///
    /// ```no_run
    /// # let config = pglite_harness::Config::parse("[instances.a]\nport = 5432\n", "pglite.toml")?;
    /// config.check_available()?; // port 5432 is free
    /// # Ok::<(), pglite_harness::ConfigError>(())
    /// ```
    pub fn check_available(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for entry in &self.entries {
            let config = &entry.config;
            if config.port != 0
                && let Err(e) = TcpListener::bind((config.host.as_str(), config.port))
            {
                problems.push(ConfigProblem {
                    line: entry.port_line.or(Some(entry.line)),
                    field: format!("instances.{}.port", entry.name),
                    message: format!("port {} on {} is in use ({e})", config.port, config.host),
                    fix: "stop what listens there, choose another port, or set port = 0 for a free one"
                        .into(),
                });
            }
            if let DataDir::Path(dir) = &config.data_dir
                && data_dir_locked(dir)
            {
                problems.push(ConfigProblem {
                    line: entry.data_dir_line.or(Some(entry.line)),
                    field: format!("instances.{}.data_dir", entry.name),
                    message: format!(
                        "data directory {} is open in another PGlite backend (lock {LOCK_FILE})",
                        dir.display()
                    ),
                    fix: "stop the process that has it open, or choose another data_dir".into(),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: self.file.clone(),
                problems,
            })
        }
    }

    /// The instances, in file order.
    ///
    /// ```
    /// let config = pglite_harness::Config::parse("[instances.app]\nport = 5433\n", "pglite.toml")?;
    /// let (name, app) = config.instances().next().unwrap();
    /// assert_eq!((name, app.port), ("app", 5433));
    /// # Ok::<(), pglite_harness::ConfigError>(())
    /// ```
    pub fn instances(&self) -> impl Iterator<Item = (&str, &InstanceConfig)> {
        self.entries.iter().map(|e| (e.name.as_str(), &e.config))
    }

    /// The file it was read from.
    ///
    /// ```
    /// let config = pglite_harness::Config::parse("[instances.app]\nport = 5433\n", "/srv/pglite.toml")?;
    /// assert_eq!(config.file(), std::path::Path::new("/srv/pglite.toml"));
    /// # Ok::<(), pglite_harness::ConfigError>(())
    /// ```
    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Builds one instance's config, or says everything wrong with it.
fn instance_config(
    name: &str,
    raw: RawInstance,
    base: &Path,
    lines: &LineIndex,
) -> Result<Entry, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let field = |key: &str| format!("instances.{name}.{key}");
    let defaults = InstanceConfig::default();
    let data_dir = match &raw.data_dir {
        None => DataDir::Memory,
        Some(spec) => match DataDir::parse(spec.get_ref()) {
            DataDir::Path(path) if path.is_relative() => DataDir::Path(base.join(path)),
            other => other,
        },
    };
    if name.is_empty() {
        problems.push(ConfigProblem {
            line: None,
            field: "instances".into(),
            message: "an instance has an empty name".into(),
            fix: "name it, e.g. [instances.app]".into(),
        });
    }
    let debug = raw.debug.as_ref().map(|d| *d.get_ref());
    if let Some(level) = &raw.debug
        && *level.get_ref() > 5
    {
        problems.push(ConfigProblem {
            line: Some(lines.line(level.span().start)),
            field: field("debug"),
            message: format!("debug level {} does not exist", level.get_ref()),
            fix: "use 0 (off) to 5, like PGlite's debug option".into(),
        });
    }
    let extensions = raw.extensions.unwrap_or_default();
    for extension in &extensions {
        if crate::assets::extension_bundle(extension).is_none() {
            problems.push(ConfigProblem {
                line: None,
                field: field("extensions"),
                message: format!("unknown extension {extension:?}"),
                fix: format!(
                    "use one of: {}",
                    crate::extension_bundle_names().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let mut settings = Vec::new();
    for (key, value) in raw.settings.unwrap_or_default() {
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => if *b { "on" } else { "off" }.to_owned(),
            _ => {
                problems.push(ConfigProblem {
                    line: Some(lines.line(value.span().start)),
                    field: format!("instances.{name}.settings.{key}"),
                    message: "a setting is a string, number or boolean".into(),
                    fix: format!("write it as Postgres would, e.g. {key} = \"16MB\""),
                });
                continue;
            }
        };
        settings.push((key, text));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Entry {
        name: name.to_owned(),
        line: 0,
        port_line: raw.port.as_ref().map(|p| lines.line(p.span().start)),
        data_dir_line: raw.data_dir.as_ref().map(|d| lines.line(d.span().start)),
        config: InstanceConfig {
            host: raw.host.unwrap_or(defaults.host),
            port: raw.port.map_or(0, Spanned::into_inner),
            data_dir,
            user: raw.username.unwrap_or(defaults.user),
            password: raw.password,
            database: raw.database.unwrap_or(defaults.database),
            extensions,
            settings,
            debug: debug.filter(|&level| level > 0),
        },
    })
}

/// Two instances on one port, or on one data directory.
fn check_conflicts(entries: &[Entry], problems: &mut Vec<ConfigProblem>) {
    for (i, entry) in entries.iter().enumerate() {
        let earlier = &entries[..i];
        let port = entry.config.port;
        if port != 0
            && let Some(other) = earlier.iter().find(|o| o.config.port == port)
        {
            problems.push(ConfigProblem {
                line: entry.port_line.or(Some(entry.line)),
                field: format!("instances.{}.port", entry.name),
                message: format!(
                    "port {port} is also the port of instance {:?} (line {})",
                    other.name,
                    other.port_line.unwrap_or(other.line)
                ),
                fix: "give each instance its own port, or set port = 0 for a free one".into(),
            });
        }
        if let DataDir::Path(dir) = &entry.config.data_dir {
            let canonical = super::canonical(dir);
            if let Some(other) = earlier
                .iter()
                .find(|o| matches!(&o.config.data_dir, DataDir::Path(d) if super::canonical(d) == canonical))
            {
                problems.push(ConfigProblem {
                    line: entry.data_dir_line.or(Some(entry.line)),
                    field: format!("instances.{}.data_dir", entry.name),
                    message: format!(
                        "data directory {} is also the data directory of instance {:?} (line {})",
                        canonical.display(),
                        other.name,
                        other.data_dir_line.unwrap_or(other.line)
                    ),
                    fix: "give each instance its own data_dir, or data_dir = \"memory://\"".into(),
                });
            }
        }
    }
}

/// Whether a PGlite backend holds the lock of `dir` now.
fn data_dir_locked(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Byte offsets to lines, and the field a line defines.
struct LineIndex<'t> {
    text: &'t str,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        Self { text }
    }

    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The dotted name of the key on `line`, under the last table header above it.
    fn field_at(&self, line: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let Some(here) = lines.get(line.saturating_sub(1)).map(|l| l.trim()) else {
            return String::new();
        };
        if here.starts_with('[') {
            return here.trim_matches(['[', ']']).trim().to_owned();
        }
        let key = here.split('=').next().unwrap_or("").trim().trim_matches('"');
        let table = lines[..line.saturating_sub(1)]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(['[', ']']).trim());
        match table {
            Some(table) => format!("{table}.{key}"),
            None => key.to_owned(),
        }
    }

    /// A problem from a TOML syntax or shape error, with a fix for the common ones.
    fn toml_problem(&self, error: &toml::de::Error) -> ConfigProblem {
        let line = error.span().map(|span| self.line(span.start));
        let message = error.message().trim().to_owned();
        let field = line.map(|l| self.field_at(l)).unwrap_or_default();
        let fix = if let Some(rest) = message.strip_prefix("unknown field") {
            match rest.split_once("expected") {
                Some((_, known)) => {
                    format!("remove it or correct its spelling; known keys: {}", known.trim())
                }
                None => "remove it".to_owned(),
            }
        } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
            let expected = message.rsplit_once("expected ").map_or("", |(_, e)| e.trim());
            format!("write {}", describe_expected(expected))
        } else if message.contains("duplicate key") {
            "keep only one of the two".to_owned()
        } else {
            "correct the TOML syntax on this line (https://toml.io)".to_owned()
        };
        ConfigProblem {
            line,
            field,
            message,
            fix,
        }
    }
}

/// What serde expected, in words for the fix.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u16" => "a port number from 0 to 65535, without quotes (port = 5433)".into(),
        "u8" => "a number from 0 to 5, without quotes (debug = 1)".into(),
        "a string" => "a quoted string".into(),
        "a sequence" => "a list of names, e.g. [\"pg_trgm\"]".into(),
        "a map" => "a table, e.g. { work_mem = \"16MB\" }".into(),
        other => format!("a value of the expected type ({other})"),
    }
}
