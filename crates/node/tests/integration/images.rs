//! Images: pull from a real local registry (Debian `docker-registry` on a loopback port), cache
//! hits, digest mismatches refused (registry and OCI layout), OCI layout import, one copy of
//! each layer however many sandboxes use it, and the pull policies.

#![allow(clippy::print_stdout)]

use crate::common;

use agent_sandbox_node::{HandlerKind, NodeError, PullPolicy, SandboxSpec};
use common::{Env, Registry, TestImage, assert_no_leaks, is_root, skip_unless};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_local_registry_with_cache_and_digest_checks() {
    if skip_unless(
        Registry::binary().is_some(),
        "docker-registry is not installed",
    ) || skip_unless(is_root(), "needs root (whiteouts and layer ownership)")
        || skip_unless(common::have_busybox(), "busybox-static is not installed")
    {
        return;
    }
    let reg = Registry::start();
    let img = TestImage::busybox();
    let reference = format!("{}/test/busybox:1", reg.addr);
    let pushed_digest = img.push(&reference).await;

    let env = Env::new(&[], None).await;
    let store = env.engine().images();

    // First pull downloads config + layer.
    let r = store
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(r.downloaded, 2);
    assert_eq!(r.unpacked, 1);
    assert_eq!(r.image.manifest_digest, pushed_digest);
    let lower = store.lower_dirs(&r.image);
    assert!(lower[0].join("bin/busybox").is_file());
    assert!(lower[0].join("bin/sh").is_symlink());

    // Cache hits: Always resolves the manifest but downloads nothing; IfNotPresent and Never
    // do not touch the registry.
    let r2 = store.ensure(&reference, PullPolicy::Always).await.unwrap();
    assert_eq!((r2.downloaded, r2.unpacked), (0, 0));
    let r3 = store.ensure(&reference, PullPolicy::Never).await.unwrap();
    assert_eq!(r3.image, r.image);

    // By digest.
    let by_digest = format!("{}/test/busybox@{}", reg.addr, pushed_digest);
    let r4 = store
        .ensure(&by_digest, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(r4.image.layers, r.image.layers);
    assert_eq!(
        r4.downloaded, 0,
        "blobs are cached by digest across references"
    );

    // A wrong digest in the reference: refused.
    let wrong = format!("{}/test/busybox@sha256:{}", reg.addr, "0".repeat(64));
    let err = store
        .ensure(&wrong, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::Pull { .. } | NodeError::DigestMismatch { .. }
        ),
        "{err}"
    );

    // Corrupt a layer in the registry's storage: the pull is refused with a digest error.
    let other = TestImage::new(
        vec![
            common::LayerBuilder::new()
                .file("hello.txt", 0o644, b"hello")
                .gzip(),
        ],
        &["/hello"],
        &[],
    );
    let other_ref = format!("{}/test/other:1", reg.addr);
    other.push(&other_ref).await;
    let layer_digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&other.layers[0])
    );
    let blob = reg.blob_file(&layer_digest);
    let mut data = fs_err::read(&blob).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs_err::write(&blob, data).unwrap();
    let err = store
        .ensure(&other_ref, PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer_digest), "{err}");
    assert!(store.get(&other_ref).unwrap().is_none());

    // Unreachable registry: a closed loopback port.
    let port = common::free_port();
    let err = store
        .ensure(&format!("127.0.0.1:{port}/x/y:1"), PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Pull { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}/x/y:1")),
        "{err}"
    );

    // Missing image with Never.
    let err = store
        .ensure(&format!("{}/test/absent:1", reg.addr), PullPolicy::Never)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::ImageNotPresent { .. }), "{err}");
    // Missing in the registry.
    let err = store
        .ensure(
            &format!("{}/test/absent:1", reg.addr),
            PullPolicy::IfNotPresent,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Pull { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_import_verifies_digests_and_handles_whiteouts() {
    if skip_unless(is_root(), "needs root (whiteouts are character devices)") {
        return;
    }
    let env = Env::new(&[], None).await;
    let store = env.engine().images();
    let base = common::LayerBuilder::new()
        .dir("a", 0o755)
        .file("a/keep", 0o644, b"k")
        .file("a/gone", 0o644, b"g")
        .dir("opaque", 0o755)
        .file("opaque/old", 0o644, b"o")
        .gzip();
    let top = common::LayerBuilder::new()
        .dir("a", 0o755)
        .file("a/.wh.gone", 0o644, b"")
        .dir("opaque", 0o755)
        .file("opaque/.wh..wh..opq", 0o644, b"")
        .file("opaque/new", 0o644, b"n")
        .gzip();
    let img = TestImage::new(vec![base, top], &["/x"], &[]);
    let layout = env.dir.path().join("layout");
    img.write_layout(&layout, "v1");
    let r = store
        .import_oci_layout(&layout, Some("v1"), "localhost/layered:v1")
        .await
        .unwrap();
    let lowers = store.lower_dirs(&r.image);
    assert_eq!(lowers.len(), 2);
    use std::os::unix::fs::FileTypeExt;
    let wh = fs_err::symlink_metadata(lowers[0].join("a/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is a 0/0 char device"
    );
    assert!(lowers[0].join("opaque/new").is_file());

    // Missing tag.
    let err = store
        .import_oci_layout(&layout, Some("nope"), "localhost/layered:nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");

    // Tampered blob.
    let bad = env.dir.path().join("layout-bad");
    let img2 = TestImage::new(
        vec![
            common::LayerBuilder::new()
                .file("f", 0o644, b"original")
                .gzip(),
        ],
        &["/f"],
        &[],
    );
    img2.write_layout(&bad, "v1");
    let layer_digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&img2.layers[0])
    );
    let p = bad
        .join("blobs/sha256")
        .join(layer_digest.trim_start_matches("sha256:"));
    let mut d = fs_err::read(&p).unwrap();
    d[10] ^= 0x55;
    fs_err::write(&p, d).unwrap();
    let err = store
        .import_oci_layout(&bad, Some("v1"), "localhost/bad:v1")
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::DigestMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_many_sandboxes_stores_layers_once() {
    let Some(kind) = [HandlerKind::Crun, HandlerKind::Runc]
        .into_iter()
        .find(|k| agent_sandbox_node::runtime::find_binary(k.name()).is_some())
    else {
        common::skip_unless(false, "neither crun nor runc is installed");
        return;
    };
    if common::need(Some(kind)) {
        return;
    }
    let env = Env::new(&[kind], None).await;
    env.busybox("localhost/test/busybox:1").await;
    let e = env.engine();
    for i in 0..5 {
        let mut s = SandboxSpec::new(format!("many-{i}"), "localhost/test/busybox:1");
        s.main.pull_policy = PullPolicy::Never;
        s.main.command = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo $$ > /tmp/me; sleep 100".into(),
        ]);
        e.create(s).await.unwrap();
        e.start(&format!("many-{i}")).await.unwrap();
    }
    let layers = fs_err::read_dir(e.images().root().join("layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 1, "the layer is stored once");
    // Each sandbox writes to its own upper directory.
    for i in 0..5 {
        let id = format!("many-{i}");
        e.remove(&id).await.unwrap();
    }
    assert_no_leaks(&env);
}

/// A running pull reports its progress (blobs and bytes), and nothing once it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_progress_is_reported_while_pulling() {
    if skip_unless(
        Registry::binary().is_some(),
        "docker-registry is not installed",
    ) || skip_unless(is_root(), "needs root (whiteouts and layer ownership)")
        || skip_unless(common::have_busybox(), "busybox-static is not installed")
    {
        return;
    }
    let reg = Registry::start();
    // A 24 MB layer of incompressible bytes, so the pull takes a while.
    let mut data = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let big = common::LayerBuilder::new()
        .dir("data", 0o755)
        .file("data/blob", 0o644, &data)
        .gzip();
    let img = TestImage::new(vec![common::busybox_layer(), big], &["/bin/sh"], &[]);
    let reference = format!("{}/test/big:1", reg.addr);
    img.push(&reference).await;

    let env = Env::new(&[], None).await;
    let store = env.engine.clone().unwrap();
    let pull = {
        let (store, reference) = (store.clone(), reference.clone());
        tokio::spawn(async move {
            store
                .images()
                .ensure(&reference, PullPolicy::IfNotPresent)
                .await
        })
    };
    let mut seen = Vec::new();
    // Bounded: at most 60 s of 2 ms polls.
    for _ in 0..30_000 {
        if pull.is_finished() {
            break;
        }
        if let Some(p) = store.images().pull_progress(&reference) {
            seen.push(p);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    pull.await.unwrap().unwrap();
    assert!(store.images().pull_progress(&reference).is_none());
    let last = seen
        .last()
        .copied()
        .expect("no progress seen during the pull");
    println!("progress samples: {}, last: {last:?}", seen.len());
    assert_eq!(last.blobs_total, 3, "config and two layers");
    assert!(last.bytes_total > 24 << 20, "{last:?}");
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    assert!(seen.iter().any(|p| p.bytes_done > 0), "{seen:?}");
}
