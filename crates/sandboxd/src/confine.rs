//! Path confinement: every request path is resolved beneath the sandbox root one component at a
//! time with `openat(O_NOFOLLOW)` on directory descriptors, and symbolic links are followed by
//! hand, so no path (or a link swapped in while we work) can lead outside the root.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Symbolic links followed in one resolution before giving up (the kernel's limit).
const MAX_LINK_HOPS: usize = 40;

/// Why a path could not be resolved beneath the root.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The path, or a symbolic link on it, leads outside the sandbox root.
    #[error("path {0:?} leads outside the sandbox root; use a path inside it")]
    Escape(String),
    /// A component in the middle of the path does not exist.
    #[error("path {0:?} does not exist within the sandbox")]
    Missing(String),
    /// A component in the middle of the path is not a directory.
    #[error("path {0:?}: a parent component is not a directory")]
    NotDir(String),
    /// Too many symbolic links.
    #[error("path {0:?}: too many levels of symbolic links")]
    Loop(String),
    /// A system call failed.
    #[error("path {path:?}: {errno}")]
    Io {
        /// The request path.
        path: String,
        /// The error of the failed call.
        errno: Errno,
    },
}

/// A directory descriptor: the root's own, or one opened during a walk.
#[derive(Debug)]
pub enum DirFd<'a> {
    /// The root directory.
    Root(BorrowedFd<'a>),
    /// A directory beneath the root.
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }
}

/// Outcome of a walk.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Walked<'a> {
    /// The path is the root itself.
    Root,
    /// The path names `name` inside the directory `parent`.
    Entry {
        /// The directory holding the final component.
        parent: DirFd<'a>,
        /// Components from the root to `parent`, symlinks resolved.
        parent_rel: Vec<OsString>,
        /// Final component.
        name: OsString,
        /// `lstat` of the final component (after following it when asked); `None` if absent.
        stat: Option<Stat>,
    },
}

impl Walked<'_> {
    /// Resolved path relative to the root, `""` for the root.
    pub fn rel_path(&self) -> PathBuf {
        match self {
            Walked::Root => PathBuf::new(),
            Walked::Entry {
                parent_rel, name, ..
            } => parent_rel.iter().chain(std::iter::once(name)).collect(),
        }
    }
}

/// The sandbox root, held open as a directory descriptor.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    real: PathBuf,
    configured: PathBuf,
    /// The working directory, as components beneath the root: relative paths start here.
    work: Vec<OsString>,
}

impl Root {
    /// Opens (creating it if missing) the root directory.
    pub fn open(dir: &Path) -> Result<Root, std::io::Error> {
        fs_err::create_dir_all(dir)?;
        let real = fs_err::canonicalize(dir)?;
        let fd = rustix::fs::open(
            &real,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            std::io::Error::other(format!("cannot open sandbox root {}: {e}", real.display()))
        })?;
        let configured = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(Root {
            fd,
            real,
            configured,
            work: Vec::new(),
        })
    }

    /// Opens the root with a working directory beneath it (created if missing): relative paths
    /// and default working directories start there, absolute paths at the root.
    pub fn open_with_work_dir(dir: &Path, work_dir: &Path) -> Result<Root, std::io::Error> {
        let mut root = Root::open(dir)?;
        let work = root.lex(&work_dir.to_string_lossy()).map_err(|e| {
            std::io::Error::other(format!(
                "working directory {}: {e}; it must lie beneath the root {}",
                work_dir.display(),
                dir.display()
            ))
        })?;
        fs_err::create_dir_all(root.real.join(work.iter().collect::<PathBuf>()))?;
        root.work = work;
        Ok(root)
    }

    /// Absolute path of the working directory (the root unless `--work-dir` says otherwise).
    pub fn work_path(&self) -> PathBuf {
        self.host_path(&self.work.iter().collect::<PathBuf>())
    }

    /// The root's real (symlink-free) absolute path.
    pub fn real_path(&self) -> &Path {
        &self.real
    }

    /// Descriptor of the root directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Absolute host path of a resolved relative path (for `chdir` and messages).
    pub fn host_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.real.clone()
        } else {
            self.real.join(rel)
        }
    }

    /// Lexical step of upstream's sanitisation: the path is cleaned and joined to the root, an
    /// absolute path under the root is accepted as such, any other absolute path is taken as
    /// relative to the root, and a relative path whose `..` climbs above the root is refused.
    pub fn lex(&self, user: &str) -> Result<Vec<OsString>, ConfineError> {
        let path = Path::new(user);
        let absolute = path.is_absolute();
        let mut comps: Vec<OsString> = if absolute {
            Vec::new()
        } else {
            self.work.clone()
        };
        for c in path.components() {
            match c {
                Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
                Component::ParentDir => {
                    if comps.pop().is_none() && !absolute {
                        return Err(ConfineError::Escape(user.to_string()));
                    }
                }
                Component::Normal(n) => comps.push(n.to_os_string()),
            }
        }
        if absolute {
            for base in [&self.real, &self.configured] {
                let base_comps: Vec<&OsStr> = base
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                if comps.len() >= base_comps.len()
                    && comps
                        .iter()
                        .zip(&base_comps)
                        .all(|(a, b)| a.as_os_str() == *b)
                {
                    return Ok(comps.split_off(base_comps.len()));
                }
            }
        }
        Ok(comps)
    }

    /// Like [`Root::lex`], but the legacy python-runtime way: leading slashes are stripped first,
    /// so every path is relative to the working directory.
    pub fn lex_relative(&self, user: &str) -> Result<Vec<OsString>, ConfineError> {
        self.lex_relative_inner(user.trim_start_matches('/'), user)
    }

    fn lex_relative_inner(&self, rel: &str, user: &str) -> Result<Vec<OsString>, ConfineError> {
        let mut comps: Vec<OsString> = self.work.clone();
        for c in Path::new(rel).components() {
            match c {
                Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
                Component::ParentDir => {
                    if comps.pop().is_none() {
                        return Err(ConfineError::Escape(user.to_string()));
                    }
                }
                Component::Normal(n) => comps.push(n.to_os_string()),
            }
        }
        Ok(comps)
    }

    /// Walks `comps` beneath the root. Symbolic links in the middle are always followed, the
    /// final one only with `follow_last`. With `create_dirs`, missing middle directories are
    /// created with mode 0755.
    pub fn walk(
        &self,
        user: &str,
        comps: Vec<OsString>,
        follow_last: bool,
        create_dirs: bool,
    ) -> Result<Walked<'_>, ConfineError> {
        let io = |errno: Errno| ConfineError::Io {
            path: user.to_string(),
            errno,
        };
        let mut queue: VecDeque<OsString> = comps.into();
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut names: Vec<OsString> = Vec::new();
        let mut hops = 0usize;
        loop {
            let Some(comp) = queue.pop_front() else {
                // The path ends on a directory reached through `..` or a link to a directory.
                let Some(name) = names.pop() else {
                    return Ok(Walked::Root);
                };
                stack.pop();
                let parent = match stack.pop() {
                    Some(fd) => DirFd::Owned(fd),
                    None => DirFd::Root(self.fd.as_fd()),
                };
                let stat = rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io)?;
                return Ok(Walked::Entry {
                    parent,
                    parent_rel: names,
                    name,
                    stat: Some(stat),
                });
            };
            if comp == ".." {
                if names.pop().is_none() {
                    return Err(ConfineError::Escape(user.to_string()));
                }
                stack.pop();
                continue;
            }
            if comp == "." || comp.is_empty() {
                continue;
            }
            let last = queue.iter().all(|c| c == "." || c.is_empty());
            let dir: BorrowedFd<'_> = stack.last().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let stat = match rustix::fs::statat(dir, comp.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => {
                    if last {
                        let parent = match stack.pop() {
                            Some(fd) => DirFd::Owned(fd),
                            None => DirFd::Root(self.fd.as_fd()),
                        };
                        return Ok(Walked::Entry {
                            parent,
                            parent_rel: names,
                            name: comp,
                            stat: None,
                        });
                    }
                    if create_dirs {
                        match rustix::fs::mkdirat(dir, comp.as_os_str(), Mode::from_raw_mode(0o755))
                        {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(io(e)),
                        }
                        hops += 1;
                        if hops > MAX_LINK_HOPS * 4 {
                            return Err(ConfineError::Loop(user.to_string()));
                        }
                        queue.push_front(comp);
                        continue;
                    }
                    return Err(ConfineError::Missing(user.to_string()));
                }
                Err(Errno::NOTDIR) => return Err(ConfineError::NotDir(user.to_string())),
                Err(e) => return Err(io(e)),
            };
            let kind = FileType::from_raw_mode(stat.st_mode);
            if kind == FileType::Symlink && (!last || follow_last) {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(ConfineError::Loop(user.to_string()));
                }
                let target = match rustix::fs::readlinkat(dir, comp.as_os_str(), Vec::new()) {
                    Ok(t) => OsString::from_vec(t.into_bytes()),
                    // Replaced by something else since the stat: look again.
                    Err(Errno::INVAL) => {
                        queue.push_front(comp);
                        continue;
                    }
                    Err(Errno::NOENT) => {
                        queue.push_front(comp);
                        continue;
                    }
                    Err(e) => return Err(io(e)),
                };
                let target = Path::new(&target);
                let mut expanded: Vec<OsString> = Vec::new();
                if target.is_absolute() {
                    let rel = target
                        .strip_prefix(&self.real)
                        .or_else(|_| target.strip_prefix(&self.configured))
                        .map_err(|_| ConfineError::Escape(user.to_string()))?;
                    stack.clear();
                    names.clear();
                    expanded.extend(rel.components().filter_map(component_name));
                } else {
                    expanded.extend(target.components().filter_map(component_name));
                }
                for c in expanded.into_iter().rev() {
                    queue.push_front(c);
                }
                continue;
            }
            if last {
                let parent = match stack.pop() {
                    Some(fd) => DirFd::Owned(fd),
                    None => DirFd::Root(self.fd.as_fd()),
                };
                return Ok(Walked::Entry {
                    parent,
                    parent_rel: names,
                    name: comp,
                    stat: Some(stat),
                });
            }
            if kind != FileType::Directory {
                return Err(ConfineError::NotDir(user.to_string()));
            }
            match rustix::fs::openat(
                dir,
                comp.as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    stack.push(fd);
                    names.push(comp);
                }
                // Swapped for a link or a file since the stat: look again.
                Err(Errno::NOTDIR | Errno::LOOP | Errno::NOENT) => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(ConfineError::Loop(user.to_string()));
                    }
                    queue.push_front(comp);
                }
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// Lexes and walks an upstream-style path (see [`Root::lex`]).
    pub fn resolve(
        &self,
        user: &str,
        follow_last: bool,
        create_dirs: bool,
    ) -> Result<Walked<'_>, ConfineError> {
        let comps = self.lex(user)?;
        self.walk(user, comps, follow_last, create_dirs)
    }
}

fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    }
}

/// Opens the final component of a walk for reading (directories too), refusing symlinks.
pub fn open_read(parent: &DirFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
}

/// Joins components for messages.
pub fn display(comps: &[OsString]) -> String {
    let joined: PathBuf = comps.iter().collect();
    String::from_utf8_lossy(joined.as_os_str().as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_the_work_dir() {
        let (dir, _) = tmp_root("work");
        let root = Root::open_with_work_dir(&dir.join("root"), Path::new("ws")).unwrap();
        assert!(dir.join("root/ws").is_dir(), "the work dir is created");
        assert_eq!(root.work_path(), root.real_path().join("ws"));
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(root.lex("a").unwrap(), os(&["ws", "a"]));
        assert_eq!(
            root.lex("/a").unwrap(),
            os(&["a"]),
            "absolute means absolute"
        );
        assert_eq!(root.lex("../a").unwrap(), os(&["a"]));
        assert!(matches!(root.lex("../../a"), Err(ConfineError::Escape(_))));
        assert_eq!(root.lex_relative("/a").unwrap(), os(&["ws", "a"]));
        assert!(Root::open_with_work_dir(&dir.join("root"), Path::new("../out")).is_err());
        fs_err::remove_dir_all(dir).unwrap();
    }

    fn tmp_root(tag: &str) -> (PathBuf, Root) {
        let dir =
            std::env::temp_dir().join(format!("sandboxd-confine-{tag}-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&dir);
        fs_err::create_dir_all(dir.join("root/sub")).unwrap();
        let root = Root::open(&dir.join("root")).unwrap();
        (dir, root)
    }

    #[test]
    fn lexing_follows_upstream() {
        let (dir, root) = tmp_root("lex");
        assert_eq!(
            root.lex("a/b/../c").unwrap(),
            vec![OsString::from("a"), OsString::from("c")]
        );
        assert!(matches!(root.lex("../x"), Err(ConfineError::Escape(_))));
        assert!(matches!(
            root.lex("a/../../x"),
            Err(ConfineError::Escape(_))
        ));
        // Absolute paths outside the root are joined to it; under the root they are stripped.
        assert_eq!(
            root.lex("/etc/passwd").unwrap(),
            vec![OsString::from("etc"), OsString::from("passwd")]
        );
        let inside = format!("{}/sub/f", root.real_path().display());
        assert_eq!(
            root.lex(&inside).unwrap(),
            vec![OsString::from("sub"), OsString::from("f")]
        );
        assert!(root.lex("/").unwrap().is_empty());
        fs_err::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_are_confined() {
        let (dir, root) = tmp_root("links");
        let r = dir.join("root");
        std::os::unix::fs::symlink("/etc", r.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", r.join("in")).unwrap();
        std::os::unix::fs::symlink(r.join("sub"), r.join("abs-in")).unwrap();
        std::os::unix::fs::symlink("../..", r.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(matches!(
            root.resolve("out/passwd", true, false),
            Err(ConfineError::Escape(_))
        ));
        assert!(matches!(
            root.resolve("out", true, false),
            Err(ConfineError::Escape(_))
        ));
        assert!(matches!(
            root.resolve("sub/up/x", true, false),
            Err(ConfineError::Escape(_))
        ));
        assert!(matches!(
            root.resolve("loop", true, false),
            Err(ConfineError::Loop(_))
        ));
        let w = root.resolve("in/new", true, false).unwrap();
        assert_eq!(w.rel_path(), PathBuf::from("sub/new"));
        let w = root.resolve("abs-in", true, false).unwrap();
        assert_eq!(w.rel_path(), PathBuf::from("sub"));
        // Not following the final link names the link itself.
        let w = root.resolve("out", false, false).unwrap();
        assert_eq!(w.rel_path(), PathBuf::from("out"));
        fs_err::remove_dir_all(dir).unwrap();
    }
}
