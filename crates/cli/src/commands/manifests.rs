//! `agent-sandbox validate` and `agent-sandbox convert`: offline admission and conversion of
//! manifest files, with the same rules as the API server.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use agent_sandbox_api::manifest::{self, Object};
use anyhow::Context;
use serde_json::Value;

use crate::args::{ConvertArgs, FileArgs};

pub(super) fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(text);
    }
    Ok(fs_err::read_to_string(path)?)
}

fn parse(path: &Path) -> anyhow::Result<Vec<Object>> {
    let text = read(path)?;
    manifest::parse(&text).with_context(|| format!("{} is not a valid manifest", path.display()))
}

fn describe(v: &Value) -> String {
    format!(
        "{}/{} ({})",
        v["kind"].as_str().unwrap_or_default().to_lowercase(),
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<no name>"),
        v["apiVersion"].as_str().unwrap_or_default()
    )
}

pub(crate) fn validate(args: &FileArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for path in &args.files {
        match parse(path) {
            Ok(objects) => {
                for o in objects {
                    writeln!(out, "{}: {} valid", path.display(), describe(&o.to_json()))?;
                }
            }
            Err(err) => {
                failed = true;
                eprintln!("error: {err:#}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn convert(args: &ConvertArgs) -> anyhow::Result<ExitCode> {
    let mut docs = Vec::new();
    for path in &args.files.files {
        for o in parse(path)? {
            let converted = o
                .convert_to(args.to.as_str())
                .with_context(|| format!("converting {}", describe(&o.to_json())))?;
            docs.push(converted);
        }
    }
    let mut out = std::io::stdout().lock();
    for d in docs {
        writeln!(out, "---")?;
        out.write_all(serde_yaml_ng::to_string(&d)?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
