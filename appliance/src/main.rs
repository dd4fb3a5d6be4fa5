//! `quire`: the appliance daemon (`quire serve`) and its management CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quire_appliance::cli::{self, ClientCommand};
use quire_appliance::serve::{self, Overrides};
use quire_config::Config;

/// Quire: a scale-out NVMe/TCP block storage appliance.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
struct Args {
    /// The management socket of the daemon to talk to (default: the one of the
    /// embedded default configuration, ./quire-data/quire.sock; or $QUIRE_SOCKET).
    #[arg(long, global = true, env = "QUIRE_SOCKET")]
    socket: Option<PathBuf>,
    /// Print management results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a peer. With no arguments: the embedded default (an 8 GiB sparse file in
    /// ./quire-data, a 1 GiB volume "demo", 127.0.0.1:4420 and :8009).
    Serve {
        /// A TOML configuration file (see config/default.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the configuration that would run, as TOML, and exit.
        #[arg(long)]
        print_config: bool,
        /// Overrides one key of the configuration: `--set reactors.poll=busy`,
        /// `--set device.0.pci_address=0000:00:04.0` (repeatable; later wins).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[command(flatten)]
        overrides: Overrides,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Serve { config, print_config, overrides, sets } => {
            let mut cfg = match Config::from_file_with(config.as_deref(), &sets) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("quire: {e}");
                    return ExitCode::from(2);
                }
            };
            serve::apply_overrides(&mut cfg, &overrides);
            if let Err(e) = cfg.validate() {
                eprintln!("quire: {e}");
                return ExitCode::from(2);
            }
            if print_config {
                print!("{}", cfg.to_toml());
                return ExitCode::SUCCESS;
            }
            init_logging(&cfg.log);
            match serve::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("quire: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Client(cmd) => {
            let socket = args.socket.unwrap_or_else(|| Config::default().rpc_socket_path());
            cli::run(cmd, &socket, args.json)
        }
    }
}

/// Logs go to stderr: plain text (ANSI colours only on a terminal, never in a file or
/// a pipe) or JSON lines (`log.format`).
fn init_logging(log: &quire_config::Log) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        quire_config::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        quire_config::LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}
