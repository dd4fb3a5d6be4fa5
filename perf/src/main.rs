//! The `quire-perf` command: see `quire-perf --help`.

use clap::Parser;

fn main() {
    let args = quire_perf::args::Args::parse();
    std::process::exit(quire_perf::run::main_with(args));
}
