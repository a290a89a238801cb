//! Segment files on disk: their names, the recovery scan that checks every frame and cuts a
//! torn or corrupt tail, reading one frame for replay, and the directory lock.

use super::SpoolError;
use super::frame::{self, FrameHeader, HEADER_LEN};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The suffix of segment files; their stem is the zero-padded sequence number, so a directory
/// listing sorts oldest first.
const SEGMENT_SUFFIX: &str = ".seg";

/// The path of segment `seq`.
pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

/// The sequence numbers of the segments in `dir` that are at least `from`, oldest first.
pub(super) fn list_segments(dir: &Path, from: u64) -> Result<Vec<u64>, SpoolError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
    let mut seqs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io(dir, e))?;
        let name = entry.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(seq) = seq.filter(|s| *s >= from) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Makes the directory's entries (a created, renamed or deleted file) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Takes an exclusive lock on `dir` for this process (released when the file is closed, also
/// by a crash): two gateways appending to one spool would corrupt each other's segments.
pub(super) fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, e))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.kind() == ErrorKind::WouldBlock {
            SpoolError::Locked { path }
        } else {
            SpoolError::io(&path, err)
        });
    }
    Ok(file)
}

/// What the recovery scan found in one segment.
#[derive(Debug, Default)]
pub(super) struct ScannedSegment {
    /// Its length after any truncation.
    pub len: u64,
    /// Records in frames at or after the scan's `count_from` offset.
    pub records: u64,
    /// When the first frame at or after `count_from` was appended (Unix ms).
    pub first_appended_at_ms: Option<u64>,
    /// Bytes cut from a torn or corrupt tail (0: none).
    pub truncated_bytes: u64,
}

/// Checks every frame of segment `path` and truncates the file at the first frame that is
/// cut short or fails its CRC, keeping everything before it. Records are counted from
/// `count_from` (the replay checkpoint's offset in this segment) on.
pub(super) fn recover(path: &Path, count_from: u64) -> Result<ScannedSegment, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| SpoolError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| SpoolError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut scan = ScannedSegment::default();
    let mut offset = 0u64;
    let mut body = Vec::new();
    let good_end = loop {
        if offset == file_len {
            break offset;
        }
        let mut head = [0u8; HEADER_LEN];
        if file_len - offset < HEADER_LEN as u64 {
            break offset; // a torn header
        }
        reader
            .read_exact(&mut head)
            .map_err(|e| SpoolError::io(path, e))?;
        let header = FrameHeader::parse(&head);
        if header.frame_len() > file_len - offset {
            break offset; // a torn body, or a corrupt length
        }
        body.resize(header.body_len as usize, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| SpoolError::io(path, e))?;
        if !header.matches(&body) {
            break offset;
        }
        if header.version != frame::VERSION {
            // The CRC holds, so this is no corruption: a newer build wrote it. Cutting it would
            // lose acknowledged data, so refuse to start instead.
            return Err(SpoolError::UnknownVersion {
                path: path.to_path_buf(),
                offset,
                version: header.version,
            });
        }
        let Some((appended_at, records)) = frame::body_prefix(&body) else {
            break offset;
        };
        if offset >= count_from {
            scan.records += u64::from(records);
            scan.first_appended_at_ms.get_or_insert(appended_at);
        }
        offset += header.frame_len();
    };
    drop(reader);
    if good_end < file_len {
        file.set_len(good_end)
            .and_then(|()| file.sync_all())
            .map_err(|e| SpoolError::io(path, e))?;
        scan.truncated_bytes = file_len - good_end;
    }
    scan.len = good_end;
    Ok(scan)
}

/// One frame read back for replay.
pub(super) struct ReadFrame {
    /// The frame's length on disk.
    pub len: u64,
    /// Its body (after the CRC check).
    pub body: Vec<u8>,
}

/// Why a frame could not be read back for replay.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The read failed; it may work later.
    #[error("reading {path} at offset {offset}: {source}")]
    Io {
        /// The segment.
        path: PathBuf,
        /// The frame's offset.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes changed on disk after recovery checked them: the rest of the segment cannot
    /// be trusted.
    #[error("{path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// The frame's offset.
        offset: u64,
        /// What failed.
        reason: &'static str,
    },
}

/// Reads the frame at `offset` of `file` (segment `path`), which must end by `limit`.
pub(super) fn read_frame(
    file: &File,
    path: &Path,
    offset: u64,
    limit: u64,
) -> Result<ReadFrame, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        offset,
        source,
    };
    let corrupt = |reason| ReadError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut head = [0u8; HEADER_LEN];
    if limit.saturating_sub(offset) < HEADER_LEN as u64 {
        return Err(corrupt("a frame header is cut"));
    }
    file.read_exact_at(&mut head, offset).map_err(io)?;
    let header = FrameHeader::parse(&head);
    if header.frame_len() > limit - offset {
        return Err(corrupt("a frame ends past the end of the segment"));
    }
    let mut body = vec![0u8; header.body_len as usize];
    file.read_exact_at(&mut body, offset + HEADER_LEN as u64)
        .map_err(io)?;
    if !header.matches(&body) || header.version != frame::VERSION {
        return Err(corrupt("a frame fails its CRC"));
    }
    Ok(ReadFrame {
        len: header.frame_len(),
        body,
    })
}
