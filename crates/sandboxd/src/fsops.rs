//! File system operations on descriptors returned by [`crate::confine`]: directory listings,
//! atomic writes (temp file, fsync, rename), recursive removal and streamed reads. They are
//! blocking and run on tokio's blocking pool.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use tokio::sync::mpsc;

use crate::confine::{DirFd, Root, Walked};

/// Prefix of the temporary files of atomic writes (upstream's name).
pub const TMP_PREFIX: &str = ".sandboxd-tmp-";

/// Size of the chunks streamed from files.
pub const READ_CHUNK: usize = 256 * 1024;

/// One entry of a directory listing, symlinks resolved.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File name within its directory.
    pub name: OsString,
    /// Metadata (of the link target for symlinks).
    pub stat: Stat,
    /// Whether the entry itself is a symbolic link.
    pub is_link: bool,
}

impl Entry {
    /// `"directory"` or `"file"`, as upstream reports them.
    pub fn kind(&self) -> &'static str {
        if is_dir(&self.stat) {
            "directory"
        } else {
            "file"
        }
    }
}

/// True when the stat is a directory.
pub fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

/// Modification time as RFC 3339 UTC with seconds, like Go's `time.RFC3339`.
pub fn rfc3339(stat: &Stat) -> String {
    chrono::DateTime::from_timestamp(stat.st_mtime, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Modification time as float seconds since the epoch.
pub fn mtime_f64(stat: &Stat) -> f64 {
    stat.st_mtime as f64 + stat.st_mtime_nsec as f64 / 1e9
}

/// Permission bits as `%04o`.
pub fn mode_string(stat: &Stat) -> String {
    format!("{:04o}", stat.st_mode & 0o777)
}

/// Lists the directory `dir` (whose path relative to the root is `rel`), sorted by name.
/// Symbolic links are resolved beneath the root; links that escape it or dangle are omitted.
pub fn list_dir(root: &Root, dir: &OwnedFd, rel: &[OsString]) -> Result<Vec<Entry>, Errno> {
    let mut out = Vec::new();
    let reader = rustix::fs::Dir::read_from(dir)?;
    let mut names: Vec<OsString> = Vec::new();
    for entry in reader {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        names.push(name.to_os_string());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let Ok(stat) = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue; // vanished meanwhile
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            let mut comps = rel.to_vec();
            comps.push(name.clone());
            let user = crate::confine::display(&comps);
            match root.walk(&user, comps, true, false) {
                Ok(Walked::Entry {
                    stat: Some(target), ..
                }) => out.push(Entry {
                    name,
                    stat: target,
                    is_link: true,
                }),
                Ok(Walked::Root) => {
                    if let Ok(target) = rustix::fs::fstat(root.fd()) {
                        out.push(Entry {
                            name,
                            stat: target,
                            is_link: true,
                        })
                    }
                }
                _ => {}
            }
            continue;
        }
        out.push(Entry {
            name,
            stat,
            is_link: false,
        });
    }
    Ok(out)
}

/// Opens a resolved path as a directory for listing.
pub fn open_dir(walked: &Walked<'_>, root: &Root) -> Result<OwnedFd, Errno> {
    match walked {
        Walked::Root => rustix::fs::openat(
            root.fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ),
        Walked::Entry { parent, name, .. } => rustix::fs::openat(
            parent,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ),
    }
}

/// Turns a borrowed root descriptor into an owned one so it can move to another thread.
pub fn own(dir: DirFd<'_>) -> Result<OwnedFd, Errno> {
    match dir {
        DirFd::Owned(fd) => Ok(fd),
        DirFd::Root(fd) => rustix::io::fcntl_dupfd_cloexec(fd, 3),
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{TMP_PREFIX}{}-{n}-{nanos:09}", std::process::id())
}

/// A file being written atomically: data goes to a temp file in the target's directory, which
/// is fsynced and renamed over the target on [`AtomicWriter::commit`]. Dropped uncommitted, the
/// temp file is removed, so a failed or aborted upload leaves nothing behind.
#[derive(Debug)]
pub struct AtomicWriter {
    dir: OwnedFd,
    tmp: String,
    name: OsString,
    file: Option<File>,
    written: u64,
}

impl AtomicWriter {
    /// Creates the temp file with exactly `mode` (the umask does not apply).
    pub fn create(dir: OwnedFd, name: OsString, mode: u32) -> Result<AtomicWriter, Errno> {
        let tmp = tmp_name();
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut writer = AtomicWriter {
            dir,
            tmp,
            name,
            file: Some(File::from(fd)),
            written: 0,
        };
        if let Some(f) = &writer.file {
            rustix::fs::fchmod(f, Mode::from_raw_mode(mode & 0o7777)).inspect_err(|_| {
                writer.abort();
            })?;
        }
        Ok(writer)
    }

    /// Appends data.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Errno> {
        let Some(file) = self.file.as_mut() else {
            return Err(Errno::BADF);
        };
        file.write_all(data)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes the data to disk (fdatasync) and renames over the target.
    pub fn commit(mut self) -> Result<(), Errno> {
        let Some(file) = self.file.take() else {
            return Err(Errno::BADF);
        };
        let result = rustix::fs::fdatasync(&file).and_then(|()| {
            drop(file);
            rustix::fs::renameat(
                &self.dir,
                self.tmp.as_str(),
                &self.dir,
                self.name.as_os_str(),
            )
        });
        if result.is_err() {
            self.abort();
        } else {
            self.tmp.clear();
        }
        result
    }

    fn abort(&mut self) {
        self.file = None;
        if !self.tmp.is_empty() {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
            self.tmp.clear();
        }
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Removes `name` in `dir`: files and links are unlinked, directories removed with everything
/// inside. Links are never followed.
pub fn remove_all(dir: impl AsFd, name: &OsStr) -> Result<(), Errno> {
    let dir = dir.as_fd();
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    clear_dir(&sub)?;
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Removes everything inside the directory `dir`, keeping the directory.
pub fn clear_dir(dir: &OwnedFd) -> Result<(), Errno> {
    let mut names = Vec::new();
    let reader = rustix::fs::Dir::read_from(dir)?;
    for entry in reader {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    for name in names {
        match remove_all(dir, &name) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Streams `len` bytes of `file` from `offset` into a channel, from a blocking thread.
pub fn stream_file(
    mut file: File,
    offset: u64,
    len: u64,
) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        if offset > 0
            && let Err(e) = file.seek(SeekFrom::Start(offset))
        {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}
