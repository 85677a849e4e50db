//! `/v2` file extensions: stat, mkdir, move, tree, tar download and upload, and the watch stream.

use crate::common;

use common::{Daemon, expect_error, http};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn stat_mkdir_move_tree() {
    let d = Daemon::start(&[]);
    let c = http();
    let r = c
        .post(d.url("/v2/files/mkdir"))
        .json(&json!({"path": "a/b/c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(d.url("/v2/files/mkdir"))
        .json(&json!({"path": "a/b/c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "parents: an existing directory is fine");
    let r = c
        .post(d.url("/v2/files/mkdir"))
        .json(&json!({"path": "a/b/c", "parents": false}))
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = c
        .post(d.url("/v2/files/mkdir"))
        .json(&json!({"path": "x/y", "parents": false}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c
        .post(d.url("/v2/files/mkdir"))
        .json(&json!({"path": "../out"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    let r = c
        .post(d.url("/v2/files/mkdir"))
        .json(&json!({"path": "m", "mode": "777"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;

    fs_err::write(d.root.join("a/f.txt"), "12345").unwrap();
    std::os::unix::fs::symlink("f.txt", d.root.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.root.join("a/out-link")).unwrap();
    let v: Value = c
        .get(d.url("/v2/files/stat?path=a/f.txt"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["size"].as_i64(), v["path"].as_str()),
        (Some("file"), Some(5), Some("/a/f.txt"))
    );
    let v: Value = c
        .get(d.url("/v2/files/stat?path=a/link"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            v["type"].as_str(),
            v["link_target"].as_str(),
            v["target_type"].as_str()
        ),
        (Some("symlink"), Some("f.txt"), Some("file"))
    );
    let v: Value = c
        .get(d.url("/v2/files/stat?path=a/out-link"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["target_type"],
        Value::Null,
        "nothing is revealed about targets outside the root"
    );
    let r = c
        .get(d.url("/v2/files/stat?path=nope"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;

    let r = c
        .post(d.url("/v2/files/move"))
        .json(&json!({"from": "a/f.txt", "to": "moved/g.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        fs_err::read_to_string(d.root.join("moved/g.txt")).unwrap(),
        "12345"
    );
    fs_err::write(d.root.join("other.txt"), "o").unwrap();
    let r = c
        .post(d.url("/v2/files/move"))
        .json(&json!({"from": "other.txt", "to": "moved/g.txt"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = c
        .post(d.url("/v2/files/move"))
        .json(&json!({"from": "other.txt", "to": "moved/g.txt", "overwrite": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        fs_err::read_to_string(d.root.join("moved/g.txt")).unwrap(),
        "o"
    );
    let r = c
        .post(d.url("/v2/files/move"))
        .json(&json!({"from": "nope", "to": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c
        .post(d.url("/v2/files/move"))
        .json(&json!({"from": "moved", "to": "../escape"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;

    let v: Value = c
        .get(d.url("/v2/files/tree?path=a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["b", "b/c", "link", "out-link"]);
    let v: Value = c
        .get(d.url("/v2/files/tree?path=a&max_depth=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 3);
    let v: Value = c
        .get(d.url("/v2/files/tree?max_entries=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["truncated"], true);
}

#[tokio::test]
async fn tar_roundtrip() {
    let d = Daemon::start(&[]);
    let c = http();
    fs_err::create_dir_all(d.root.join("src/deep/er")).unwrap();
    fs_err::write(d.root.join("src/top.txt"), "top").unwrap();
    fs_err::write(d.root.join("src/deep/er/bottom.bin"), vec![9u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("top.txt", d.root.join("src/alias")).unwrap();
    let r = c.get(d.url("/v2/files/tar?path=src")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let tarball = r.bytes().await.unwrap();
    let mut names: Vec<String> = tar::Archive::new(&tarball[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["alias", "deep", "deep/er", "deep/er/bottom.bin", "top.txt"]
    );

    let r = c
        .put(d.url("/v2/files/tar?path=copy"))
        .body(tarball.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["files"].as_u64(),
            v["directories"].as_u64(),
            v["symlinks"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );
    assert_eq!(
        fs_err::read(d.root.join("copy/deep/er/bottom.bin"))
            .unwrap()
            .len(),
        300_000
    );
    assert_eq!(
        fs_err::read_link(d.root.join("copy/alias"))
            .unwrap()
            .to_str(),
        Some("top.txt")
    );

    // Hostile archive: absolute and `..` names are skipped; nothing lands outside.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("ok.txt", &b"fine"[..]),
        ("../../evil.txt", &b"x"[..]),
        ("/abs.txt", &b"x"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the raw name so the builder does not refuse it.
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let hostile = b.into_inner().unwrap();
    let r = c
        .put(d.url("/v2/files/tar?path=h"))
        .body(hostile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 2);
    assert!(!d.base.join("evil.txt").exists());
    assert!(!std::path::Path::new("/abs.txt").exists());

    // A link planted by one member cannot carry a later member outside.
    let outside = d.base.join("outside");
    fs_err::create_dir_all(&outside).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "door", &outside).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "door/pwned.txt", &b"x"[..]).unwrap();
    let r = c
        .put(d.url("/v2/files/tar?path=h2"))
        .body(b.into_inner().unwrap())
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "PERMISSION_DENIED").await;
    assert!(!outside.join("pwned.txt").exists());

    let r = c
        .put(d.url("/v2/files/tar?path=bad"))
        .body("not a tar archive at all, clearly, no".repeat(20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn watch_stream() {
    let d = Daemon::start(&[]);
    let c = http();
    fs_err::create_dir_all(d.root.join("w/sub")).unwrap();
    let r = c
        .get(d.url("/v2/files/watch?path=w&timeout=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut buf = String::new();
    while !buf.contains("\"ready\"") {
        buf.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    c.put(d.url("/v1/files/w/sub/new.txt"))
        .body("hello")
        .send()
        .await
        .unwrap();
    fs_err::create_dir_all(d.root.join("w/fresh")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    fs_err::write(d.root.join("w/fresh/inner.txt"), "x").unwrap();
    fs_err::remove_file(d.root.join("w/sub/new.txt")).unwrap();
    let mut events: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let want = |evs: &Vec<Value>| {
        evs.iter()
            .any(|e| e["type"] == "move_to" && e["path"] == "/w/sub/new.txt")
            && evs
                .iter()
                .any(|e| e["type"] == "create" && e["path"] == "/w/fresh")
            && evs.iter().any(|e| e["path"] == "/w/fresh/inner.txt")
            && evs
                .iter()
                .any(|e| e["type"] == "delete" && e["path"] == "/w/sub/new.txt")
    };
    while !want(&events) && tokio::time::Instant::now() < deadline {
        let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, body.next()).await else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        events = buf
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
    }
    assert!(want(&events), "{events:#?}");
    assert!(
        !events
            .iter()
            .any(|e| e["path"].as_str().unwrap_or("").contains(".sandboxd-tmp-")),
        "temp files are hidden"
    );
}
