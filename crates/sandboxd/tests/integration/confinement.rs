//! Path confinement: `..`, absolute paths, symlinks out of the root and a symlink swapped in
//! during a write are refused (403) or stay inside the root; nothing outside is touched.

use crate::common;

use std::time::Duration;

use common::{Daemon, expect_error, http, quote};

fn setup(d: &Daemon) -> std::path::PathBuf {
    let outside = d.base.join("outside");
    fs_err::create_dir_all(&outside).unwrap();
    fs_err::write(outside.join("secret"), "top secret").unwrap();
    std::os::unix::fs::symlink(&outside, d.root.join("out-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), d.root.join("out-file")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", d.root.join("out-rel")).unwrap();
    outside
}

fn outside_untouched(outside: &std::path::Path) {
    let names: Vec<_> = fs_err::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "nothing was created outside the root");
    assert_eq!(
        fs_err::read_to_string(outside.join("secret")).unwrap(),
        "top secret"
    );
}

#[tokio::test]
async fn dotdot_and_symlinks_are_refused() {
    let d = Daemon::start(&[]);
    let outside = setup(&d);
    let c = http();
    let escapes = [
        quote("../outside/secret"),
        quote("a/../../outside/secret"),
        quote("../root-evil"),
        quote("out-dir/secret"),
        quote("out-dir/new-file"),
        quote("out-file"),
        quote("out-rel"),
        quote("out-dir"),
    ];
    for p in &escapes {
        let r = c
            .get(d.url(&format!("/v1/files/{p}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 403, "PERMISSION_DENIED").await;
        let r = c
            .head(d.url(&format!("/v1/files/{p}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "HEAD {p}");
        let r = c
            .put(d.url(&format!("/v1/files/{p}")))
            .body("pwned")
            .send()
            .await
            .unwrap();
        expect_error(r, 403, "PERMISSION_DENIED").await;
        let r = c
            .put(d.url(&format!("/v1/files/{p}/deeper")))
            .body("pwned")
            .send()
            .await
            .unwrap();
        expect_error(r, 403, "PERMISSION_DENIED").await;
    }
    for p in [
        quote("../outside/secret"),
        quote("out-dir/secret"),
        quote("out-dir/x?recursive=true"),
    ] {
        let r = c
            .delete(d.url(&format!("/v1/files/{p}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 403, "PERMISSION_DENIED").await;
    }
    outside_untouched(&outside);
    // The links themselves can still be deleted (a link is removed, not followed).
    let r = c.delete(d.url("/v1/files/out-file")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    outside_untouched(&outside);
}

#[tokio::test]
async fn absolute_paths_stay_inside_the_root() {
    let d = Daemon::start(&[]);
    let outside = setup(&d);
    let c = http();
    // Upstream joins an absolute path outside the root to the root (filepath.Join): it can
    // never name a file outside.
    let target = outside.join("abs.txt").display().to_string();
    let r = c
        .put(d.url(&format!("/v1/files/{}", quote(&target))))
        .body("inside")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!outside.join("abs.txt").exists());
    let inside = d.root.join(target.trim_start_matches('/'));
    assert_eq!(fs_err::read_to_string(inside).unwrap(), "inside");
    let r = c
        .get(d.url(&format!("/v1/files/{}", quote("/etc/passwd"))))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    let r = c
        .get(d.url(&format!("/v1/files/{}", quote("/../../etc/passwd"))))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NOT_FOUND").await;
    outside_untouched(&outside);
}

#[tokio::test]
async fn symlink_swapped_during_a_write_cannot_escape() {
    let d = Daemon::start(&[]);
    let outside = setup(&d);
    fs_err::create_dir_all(d.root.join("work")).unwrap();
    fs_err::write(d.root.join("work/victim"), "old").unwrap();

    // Upload slowly to work/victim; halfway, swap `work` for a link to the outside directory and
    // `work/victim`'s new location for a link to the secret.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let url = d.url("/v1/files/work/victim");
    let upload = tokio::spawn(async move {
        http()
            .put(url)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tx.send(Ok(b"first half ".to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fs_err::rename(d.root.join("work"), d.root.join("work.moved")).unwrap();
    std::os::unix::fs::symlink(&outside, d.root.join("work")).unwrap();
    fs_err::remove_file(d.root.join("work.moved/victim")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), d.root.join("work.moved/victim")).unwrap();
    tx.send(Ok(b"second half".to_vec())).await.unwrap();
    drop(tx);
    let status = upload.await.unwrap();
    assert_eq!(status, 204);
    outside_untouched(&outside);
    // The write landed in the directory that was resolved (now work.moved), replacing the link.
    let landed = d.root.join("work.moved/victim");
    assert!(
        !fs_err::symlink_metadata(&landed)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs_err::read_to_string(landed).unwrap(),
        "first half second half"
    );
}

#[tokio::test]
async fn symlinks_inside_the_root_work() {
    let d = Daemon::start(&[]);
    let c = http();
    fs_err::create_dir_all(d.root.join("real")).unwrap();
    std::os::unix::fs::symlink("real", d.root.join("alias")).unwrap();
    let abs_alias = d.root.join("abs-alias");
    std::os::unix::fs::symlink(
        fs_err::canonicalize(d.root.join("real")).unwrap(),
        &abs_alias,
    )
    .unwrap();
    let r = c
        .put(d.url("/v1/files/alias/f.txt"))
        .body("via link")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        fs_err::read_to_string(d.root.join("real/f.txt")).unwrap(),
        "via link"
    );
    let r = c
        .get(d.url("/v1/files/abs-alias/f.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "via link");
}
