//! `agent-sandbox crd`: print the CRDs, write them to a directory, or check a directory is up to
//! date (CI runs the check against `deploy/crds`).

use std::io::Write;
use std::process::ExitCode;

use agent_sandbox_api::crd;
use anyhow::Context;

use crate::args::CrdArgs;

pub(crate) fn crd(args: &CrdArgs) -> anyhow::Result<ExitCode> {
    let crds = crd::all();
    if let Some(dir) = &args.output_dir {
        fs_err::create_dir_all(dir)?;
        for c in &crds {
            fs_err::write(
                dir.join(crd::file_name(c)),
                crd::to_yaml(std::slice::from_ref(c))?,
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = &args.check {
        let mut stale = Vec::new();
        for c in &crds {
            let path = dir.join(crd::file_name(c));
            let want = crd::to_yaml(std::slice::from_ref(c))?;
            let have = fs_err::read_to_string(&path).unwrap_or_default();
            if have != want {
                stale.push(path.display().to_string());
            }
        }
        if !stale.is_empty() {
            anyhow::bail!(
                "generated CRDs differ from {}; run `agent-sandbox crd --output-dir {}` and commit the result",
                stale.join(", "),
                dir.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    std::io::stdout()
        .lock()
        .write_all(crd::to_yaml(&crds)?.as_bytes())
        .context("writing CRDs to stdout")?;
    Ok(ExitCode::SUCCESS)
}
