//! Log segment files: naming, replay on start (with torn-tail truncation), creation, and the
//! small metadata file holding the node's UIDVALIDITY.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{self, FrameError, Record, FRAME_HEADER_BYTES};

/// The segment new records are appended to.
pub struct Head {
    pub id: u32,
    pub file: Arc<File>,
    pub len: u64,
}

pub struct Recovered {
    pub head: Head,
    pub readers: Vec<(u32, Arc<File>)>,
    /// Bytes cut off the tail of the last segment because they held a torn write.
    pub truncated_bytes: u64,
}

pub fn log_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

pub fn segment_path(dir: &Path, id: u32) -> PathBuf {
    log_dir(dir).join(format!("{id:08}.seg"))
}

/// fsyncs a directory so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes an exclusive, non-blocking flock on `dir/LOCK`, so two nodes never append to one log.
/// The kernel releases it when the process dies, even by `kill -9`.
pub fn lock_dir(dir: &Path) -> Result<File, super::StoreError> {
    use std::os::unix::io::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Err(super::StoreError::Locked(dir.display().to_string()));
        }
        return Err(err.into());
    }
    Ok(file)
}

/// Reads the node's UIDVALIDITY, creating it (durably) on first start. It only changes when the
/// data directory is wiped, which is exactly when UIDs start over.
pub fn load_or_create_uid_validity(dir: &Path) -> io::Result<u32> {
    let path = dir.join("uidvalidity");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} does not hold a number", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let value = (chrono::Utc::now().timestamp() as u32).max(1);
            let tmp = dir.join("uidvalidity.tmp");
            {
                let mut f = File::create(&tmp)?;
                io::Write::write_all(&mut f, format!("{value}\n").as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            sync_dir(dir)?;
            Ok(value)
        }
        Err(e) => Err(e),
    }
}

/// Replays every segment in order, calling `apply(segment, frame_offset, record)` for each good
/// record. A damaged record in the last segment is a torn write: the segment is truncated there.
/// A damaged record in an earlier segment (media corruption) ends replay of that segment, loudly.
pub fn recover(dir: &Path, mut apply: impl FnMut(u32, u64, &Record)) -> io::Result<Recovered> {
    let log = log_dir(dir);
    std::fs::create_dir_all(&log)?;
    let mut ids: Vec<u32> = std::fs::read_dir(&log)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse::<u32>().ok()
        })
        .collect();
    ids.sort_unstable();
    let mut readers = Vec::new();
    let mut truncated_bytes = 0;
    let mut head = None;
    for (i, &id) in ids.iter().enumerate() {
        let last = i + 1 == ids.len();
        let path = segment_path(dir, id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        let good_len = replay_segment(&file, file_len, id, &mut apply)?;
        if good_len < file_len {
            if last {
                file.set_len(good_len)?;
                file.sync_all()?;
                truncated_bytes = file_len - good_len;
            } else {
                tracing::error!(
                    segment = %path.display(),
                    offset = good_len,
                    "damaged record in a closed mail log segment; records after it are unreadable"
                );
            }
        }
        let file = Arc::new(file);
        readers.push((id, file.clone()));
        if last {
            head = Some(Head {
                id,
                file,
                len: good_len,
            });
        }
    }
    let head = match head {
        Some(h) => h,
        None => {
            let h = create_segment(dir, 1)?;
            readers.push((h.id, h.file.clone()));
            h
        }
    };
    Ok(Recovered {
        head,
        readers,
        truncated_bytes,
    })
}

/// Every good record of a closed segment, with its frame offset.
pub fn read_all(file: &File, id: u32) -> io::Result<Vec<(u64, Record)>> {
    let len = file.metadata()?.len();
    let mut records = Vec::new();
    replay_segment(file, len, id, &mut |_, offset, r: &Record| {
        records.push((offset, r.clone()))
    })?;
    Ok(records)
}

/// Free bytes an unprivileged writer may use on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Deletes a segment durably (the directory entry).
pub fn delete_segment(dir: &Path, id: u32) -> io::Result<()> {
    std::fs::remove_file(segment_path(dir, id))?;
    sync_dir(&log_dir(dir))
}

/// Returns the length of the segment's good prefix.
fn replay_segment(
    file: &File,
    file_len: u64,
    id: u32,
    apply: &mut impl FnMut(u32, u64, &Record),
) -> io::Result<u64> {
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut payload = Vec::new();
    loop {
        if offset == file_len {
            return Ok(offset);
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if file_len - offset < FRAME_HEADER_BYTES as u64 {
            return Ok(offset);
        }
        reader.read_exact(&mut header)?;
        let (len, crc) = match record::decode_header(&header) {
            Ok(v) => v,
            Err(_) => return Ok(offset),
        };
        if file_len - offset - (FRAME_HEADER_BYTES as u64) < len as u64 {
            return Ok(offset);
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            return Ok(offset);
        }
        match record::decode_payload(&payload) {
            Ok(r) => apply(id, offset, &r),
            Err(FrameError::Corrupt(why)) => {
                tracing::error!(
                    segment = id,
                    offset,
                    why,
                    "undecodable record with a good checksum"
                );
                return Ok(offset);
            }
            Err(FrameError::Incomplete) => return Ok(offset),
        }
        offset += (FRAME_HEADER_BYTES + len) as u64;
    }
}

/// Creates an empty segment durably (the file and its directory entry).
pub fn create_segment(dir: &Path, id: u32) -> io::Result<Head> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.sync_all()?;
    sync_dir(&log_dir(dir))?;
    Ok(Head {
        id,
        file: Arc::new(file),
        len: 0,
    })
}
