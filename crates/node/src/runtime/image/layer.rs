//! Unpacking one layer tar (optionally gzip-compressed) into its directory, with whiteouts
//! converted to overlay ones.

use super::*;

/// Unpack one layer tar (optionally gzip-compressed) into `dst`, converting whiteouts.
pub(super) fn unpack_layer(image: &str, blob: &Path, media_type: &str, dst: &Path) -> Result<()> {
    fs_err::create_dir_all(dst)?;
    let bad = |reason: String| NodeError::BadImage {
        image: image.into(),
        reason,
    };
    if media_type.contains("zstd") {
        return Err(bad(format!(
            "layer media type {media_type} (zstd) is not supported; push gzip or uncompressed layers"
        )));
    }
    let mut f = fs_err::File::open(blob)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    drop(f);
    let file = fs_err::File::open(blob)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("reading layer {}: {e}", blob.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading layer {}: {e}", blob.display())))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad path in layer: {e}")))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad(format!(
                        "layer entry {} escapes the root",
                        path.display()
                    )));
                }
            }
        }
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = dst.join(rel.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            fs_err::create_dir_all(&parent)?;
            crate::sys::lsetxattr(&parent, "trusted.overlay.opaque", b"y")
                .map_err(|e| bad(format!("marking {} opaque: {e}", parent.display())))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            fs_err::create_dir_all(&parent)?;
            let target = parent.join(hidden);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| NodeError::sys("create whiteout", &target, e))?;
            continue;
        }
        let ok = entry.unpack_in(dst).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            bad(format!("unpacking {}: {msg}", path.display()))
        })?;
        if !ok {
            return Err(bad(format!(
                "layer entry {} escapes the root",
                path.display()
            )));
        }
    }
    Ok(())
}
