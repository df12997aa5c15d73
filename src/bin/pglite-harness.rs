//! The `pglite-harness` command line: serves PGlite instances on local ports until Ctrl-C.
//!
//! ```text
//! pglite-harness serve                          # one in-memory instance on 127.0.0.1:5432 (or the next free port)
//! pglite-harness serve --data-dir ./data/app    # one persistent instance
//! pglite-harness serve --config                 # every instance of ./pglite.toml
//! pglite-harness serve --config app.toml --admin 127.0.0.1:9187   # plus /health and /metrics
//! ```

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgAction, Args, Parser, Subcommand};
use pglite_harness::{
    AdminServer, Config, DEFAULT_CONFIG_FILE, DataDir, InstanceConfig, Instances, data_dir_display,
};

/// PostgreSQL 18 (PGlite on wasmtime) on local ports, in one process.
#[derive(Debug, Parser)]
#[command(name = "pglite-harness", version, about)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve instances until Ctrl-C or SIGTERM (then shut each down cleanly).
    Serve(Serve),
}

#[derive(Debug, Args)]
struct Serve {
    /// Serve every instance of this config file (default name: pglite.toml).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = DEFAULT_CONFIG_FILE,
          conflicts_with_all = ["data_dir", "port", "host", "user", "database", "password"])]
    config: Option<PathBuf>,
    /// Where the single instance keeps its data: memory:// (default), a path or a file:// URL.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Port of the single instance (default 5432, or the next free one).
    #[arg(long)]
    port: Option<u16>,
    /// Address of the single instance.
    #[arg(long, default_value = "127.0.0.1")]
    host: Option<String>,
    /// Role of the single instance.
    #[arg(long, short = 'U', default_value = "postgres")]
    user: Option<String>,
    /// Database of the single instance.
    #[arg(long, default_value = "postgres")]
    database: Option<String>,
    /// Password of the single instance (SCRAM-SHA-256); none trusts every client.
    #[arg(long, env = "PGLITE_PASSWORD")]
    password: Option<String>,
    /// Serve /health and /metrics on this address (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// Postgres' server log at this debug level (1-5, like PGlite's debug option), for every instance.
    #[arg(long, short = 'd', value_name = "LEVEL", num_args = 0..=1, default_missing_value = "1",
          value_parser = clap::value_parser!(u8).range(0..=5))]
    debug: Option<u8>,
}

/// The port the single instance uses without `--port`, and how far it looks for a free one.
const DEFAULT_PORT: u16 = 5432;
const PORT_SEARCH: u16 = 100;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(serve) = cli.command;
    init_logging(cli.verbose, serve.debug.unwrap_or(0));
    match run(serve) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pglite-harness: {message}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8, debug: u8) {
    let level = ["warn", "info", "debug", "trace"][usize::from(verbose.min(3))];
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if debug > 0 {
        filter = filter.add_directive(
            "pglite_harness::server_log=trace"
                .parse()
                .expect("a valid directive"),
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(serve: Serve) -> Result<ExitCode, String> {
    let instances = Arc::new(Instances::new());
    let planned: Vec<(String, InstanceConfig)> = match &serve.config {
        Some(file) => {
            let config = Config::load(file).map_err(|e| e.to_string())?;
            config
                .instances()
                .map(|(name, instance)| {
                    let mut instance = instance.clone();
                    if serve.debug.is_some() {
                        instance.debug = serve.debug.filter(|&level| level > 0);
                    }
                    (name.to_owned(), instance)
                })
                .collect()
        }
        None => vec![("default".to_owned(), single_instance(&serve)?)],
    };
    if planned.is_empty() {
        return Err("the config file declares no instances ([instances.NAME] tables)".into());
    }

    let mut rows = Vec::new();
    let mut started = 0;
    for (name, config) in &planned {
        let data_dir = data_dir_display(&config.data_dir);
        match instances.start(name, config.clone()) {
            Ok(info) => {
                started += 1;
                rows.push([name.clone(), info.url, data_dir]);
            }
            Err(e) => rows.push([name.clone(), format!("FAILED: {e}"), data_dir]),
        }
    }
    print_table(&rows);
    if started == 0 {
        return Ok(ExitCode::FAILURE);
    }
    let admin = match &serve.admin {
        Some(address) => {
            let admin = AdminServer::start(address, instances.clone()).map_err(|e| e.to_string())?;
            println!(
                "admin: http://{0}/health and http://{0}/metrics",
                admin.local_addr()
            );
            Some(admin)
        }
        None => None,
    };
    println!("Ctrl-C or SIGTERM stops every instance cleanly.");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot wait for signals: {e}"))?;
    let clean = runtime.block_on(async {
        let mut signals = Signals::new()?;
        signals.next().await;
        println!("shutting down (a second signal exits at once)");
        drop(admin);
        let stopping = instances.clone();
        let stop = tokio::task::spawn_blocking(move || stopping.stop_all());
        tokio::select! {
            results = stop => {
                let mut clean = true;
                for (name, result) in results.unwrap_or_default() {
                    if let Err(e) = result {
                        eprintln!("{name}: {e}");
                        clean = false;
                    }
                }
                Ok::<bool, String>(clean)
            }
            _ = signals.next() => {
                eprintln!("second signal: exiting without a clean shutdown");
                std::process::exit(130);
            }
        }
    })?;
    println!("stopped");
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The instance of `serve` without a config file.
fn single_instance(serve: &Serve) -> Result<InstanceConfig, String> {
    let host = serve.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    let port = match serve.port {
        Some(port) => port,
        None => {
            let port = (DEFAULT_PORT..DEFAULT_PORT + PORT_SEARCH)
                .find(|&port| TcpListener::bind((host.as_str(), port)).is_ok())
                .ok_or_else(|| {
                    format!(
                        "ports {DEFAULT_PORT} to {} are all in use; pass --port",
                        DEFAULT_PORT + PORT_SEARCH - 1
                    )
                })?;
            if port != DEFAULT_PORT {
                println!("port {DEFAULT_PORT} is in use; serving on {port}");
            }
            port
        }
    };
    Ok(InstanceConfig {
        host,
        port,
        data_dir: serve.data_dir.as_deref().map_or(DataDir::Memory, DataDir::parse),
        user: serve.user.clone().unwrap_or_else(|| "postgres".into()),
        password: serve.password.clone(),
        database: serve.database.clone().unwrap_or_else(|| "postgres".into()),
        debug: serve.debug.filter(|&level| level > 0),
        ..InstanceConfig::default()
    })
}

fn print_table(rows: &[[String; 3]]) {
    let header = ["NAME", "URL", "DATA DIR"].map(String::from);
    let widths: Vec<usize> = (0..3)
        .map(|c| {
            std::iter::once(&header)
                .chain(rows)
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows) {
        println!(
            "{:w0$}  {:w1$}  {}",
            row[0],
            row[1],
            row[2],
            w0 = widths[0],
            w1 = widths[1]
        );
    }
}

/// Ctrl-C and SIGTERM.
struct Signals {
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, String> {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        Ok(Self { term })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
    }
}
