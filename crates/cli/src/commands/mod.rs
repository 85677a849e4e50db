//! One module per verb; [`run`] dispatches.

mod controller;
mod crd;
mod image;
mod manifests;
mod router;
mod up;
mod version;

use std::process::ExitCode;

use crate::args::Command;

pub(crate) fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crd(args) => crd::crd(&args),
        Command::Validate(args) => manifests::validate(&args),
        Command::Convert(args) => manifests::convert(&args),
        Command::Version => version::version(),
        Command::Up(args) => up::up(&args),
        Command::Controller(args) => controller::controller(&args),
        Command::Image(args) => image::image(&args),
        Command::Router(args) => router::router(&args),
        Command::Sandboxd(config) => router::sandboxd(config),
        other => not_yet_available(&other),
    }
}

/// Verbs whose part of the system is not in this build yet.
fn not_yet_available(command: &Command) -> anyhow::Result<ExitCode> {
    let verb = format!("{command:?}").to_lowercase();
    anyhow::bail!(
        "`agent-sandbox {verb}` is not yet available in this build; available now: up, controller, router, sandboxd, image, crd, validate, convert, version"
    )
}

/// The multi-threaded async runtime the long-running verbs use.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
