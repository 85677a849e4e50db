//! `agent-sandbox image`: import OCI image layouts into the embedded node's image store and
//! list what it holds. The store is the one `up` uses (`<data dir>/node/images`); it is safe to
//! write while `up` runs (every entry is written to a temporary name and renamed).

use std::process::ExitCode;

use agent_sandbox_node::image::{ImageStore, RegistryConfig};
use anyhow::Context;

use crate::args::{ImageArgs, ImageCommand};

pub(crate) fn image(args: &ImageArgs) -> anyhow::Result<ExitCode> {
    let root = args.data_dir.join("node").join("images");
    let store = ImageStore::open(&root, RegistryConfig::default())
        .with_context(|| format!("opening the image store {}", root.display()))?;
    match &args.command {
        ImageCommand::Import {
            layout,
            reference,
            tag,
        } => {
            if !layout.join("index.json").is_file() {
                anyhow::bail!(
                    "{} is not an OCI image layout (no index.json); build one with examples/image/build.py",
                    layout.display()
                );
            }
            let started = std::time::Instant::now();
            let report = super::runtime()?
                .block_on(store.import_oci_layout(layout, tag.as_deref(), reference))
                .with_context(|| format!("importing {} as {reference}", layout.display()))?;
            println!(
                "imported {} ({}): {} new blobs, {} layers unpacked, in {:.1?}",
                report.image.reference,
                report.image.manifest_digest,
                report.downloaded,
                report.unpacked,
                started.elapsed()
            );
        }
        ImageCommand::Ls => {
            let images = store.list()?;
            if images.is_empty() {
                println!("no images in {}", root.display());
            }
            for img in images {
                println!(
                    "{}\t{}\t{} layers",
                    img.reference,
                    img.manifest_digest,
                    img.layers.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
