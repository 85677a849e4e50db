//! The `agent-sandbox` binary: parses arguments, sets up logging, and dispatches to a command.
#![forbid(unsafe_code)]
// The CLI talks to its user on stdout (data) and stderr (errors, progress).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::Parser;

// mimalloc, built without transparent huge pages: glibc's malloc and free were about a third of
// the control plane's CPU under load. The same allocator serves the binary as sandboxd.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Started as `sandboxd` (the name it has inside sandbox images), the binary is sandboxd.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "sandboxd")
    {
        argv.insert(1, "sandboxd".into());
    }
    let cli = args::Cli::parse_from(argv);
    // One TLS crypto backend for the whole process (several are linked in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(err) = logging::init(&cli.global) {
        eprintln!("error: {err:#}");
        return ExitCode::from(2);
    }
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`agent-sandbox crd | head`) is not an error.
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
