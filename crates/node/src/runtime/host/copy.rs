//! Copying a directory tree for a snapshot: an overlay upper layer or a volume's data, kept as
//! it is (modes, owners, times, symlinks, hard links, overlay whiteouts and the extended
//! attributes that mark opaque directories), bounded by a byte budget and cancellable between
//! files and chunks.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::NodeError;

/// The bytes a snapshot may still take, shared by every copy of one snapshot, and its cancel
/// flag.
#[derive(Debug)]
pub struct CopyBudget {
    limit: u64,
    used: AtomicU64,
    cancelled: AtomicBool,
}

/// Why a copy stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The budget's limit would be passed.
    TooLarge,
    /// The budget was cancelled.
    Cancelled,
}

impl CopyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        CopyBudget {
            limit,
            used: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes counted so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Ask every copy using this budget to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Count `n` more bytes; `Err` when cancelled or over the limit.
    pub fn take(&self, n: u64) -> std::result::Result<(), Stop> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(Stop::Cancelled);
        }
        let now = self.used.fetch_add(n, Ordering::SeqCst) + n;
        if now > self.limit {
            return Err(Stop::TooLarge);
        }
        Ok(())
    }
}

/// A copy that stopped: the budget's reason, or an I/O error.
#[derive(Debug)]
pub enum CopyError {
    /// The budget stopped it.
    Stopped(Stop),
    /// Reading or writing failed.
    Io(NodeError),
}

impl From<std::io::Error> for CopyError {
    fn from(e: std::io::Error) -> Self {
        CopyError::Io(NodeError::Io(e))
    }
}

impl From<Stop> for CopyError {
    fn from(s: Stop) -> Self {
        CopyError::Stopped(s)
    }
}

/// Bytes per step of a file copy: the budget and the cancel flag are checked between steps.
const CHUNK: usize = 16 << 20;

/// Copy the tree at `from` to `to` (which must not exist), counting file bytes against
/// `budget`. Returns the bytes copied. A missing `from` copies nothing.
pub(super) fn copy_tree(
    from: &Path,
    to: &Path,
    budget: &CopyBudget,
) -> std::result::Result<u64, CopyError> {
    if fs_err::symlink_metadata(from).is_err() {
        return Ok(0);
    }
    let mut links = HashMap::new();
    let before = budget.used();
    copy_entry(from, to, budget, &mut links)?;
    Ok(budget.used() - before)
}

fn copy_entry(
    from: &Path,
    to: &Path,
    budget: &CopyBudget,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> std::result::Result<(), CopyError> {
    let meta = fs_err::symlink_metadata(from)?;
    let ft = meta.file_type();
    budget.take(0)?;
    if ft.is_dir() {
        fs_err::create_dir(to)?;
        let mut names: Vec<_> = fs_err::read_dir(from)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            copy_entry(&from.join(&name), &to.join(&name), budget, links)?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs_err::read_link(from)?, to)?;
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key) {
                fs_err::hard_link(first, to)?;
                return Ok(());
            }
            links.insert(key, to.to_path_buf());
        }
        copy_file(from, to, budget)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        // Overlay whiteouts are 0:0 character devices.
        let kind = if ft.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else if ft.is_block_device() {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFIFO
        };
        let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
        nix::sys::stat::mknod(to, kind, mode, meta.rdev())
            .map_err(|e| CopyError::Io(NodeError::sys("mknod", to, e)))?;
    } else {
        // Sockets are not data; a restored process makes them again.
        return Ok(());
    }
    finish(from, to, &meta)
}

fn copy_file(from: &Path, to: &Path, budget: &CopyBudget) -> std::result::Result<(), CopyError> {
    let mut src = fs_err::File::open(from)?;
    let mut dst = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    // In the kernel, a chunk at a time (no copy through this process, and a reflink where the
    // file system has them); read and write where the kernel cannot.
    loop {
        let n = match nix::fcntl::copy_file_range(src.file(), None, dst.file(), None, CHUNK) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(
                nix::errno::Errno::EXDEV | nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL,
            )
            | Err(nix::errno::Errno::EOPNOTSUPP) => break,
            Err(e) => return Err(CopyError::Io(NodeError::sys("copy_file_range", to, e))),
        };
        budget.take(n as u64)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        budget.take(n as u64)?;
        dst.write_all(&buf[..n])?;
    }
    Ok(())
}

/// Owner, mode, extended attributes and modification time of `to` as `from`'s.
fn finish(from: &Path, to: &Path, meta: &std::fs::Metadata) -> std::result::Result<(), CopyError> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
        .or_else(ignore_unprivileged)?;
    if let Ok(names) = xattr::list(from) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(from, &name) {
                // trusted.* needs CAP_SYS_ADMIN; without it only user.* attributes copy.
                let _ = xattr::set(to, &name, &value);
            }
        }
    }
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    // Times before the mode: a read-only file can still be opened to set them.
    let times = std::fs::FileTimes::new().set_modified(meta.modified()?);
    if meta.is_dir() {
        std::fs::File::open(to)?.set_times(times)?;
    } else if meta.is_file() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(to)?
            .set_times(times)?;
    }
    fs_err::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(())
}

/// A copy by an unprivileged user keeps its own owner (tests run without root).
fn ignore_unprivileged(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(e)
}

/// Bytes the regular files under `dir` take (apparent sizes); 0 for a missing `dir`.
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(meta) = fs_err::symlink_metadata(dir) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    fs_err::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_copies_with_links_modes_and_times() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs_err::create_dir_all(src.join("a/b")).unwrap();
        fs_err::write(src.join("a/b/f"), vec![7u8; 3000]).unwrap();
        fs_err::set_permissions(src.join("a/b/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
        fs_err::hard_link(src.join("a/b/f"), src.join("a/h")).unwrap();
        std::os::unix::fs::symlink("b/f", src.join("a/l")).unwrap();
        let budget = CopyBudget::new(10_000);
        let n = copy_tree(&src, &d.path().join("dst"), &budget).unwrap();
        assert_eq!(n, 3000, "a hard link is copied once");
        let dst = d.path().join("dst");
        assert_eq!(fs_err::read(dst.join("a/b/f")).unwrap(), vec![7u8; 3000]);
        assert_eq!(
            fs_err::read_link(dst.join("a/l")).unwrap(),
            Path::new("b/f")
        );
        let (f, h) = (
            fs_err::metadata(dst.join("a/b/f")).unwrap(),
            fs_err::metadata(dst.join("a/h")).unwrap(),
        );
        assert_eq!(f.ino(), h.ino(), "hard links stay links");
        assert_eq!(f.mode() & 0o777, 0o640);
        assert_eq!(
            f.modified().unwrap(),
            fs_err::metadata(src.join("a/b/f"))
                .unwrap()
                .modified()
                .unwrap()
        );
        assert_eq!(tree_size(&dst), 6000, "tree_size counts apparent sizes");
    }

    #[test]
    fn the_budget_stops_a_copy_over_its_limit_or_cancelled() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs_err::create_dir_all(&src).unwrap();
        fs_err::write(src.join("big"), vec![0u8; 5000]).unwrap();
        let small = CopyBudget::new(4096);
        assert!(matches!(
            copy_tree(&src, &d.path().join("x"), &small),
            Err(CopyError::Stopped(Stop::TooLarge))
        ));
        let cancelled = CopyBudget::new(1 << 30);
        cancelled.cancel();
        assert!(matches!(
            copy_tree(&src, &d.path().join("y"), &cancelled),
            Err(CopyError::Stopped(Stop::Cancelled))
        ));
        assert_eq!(
            copy_tree(&d.path().join("missing"), &d.path().join("z"), &cancelled).unwrap(),
            0,
            "a missing source copies nothing"
        );
    }
}
