//! Conformance of the upstream REST API under `/v1`: every endpoint, status code and error body.

use crate::common;

use common::{Daemon, expect_error, http, quote};

#[tokio::test]
async fn health_and_metadata() {
    let d = Daemon::start(&[]);
    let c = http();
    let r = c.get(d.url("/v1/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert!(v["uptime_seconds"].is_u64());

    let v: serde_json::Value = c
        .get(d.url("/v1/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["env"]["SANDBOX_TEST_VISIBLE"], "yes");
    assert!(
        v["env"].get("SANDBOX_API_TOKEN").is_none(),
        "secret-looking names are filtered: {v}"
    );
    assert!(v["env"].get("PATH").is_none(), "only the prefix is exposed");

    let r = c.get(d.url("/v1/nope")).send().await.unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c.post(d.url("/v1/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn put_get_head_roundtrip() {
    let d = Daemon::start(&[]);
    let c = http();
    let r = c
        .put(d.url("/v1/files/dir/sub/hello.txt"))
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let meta = fs_err::metadata(d.root.join("dir/sub/hello.txt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o644, "default mode");
    assert_eq!(
        fs_err::metadata(d.root.join("dir/sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    let r = c
        .get(d.url("/v1/files/dir/sub/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["content-length"], "11");
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.text().await.unwrap(), "hello world");

    // The Python SDK quotes every '/' as %2F.
    let r = c
        .get(d.url(&format!("/v1/files/{}", quote("dir/sub/hello.txt"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
    // An absolute path under the root is accepted.
    let abs = format!(
        "{}/dir/sub/hello.txt",
        fs_err::canonicalize(&d.root).unwrap().display()
    );
    let r = c
        .get(d.url(&format!("/v1/files/{}", quote(&abs))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = c
        .head(d.url("/v1/files/dir/sub/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "11");
    let r = c.head(d.url("/v1/files/dir/missing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(d.url("/v1/files/dir/missing")).send().await.unwrap();
    let msg = expect_error(r, 404, "NOT_FOUND").await;
    assert!(msg.contains("dir/missing"), "{msg}");

    // Overwrite with a mode.
    let r = c
        .put(d.url("/v1/files/dir/sub/hello.txt?mode=0600"))
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        fs_err::read_to_string(d.root.join("dir/sub/hello.txt")).unwrap(),
        "v2"
    );
    let meta = fs_err::metadata(d.root.join("dir/sub/hello.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temp files are left behind.
    let names: Vec<_> = fs_err::read_dir(d.root.join("dir/sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn ranges_and_conditional_get() {
    let d = Daemon::start(&[]);
    let c = http();
    c.put(d.url("/v1/files/r.bin"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    let r = c
        .get(d.url("/v1/files/r.bin"))
        .header("range", "bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 2-4/10");
    assert_eq!(r.text().await.unwrap(), "234");
    let r = c
        .get(d.url("/v1/files/r.bin"))
        .header("range", "bytes=-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "789");
    let r = c
        .get(d.url("/v1/files/r.bin"))
        .header("range", "bytes=7-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "789");
    let r = c
        .get(d.url("/v1/files/r.bin"))
        .header("range", "bytes=20-30")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10");
    let lm = c
        .get(d.url("/v1/files/r.bin"))
        .send()
        .await
        .unwrap()
        .headers()["last-modified"]
        .clone();
    let r = c
        .get(d.url("/v1/files/r.bin"))
        .header("if-modified-since", lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test]
async fn put_validation_and_multipart() {
    let d = Daemon::start(&[]);
    let c = http();
    for bad in ["644", "0999", "abc", "00644", "0x1f"] {
        let r = c
            .put(d.url(&format!("/v1/files/m.txt?mode={bad}")))
            .body("x")
            .send()
            .await
            .unwrap();
        let msg = expect_error(r, 400, "INVALID_ARGUMENT").await;
        assert!(msg.contains("^0[0-7]{3}$"), "{msg}");
    }
    assert!(
        !d.root.join("m.txt").exists(),
        "a refused PUT writes nothing"
    );
    fs_err::create_dir_all(d.root.join("adir")).unwrap();
    let r = c
        .put(d.url("/v1/files/adir"))
        .body("x")
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 400, "INVALID_ARGUMENT").await;
    assert!(msg.contains("directory"), "{msg}");
    let r = c.put(d.url("/v1/files/")).body("x").send().await.unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;

    let form = reqwest::multipart::Form::new()
        .text("other", "ignored")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"from multipart".to_vec()).file_name("x"),
        );
    let r = c
        .put(d.url("/v1/files/up/m.txt?mode=0640"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        fs_err::read_to_string(d.root.join("up/m.txt")).unwrap(),
        "from multipart"
    );

    let form = reqwest::multipart::Form::new().text("notfile", "x");
    let r = c
        .put(d.url("/v1/files/up/none.txt"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 400, "INVALID_ARGUMENT").await;
    assert!(msg.contains("\"file\""), "{msg}");
    assert!(!d.root.join("up/none.txt").exists());

    let r = c
        .put(d.url("/v1/files/bad.txt"))
        .header("content-type", "multipart/form-data")
        .body("garbage")
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, 400, "INVALID_ARGUMENT").await;
    assert!(msg.contains("multipart"), "{msg}");
    // A file in the middle of the path.
    c.put(d.url("/v1/files/plain"))
        .body("x")
        .send()
        .await
        .unwrap();
    let r = c
        .put(d.url("/v1/files/plain/child"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
}

#[tokio::test]
async fn directory_listing() {
    let d = Daemon::start(&[]);
    let c = http();
    fs_err::create_dir_all(d.root.join("ls/zdir")).unwrap();
    fs_err::write(d.root.join("ls/b.txt"), "bb").unwrap();
    fs_err::write(d.root.join("ls/a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("a.txt", d.root.join("ls/link-in")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.root.join("ls/link-out")).unwrap();
    std::os::unix::fs::symlink("nothing-here", d.root.join("ls/link-broken")).unwrap();
    std::os::unix::fs::symlink("zdir", d.root.join("ls/link-dir")).unwrap();
    let r = c.get(d.url("/v1/files/ls")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/ls");
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a.txt", "b.txt", "link-dir", "link-in", "zdir"],
        "sorted; escaping and broken links omitted"
    );
    let e = &v["entries"][1];
    assert_eq!(e["size"], 2);
    assert_eq!(e["type"], "file");
    assert_eq!(e["mode"], "0644");
    assert!(e["modified_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["entries"][2]["type"], "directory");
    assert_eq!(v["entries"][3]["type"], "file");

    let v: serde_json::Value = c
        .get(d.url("/v1/files/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/");
    let v: serde_json::Value = c
        .get(d.url("/v1/files/%2Fls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/ls");
}

#[tokio::test]
async fn delete_semantics() {
    let d = Daemon::start(&[]);
    let c = http();
    fs_err::create_dir_all(d.root.join("full/inner")).unwrap();
    fs_err::write(d.root.join("full/inner/f"), "x").unwrap();
    fs_err::write(d.root.join("single"), "x").unwrap();
    fs_err::create_dir_all(d.root.join("empty")).unwrap();

    let r = c.delete(d.url("/v1/files/single")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(!d.root.join("single").exists());
    let r = c.delete(d.url("/v1/files/single")).send().await.unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c.delete(d.url("/v1/files/full")).send().await.unwrap();
    let msg = expect_error(r, 409, "CONFLICT").await;
    assert!(msg.contains("recursive=true"), "{msg}");
    let r = c
        .delete(d.url("/v1/files/full?recursive=maybe"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_ARGUMENT").await;
    let r = c.delete(d.url("/v1/files/empty")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .delete(d.url("/v1/files/full?recursive=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!d.root.join("full").exists());

    // The root: refused without recursive, cleared (and kept) with it.
    fs_err::write(d.root.join("keep-me-not"), "x").unwrap();
    fs_err::create_dir_all(d.root.join("d/e")).unwrap();
    let r = c.delete(d.url("/v1/files/")).send().await.unwrap();
    expect_error(r, 409, "CONFLICT").await;
    let r = c
        .delete(d.url("/v1/files/%2F?recursive=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(d.root.is_dir());
    assert_eq!(fs_err::read_dir(&d.root).unwrap().count(), 0);

    // A symlink is removed itself, never its target.
    fs_err::write(d.root.join("target"), "x").unwrap();
    std::os::unix::fs::symlink("target", d.root.join("alias")).unwrap();
    let r = c.delete(d.url("/v1/files/alias")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(d.root.join("target").exists());
}
