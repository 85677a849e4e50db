//! Admission cost per object (prune, default, validate, CEL), as a create and as an update
//! against the same stored object, for a Sandbox (with volume claim templates) and a SandboxClaim,
//! beside the cost of decoding the same object into its Rust type (the baseline) in the same run.
//! Run with `cargo bench -p agent-sandbox-api`.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use agent_sandbox_api::registry::registry;
use agent_sandbox_api::{manifest, v1beta1};
use serde_json::Value;

fn example(rel: &str) -> Value {
    let text = fs_err::read_to_string(format!(
        "{}/../../examples/manifests/{rel}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    manifest::parse(&text).unwrap().remove(0).to_json()
}

fn time<F: FnMut()>(n: u32, mut f: F) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let n = 2000;
    let reg = registry();
    println!(
        "{:<14} {:>14} {:>14} {:>16}",
        "kind", "create µs/obj", "update µs/obj", "decode µs/obj"
    );
    for (rel, crd) in [
        ("sandbox.yaml", "sandboxes.agents.x-k8s.io"),
        ("claim.yaml", "sandboxclaims.extensions.agents.x-k8s.io"),
    ] {
        let obj = example(rel);
        let create = time(n, || {
            let mut o = obj.clone();
            reg.admit(crd, "v1beta1", &mut o, None).unwrap().unwrap();
        });
        let update = time(n, || {
            let mut o = obj.clone();
            reg.admit(crd, "v1beta1", &mut o, Some(&obj))
                .unwrap()
                .unwrap();
        });
        let decode = time(n, || {
            let o = obj.clone();
            if rel == "sandbox.yaml" {
                let _: v1beta1::Sandbox = serde_json::from_value(o).unwrap();
            } else {
                let _: v1beta1::SandboxClaim = serde_json::from_value(o).unwrap();
            }
        });
        println!(
            "{:<14} {:>14.1} {:>14.1} {:>16.1}",
            rel.trim_end_matches(".yaml"),
            create,
            update,
            decode
        );
    }
}
