//! One module per verb; [`run`] dispatches.

mod bench;
mod connect;
mod controller;
mod crd;
mod data_plane;
mod fork;
mod image;
mod manifests;
mod mcp;
mod router;
mod router_pod;
mod sandboxes;
mod snapshot;
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
        Command::Apply(args) => block_on(sandboxes::apply(&args)),
        Command::Claim(args) => block_on(sandboxes::claim(&args)),
        Command::Get(args) => block_on(sandboxes::get(&args)),
        Command::Delete(args) => block_on(sandboxes::delete(&args)),
        Command::Suspend(args) => block_on(sandboxes::suspend(&args)),
        Command::Resume(args) => block_on(sandboxes::resume(&args)),
        Command::Pause(args) => block_on(sandboxes::pause(&args, true)),
        Command::Unpause(args) => block_on(sandboxes::pause(&args, false)),
        Command::Snapshot(args) => block_on(snapshot::snapshot(&args)),
        Command::Fork(args) => block_on(fork::fork(&args)),
        Command::Restore(args) => block_on(fork::restore(&args)),
        Command::Logs(args) => block_on(sandboxes::logs(&args)),
        Command::Exec(args) => block_on(data_plane::exec(&args)),
        Command::Cp(args) => block_on(data_plane::cp(&args)),
        Command::Ls(args) => block_on(data_plane::ls(&args)),
        Command::Bench(args) => runtime()?.block_on(bench::bench(&args)),
        Command::Mcp(args) => runtime()?.block_on(mcp::mcp(&args)),
    }
}

/// `NAME=VALUE` from a repeated flag such as `--env` or `--label`.
fn split_pair(pair: &str, flag: &str) -> anyhow::Result<(String, String)> {
    use anyhow::Context;
    pair.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .with_context(|| format!("{flag} {pair:?} is not NAME=VALUE"))
}

/// Runs a short-lived verb on a single-threaded runtime.
fn block_on(
    verb: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(verb)
}

/// The multi-threaded async runtime the long-running verbs use.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
