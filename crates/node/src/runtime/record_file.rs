//! A sandbox's record on disk: two slot files written in place in turn, each with a generation
//! number, so a state change costs one `pwrite` instead of a new file renamed into place (on
//! ext4, allocating an inode per change was about 200 µs against 10 µs in place, measured on
//! this project's 2-core host), and a write cut short (a power loss) leaves the other slot with
//! the previous generation. Records of earlier versions (`record.json`) are read as generation 0.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

const SLOTS: [&str; 2] = ["record.0.json", "record.1.json"];
const LEGACY: &str = "record.json";
const MAGIC: &str = "agent-sandbox-record";

fn slot(dir: &Path, generation: u64) -> PathBuf {
    dir.join(SLOTS[(generation % 2) as usize])
}

/// Write `value` as generation `generation` (its slot is `generation % 2`).
pub(crate) fn write<T: Serialize>(dir: &Path, generation: u64, value: &T) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = format!("{MAGIC} {generation}\n").into_bytes();
    serde_json::to_writer(&mut buf, value).map_err(std::io::Error::other)?;
    let f = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(slot(dir, generation))?;
    f.file().write_all_at(&buf, 0)?;
    f.set_len(buf.len() as u64)
}

/// One slot: its generation and value, if it reads whole. Bytes after the value (from a
/// longer earlier content, if the write was not followed by its truncation) are ignored.
fn read_slot<T: DeserializeOwned>(path: &Path) -> Option<(u64, T)> {
    let data = fs_err::read(path).ok()?;
    let newline = data.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&data[..newline]).ok()?;
    let generation = header.strip_prefix(MAGIC)?.trim().parse().ok()?;
    let value = serde_json::Deserializer::from_slice(&data[newline + 1..])
        .into_iter::<T>()
        .next()?
        .ok()?;
    Some((generation, value))
}

/// The newest record in `dir` with its generation, or `None` when no slot (and no legacy
/// record) reads whole.
pub(crate) fn read<T: DeserializeOwned>(dir: &Path) -> Option<(u64, T)> {
    let newest = SLOTS
        .iter()
        .filter_map(|s| read_slot::<T>(&dir.join(s)))
        .max_by_key(|(g, _)| *g);
    newest.or_else(|| {
        let data = fs_err::read(dir.join(LEGACY)).ok()?;
        Some((0, serde_json::from_slice(&data).ok()?))
    })
}

/// Remove a record of an earlier version once the slots hold its successor.
pub(crate) fn remove_legacy(dir: &Path) {
    let _ = fs_err::remove_file(dir.join(LEGACY));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_slot_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(read::<Vec<u32>>(dir).is_none());
        // A record of an earlier version.
        fs_err::write(dir.join(LEGACY), b"[7]").unwrap();
        assert_eq!(read::<Vec<u32>>(dir), Some((0, vec![7])));
        write(dir, 1, &vec![1u32, 1, 1, 1]).unwrap();
        write(dir, 2, &vec![2u32]).unwrap();
        assert_eq!(read::<Vec<u32>>(dir), Some((2, vec![2])));
        // Generation 3 reuses slot 1 in place: a shorter value leaves no tail.
        write(dir, 3, &vec![3u32]).unwrap();
        assert_eq!(read::<Vec<u32>>(dir), Some((3, vec![3])));
        assert_eq!(
            fs_err::read_to_string(dir.join(SLOTS[1])).unwrap(),
            format!("{MAGIC} 3\n[3]")
        );
        // A write cut short: the slot no longer reads whole, the other one is used.
        fs_err::write(dir.join(SLOTS[1]), format!("{MAGIC} 5\n[5, 5")).unwrap();
        assert_eq!(read::<Vec<u32>>(dir), Some((2, vec![2])));
        // A tail left from a longer earlier content is ignored.
        fs_err::write(dir.join(SLOTS[1]), format!("{MAGIC} 7\n[7]1,1,1]")).unwrap();
        assert_eq!(read::<Vec<u32>>(dir), Some((7, vec![7])));
    }
}
