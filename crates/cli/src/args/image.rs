//! Flags of `agent-sandbox image` (the embedded node's image store).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Images on the embedded node.
#[derive(Debug, Args)]
pub(crate) struct ImageArgs {
    /// The data directory of `agent-sandbox up`.
    #[arg(
        long,
        value_parser = crate::args::absolute_path,
        global = true,
        env = "AGENT_SANDBOX_DATA_DIR",
        default_value = "/var/lib/agent-sandbox"
    )]
    pub(crate) data_dir: PathBuf,
    #[command(subcommand)]
    pub(crate) command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Load an image from an OCI image layout directory, as if pulled (works offline, also
    /// while `up` runs).
    Import {
        /// The OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
        layout: PathBuf,
        /// The reference Pods name the image by, e.g. `localhost/agent-sandbox/python:latest`.
        #[arg(long = "as", value_name = "REFERENCE")]
        reference: String,
        /// The tag to take from the layout's index (needed when it holds several images).
        #[arg(long)]
        tag: Option<String>,
    },
    /// List the images the node has.
    Ls,
}
