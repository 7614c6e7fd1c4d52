//! The durable spool of one upload sink: append-only segment files in `DATA_DIR/spool/SINK/`.
//!
//! # Record format
//!
//! ```text
//! offset  size  field
//!      0     4  magic      "VSR1"
//!      4     4  len        u32 LE, payload length
//!      8     8  seq        u64 LE, the batch's per-sink sequence number
//!     16     4  crc        CRC-32 of bytes 4..16 and the payload, u32 LE
//!     20   len  payload    the encoded batch
//! ```
//!
//! Segments are named `SEQ.seg` after the first seq they hold and roll at
//! [`SEGMENT_BYTES`]. The acknowledged position lives in `acked` (written to a temporary
//! file, synced, renamed).
//!
//! # Memory
//!
//! Only an index is kept in memory: for each unacknowledged record its seq, offset and
//! length (24 bytes). Payloads are read back from the segment files when they are sent
//! ([`Spool::read`]), so replaying a backlog of hundreds of MiB takes a few MiB of index, not
//! the backlog.
//!
//! # Commit point and fsync policy
//!
//! [`Spool::append`] writes the record and `fdatasync`s the segment before it returns: a batch
//! is on disk before it is sent, so a crash of either process (or of the machine) loses
//! nothing that was handed to the sink. Batches are written once per `flush_interval_secs`
//! (10 s by default), so the cost is one sync of a few KiB every ten seconds per sink,
//! about 1-5 ms on SSDs and more on spinning disks, off the collection path.
//!
//! # Write failures (a full disk, EIO)
//!
//! An append that fails leaves the spool as it was: the partial record is cut off again
//! (`set_len`), the seq is not used, and the caller keeps the batch's samples to try again.
//! A new segment is only recorded once its file is open, so a failed open never gets an older,
//! still unacknowledged segment deleted. When the write completed but the `fdatasync` failed,
//! the record is cut off too; if even that fails, its seq is never used again (the record may
//! still be in the file), so no seq ever names two different batches. After any failure the
//! next append starts a new segment.
//!
//! # Damage
//!
//! On open every segment is scanned. A record whose magic, length or CRC is wrong is skipped
//! by scanning forward for the next valid record (so a flipped bit costs one record, not the
//! rest of the segment); a torn tail (a write cut short) is truncated away. A file named like a
//! segment that is not a readable regular file holding records (a directory, a file it cannot
//! read, garbage), and an unreadable or garbage `acked`, is set aside as `NAME.bad` and
//! counted (`bad_files`). All are counted in [`SpoolStats`], never fatal: only a spool
//! directory that cannot be created or listed is an error, and then [`Spool::open_or_retry`]
//! gives a spool that tries again at every append.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// First bytes of every record.
pub const MAGIC: [u8; 4] = *b"VSR1";
const HEADER: usize = 20;
/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Largest payload accepted (a bigger length in a record header means corruption).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("batch of {0} bytes is larger than the spool record limit")]
    TooLarge(usize),
    #[error("spool record {seq} in {path} is damaged")]
    Damaged { path: PathBuf, seq: u64 },
    #[error("no spool record {0}")]
    Missing(u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// What the spool found and did, for `/status` and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records skipped because they were damaged (bad magic, length or checksum), when the
    /// spool was opened or when a record was read back to be sent.
    pub corrupt_records: u64,
    /// Bytes cut from torn segment tails.
    pub torn_bytes: u64,
    /// Records dropped (unsent) to stay under the size limit.
    pub dropped_records: u64,
    /// Samples in those records (as the spool's sample counter reads them).
    pub dropped_samples: u64,
    /// Files named like spool files that were set aside as `*.bad`.
    pub bad_files: u64,
}

/// One unacknowledged batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Where an unacknowledged record is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
    /// Its unacknowledged records, in seq order.
    entries: VecDeque<Entry>,
}

/// Counts the samples of a payload (for what the size limit drops).
pub type SampleCounter = fn(&[u8]) -> u64;

/// The spool of one sink.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: VecDeque<Segment>,
    /// Unacknowledged records, in all segments.
    pending: usize,
    acked: u64,
    next_seq: u64,
    stats: SpoolStats,
    writer: Option<File>,
    /// The last write failed: the next append starts a new segment.
    roll_next: bool,
    /// The segment file last read from, kept open for the next read.
    reader: Option<(PathBuf, File)>,
    samples_of: SampleCounter,
    /// Why the directory could not be opened, while it cannot ([`Spool::open_or_retry`]).
    unavailable: Option<String>,
    /// The spool was started from nothing (no `acked`, no segment) and no receiver has told it
    /// its high-water mark yet: the `new` marker file ([`Spool::is_new`]).
    new: bool,
}

impl Spool {
    /// Opens (or creates, mode 0700) the spool in `dir`, scanning and repairing what is there.
    /// Fails only when the directory cannot be created or listed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let mut spool = Spool::empty(dir, max_bytes);
        spool.load()?;
        Ok(spool)
    }

    /// A new size limit (a reload): applied at the next append.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes.max(1);
    }

    /// Like [`Spool::open`], but a directory that cannot be opened gives a spool that holds
    /// nothing and tries again at each [`Spool::retry_open`]; the error is returned beside it.
    pub fn open_or_retry(dir: &Path, max_bytes: u64) -> (Spool, Option<SpoolError>) {
        let mut spool = Spool::empty(dir, max_bytes);
        match spool.load() {
            Ok(()) => (spool, None),
            Err(e) => {
                spool.unavailable = Some(e.to_string());
                (spool, Some(e))
            }
        }
    }

    /// How the spool counts the samples of the records its size limit drops (default: 0).
    pub fn with_sample_counter(mut self, f: SampleCounter) -> Self {
        self.samples_of = f;
        self
    }

    fn empty(dir: &Path, max_bytes: u64) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            segments: VecDeque::new(),
            pending: 0,
            acked: 0,
            next_seq: 1,
            stats: SpoolStats::default(),
            writer: None,
            roll_next: false,
            reader: None,
            samples_of: |_| 0,
            unavailable: None,
            new: false,
        }
    }

    /// True while this spool was started from nothing (a first start, or its directory was
    /// lost or replaced) and no receiver has said which seqs it already holds: its batches may
    /// carry seqs a receiver stored before, from the lost spool. Kept across restarts (the
    /// `new` file) until [`Spool::mark_known`].
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// A receiver told the sink its high-water mark: the spool is no longer new.
    pub fn mark_known(&mut self) {
        if self.new {
            self.new = false;
            let _ = fs::remove_file(self.dir.join("new"));
        }
    }

    /// Why the spool directory cannot be used, while it cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// For a spool whose directory could not be opened: tries again. `Ok` once it is open.
    pub fn retry_open(&mut self) -> Result<(), SpoolError> {
        if self.unavailable.is_none() {
            return Ok(());
        }
        self.load()?;
        self.unavailable = None;
        Ok(())
    }

    fn load(&mut self) -> Result<(), SpoolError> {
        let dir = self.dir.clone();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io(&dir))?;
        let had_acked = dir.join("acked").symlink_metadata().is_ok();
        let acked = self.read_acked();
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let seq = name.strip_suffix(".seg")?.parse::<u64>().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        names.sort();
        self.segments.clear();
        self.pending = 0;
        self.acked = acked;
        self.next_seq = acked + 1;
        for (first, path) in names {
            let (records, valid_len, corrupt, file_len) = match scan(&path) {
                Ok(r) => r,
                Err(why) => {
                    self.set_aside(&path, &why);
                    continue;
                }
            };
            if records.is_empty() && file_len > 0 {
                self.set_aside(&path, "it holds no valid record");
                continue;
            }
            self.stats.corrupt_records += corrupt;
            if valid_len < file_len {
                self.stats.torn_bytes += file_len - valid_len;
                let cut = OpenOptions::new().write(true).open(&path).and_then(|f| {
                    f.set_len(valid_len)?;
                    f.sync_all()
                });
                if let Err(e) = cut {
                    // Still readable up to valid_len; appends go to a new segment.
                    tracing::warn!(path = %path.display(), error = %e, "Cannot cut a torn spool tail.");
                    self.roll_next = true;
                }
            }
            let last = records.iter().map(|r| r.0).max().unwrap_or(first.saturating_sub(1));
            self.next_seq = self.next_seq.max(last + 1);
            if records.iter().all(|r| r.0 <= acked) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let entries: VecDeque<Entry> = records
                .into_iter()
                .filter(|r| r.0 > acked)
                .map(|(seq, offset, len)| Entry { seq, offset, len })
                .collect();
            self.pending += entries.len();
            self.segments.push_back(Segment {
                path,
                first_seq: first,
                last_seq: last,
                bytes: valid_len,
                entries,
            });
        }
        let marker = dir.join("new");
        self.new = marker.exists();
        if !had_acked && !self.new && self.segments.is_empty() && self.next_seq == 1 {
            // Nothing here: a first start, or the spool was lost.
            self.new =
                OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&marker).is_ok();
            sync_dir(&dir);
        }
        Ok(())
    }

    /// Renames a damaged spool file to `NAME.bad` (or `NAME.N.bad`), counts and logs it.
    fn set_aside(&mut self, path: &Path, why: &str) {
        self.stats.bad_files += 1;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut to = path.with_file_name(format!("{name}.bad"));
        let mut n = 1;
        while to.symlink_metadata().is_ok() && n < 1000 {
            to = path.with_file_name(format!("{name}.{n}.bad"));
            n += 1;
        }
        match fs::rename(path, &to) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), set_aside_as = %to.display(), reason = %why, "Damaged spool file set aside.")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), reason = %why, error = %e, "Damaged spool file skipped (it cannot be renamed).")
            }
        }
    }

    /// The seq the next appended batch gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next batch is numbered at least `seq` (a receiver already holds everything below
    /// it: [`crate::upload::protocol::ServerMsg::Hello`]).
    pub fn advance_next_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Durably appends a batch under the next seq; returns that seq. On an error nothing was
    /// added and the caller keeps the batch (see the module docs).
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        if let Some(why) = &self.unavailable {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!("the spool directory cannot be opened: {why}")),
            });
        }
        if payload.len() > MAX_RECORD {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        let seq = self.next_seq;
        let rec = encode_record(seq, payload);
        let roll = self.roll_next
            || self.writer.is_none()
            || self.segments.back().is_none_or(|s| s.bytes + rec.len() as u64 > SEGMENT_BYTES);
        if roll {
            // The new segment counts only once its file is open.
            let path = self.dir.join(format!("{seq:020}.seg"));
            if path.symlink_metadata().is_ok_and(|m| m.len() > 0 || !m.is_file()) {
                // Left by an earlier failed append at this seq: never mix it with this one.
                self.set_aside(&path, "a failed write left it");
            }
            let f =
                OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))?;
            self.writer = Some(f);
            self.roll_next = false;
            self.segments.push_back(Segment {
                path,
                first_seq: seq,
                last_seq: seq.saturating_sub(1),
                bytes: 0,
                entries: VecDeque::new(),
            });
            sync_dir(&self.dir);
        }
        let seg = self.segments.back_mut().expect("a segment exists");
        let w = self.writer.as_mut().expect("writer open");
        let offset = seg.bytes;
        if let Err(e) = w.write_all(&rec) {
            if w.set_len(offset).is_err() {
                self.writer = None;
            }
            self.roll_next = true;
            return Err(SpoolError::Io { path: seg.path.clone(), source: e });
        }
        if let Err(e) = w.sync_data() {
            // The bytes may or may not be on disk: cut them off, or else never use the seq
            // again.
            if w.set_len(offset).is_err() {
                self.next_seq += 1;
            }
            self.writer = None;
            self.roll_next = true;
            return Err(SpoolError::Io { path: seg.path.clone(), source: e });
        }
        seg.bytes += rec.len() as u64;
        seg.last_seq = seq;
        seg.entries.push_back(Entry { seq, offset, len: payload.len() as u32 });
        self.pending += 1;
        self.next_seq += 1;
        self.enforce_limit();
        Ok(seq)
    }

    /// The seqs of the unacknowledged records, oldest first.
    pub fn pending_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments.iter().flat_map(|s| s.entries.iter().map(|e| e.seq))
    }

    /// The oldest unacknowledged seq.
    pub fn first_pending(&self) -> Option<u64> {
        self.pending_seqs().next()
    }

    /// Reads an unacknowledged record back from its segment, checking its checksum.
    pub fn read(&mut self, seq: u64) -> Result<Record, SpoolError> {
        let (path, e) = self
            .segments
            .iter()
            .find_map(|s| {
                let i = s.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
                Some((s.path.clone(), s.entries[i]))
            })
            .ok_or(SpoolError::Missing(seq))?;
        if self.reader.as_ref().is_none_or(|(p, _)| *p != path) {
            let f = File::open(&path).map_err(io(&path))?;
            self.reader = Some((path.clone(), f));
        }
        let (_, f) = self.reader.as_ref().expect("opened");
        let mut buf = vec![0u8; HEADER + e.len as usize];
        f.read_exact_at(&mut buf, e.offset).map_err(io(&path))?;
        match record_at(&buf, 0) {
            Some((rec, _)) if rec.seq == seq => Ok(rec),
            _ => Err(SpoolError::Damaged { path, seq }),
        }
    }

    /// Forgets a record that cannot be read back ([`SpoolError::Damaged`]), counting it as
    /// corrupt; it will never be sent.
    pub fn skip_damaged(&mut self, seq: u64) {
        if self.forget(seq) {
            self.stats.corrupt_records += 1;
        }
    }

    /// Batch `seq` is no longer pending (it cannot be sent: the caller counts why); true when
    /// it was.
    pub fn forget(&mut self, seq: u64) -> bool {
        for s in &mut self.segments {
            if let Ok(i) = s.entries.binary_search_by_key(&seq, |e| e.seq) {
                s.entries.remove(i);
                self.pending -= 1;
                return true;
            }
        }
        false
    }

    /// Every unacknowledged record, read back (for tests and tools: it loads them all).
    pub fn read_all(&mut self) -> Vec<Record> {
        let seqs: Vec<u64> = self.pending_seqs().collect();
        seqs.into_iter().filter_map(|s| self.read(s).ok()).collect()
    }

    pub fn pending_len(&self) -> usize {
        self.pending
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Everything up to and including `seq` was acknowledged: forget those records, persist
    /// the position, and delete segments that hold nothing else. The position in memory moves
    /// even when it cannot be written (the receiver has the batches; after a restart they are
    /// sent again and de-duplicated).
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq.min(self.next_seq.saturating_sub(1));
        for s in &mut self.segments {
            while s.entries.front().is_some_and(|e| e.seq <= self.acked) {
                s.entries.pop_front();
                self.pending -= 1;
            }
        }
        let mut result = write_acked(&self.dir, self.acked);
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.entries.is_empty()) {
            let s = self.segments.pop_front().expect("checked");
            if let Err(e) = fs::remove_file(&s.path) {
                result = result.and(Err(SpoolError::Io { path: s.path, source: e }));
            }
        }
        result
    }

    /// Drops the oldest segments (counting their unsent records and samples) while over the
    /// limit.
    fn enforce_limit(&mut self) {
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            let s = self.segments.pop_front().expect("checked");
            self.pending -= s.entries.len();
            self.stats.dropped_records += s.entries.len() as u64;
            if !s.entries.is_empty() {
                let mut data = Vec::new();
                if File::open(&s.path).and_then(|mut f| f.read_to_end(&mut data)).is_ok() {
                    let (records, _, _) = parse(&data);
                    let first = s.entries.front().map_or(0, |e| e.seq);
                    self.stats.dropped_samples += records
                        .iter()
                        .filter(|r| r.seq >= first)
                        .map(|r| (self.samples_of)(&r.payload))
                        .sum::<u64>();
                }
            }
            if self.reader.as_ref().is_some_and(|(p, _)| *p == s.path) {
                self.reader = None;
            }
            if let Err(e) = fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), error = %e, "Cannot delete a dropped spool segment.");
            }
            if s.last_seq > self.acked {
                self.acked = s.last_seq;
                if let Err(e) = write_acked(&self.dir, self.acked) {
                    tracing::warn!(error = %e, "Cannot record the spool position.");
                }
            }
        }
    }

    /// Segment files, for tests and diagnostics.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// The first seq of each segment (same order as `segment_paths`).
    pub fn segment_first_seqs(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.first_seq).collect()
    }

    /// The acknowledged position, from `acked`; one that cannot be read or holds garbage is set
    /// aside (everything is then sent again: receivers de-duplicate).
    fn read_acked(&mut self) -> u64 {
        let p = self.dir.join("acked");
        match fs::read_to_string(&p) {
            Ok(s) => match s.trim().parse() {
                Ok(n) => n,
                Err(_) => {
                    self.set_aside(&p, "it does not hold a number");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                self.set_aside(&p, &e.to_string());
                0
            }
        }
    }
}

fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&MAGIC);
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[4..16]);
    h.update(payload);
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.extend_from_slice(payload);
    rec
}

/// Like [`parse`], giving each record's (seq, offset, payload length) instead of its payload.
fn parse_index(data: &[u8]) -> (Vec<(u64, u64, u32)>, usize, u64) {
    let mut out = Vec::new();
    let (_, valid, corrupt) =
        parse_with(data, |rec, pos| out.push((rec.seq, pos as u64, rec.payload.len() as u32)));
    (out, valid, corrupt)
}

/// Parses the records in `data`. Returns the records, the length of the valid prefix
/// that ends with the last good record (what follows is a torn tail unless a later record
/// was found), and how many damaged records were skipped.
pub fn parse(data: &[u8]) -> (Vec<Record>, usize, u64) {
    let mut out = Vec::new();
    let (_, valid, corrupt) = parse_with(data, |rec, _| out.push(rec));
    (out, valid, corrupt)
}

fn parse_with(data: &[u8], mut each: impl FnMut(Record, usize)) -> ((), usize, u64) {
    let mut pos = 0usize;
    let mut end_of_valid = 0usize;
    let mut corrupt = 0u64;
    let mut in_damage = false;
    while pos < data.len() {
        match record_at(data, pos) {
            Some((rec, len)) => {
                if in_damage {
                    corrupt += 1;
                    in_damage = false;
                }
                each(rec, pos);
                pos += len;
                end_of_valid = pos;
            }
            None => {
                // Damage: look for the next record that checks out.
                in_damage = true;
                pos += 1;
                match find_magic(&data[pos..]) {
                    Some(off) => pos += off,
                    None => break,
                }
            }
        }
    }
    ((), end_of_valid, corrupt)
}

fn find_magic(data: &[u8]) -> Option<usize> {
    data.windows(4).position(|w| w == MAGIC)
}

fn record_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let h = data.get(pos..pos + HEADER)?;
    if h[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let seq = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
    let payload = data.get(pos + HEADER..pos + HEADER + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[4..16]);
    hasher.update(payload);
    (hasher.finalize() == crc).then(|| (Record { seq, payload: payload.to_vec() }, HEADER + len))
}

/// What opening the spool in `dir` would find damaged, and what earlier opens set aside,
/// one line each, without changing anything (`vigil check-config`). A directory that does
/// not exist yet has nothing to report; one that cannot be listed is the only `Err`.
pub fn inspect(dir: &Path) -> Result<Vec<String>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut out = Vec::new();
    match fs::read_to_string(dir.join("acked")) {
        Ok(s) if s.trim().parse::<u64>().is_err() => out.push(format!(
            "acked does not hold a number ({:?}); it will be set aside as acked.bad and every batch resent",
            s.trim()
        )),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            out.push(format!("acked cannot be read ({e}); it will be set aside and every batch resent"))
        }
        _ => {}
    }
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".bad") {
            out.push(format!(
                "{name}: set aside as damaged by an earlier start (kept for inspection, never sent)"
            ));
            continue;
        }
        if name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()).is_none() {
            continue;
        }
        match scan(&path) {
            Err(why) => out.push(format!("{name}: {why}; it will be set aside as {name}.bad")),
            Ok((records, _, _, len)) if records.is_empty() && len > 0 => out.push(format!(
                "{name}: holds no valid record ({len} bytes); it will be set aside as {name}.bad"
            )),
            Ok((_, valid, corrupt, len)) => {
                if corrupt > 0 {
                    out.push(format!(
                        "{name}: {corrupt} damaged record(s), to be skipped and counted as corrupt_records"
                    ));
                }
                if valid < len {
                    out.push(format!(
                        "{name}: torn tail of {} bytes, to be cut and counted as torn_bytes",
                        len - valid
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// (seq, offset, payload length) of each valid record, the valid length, the damaged records
/// skipped and the file's length; `Err` with the reason when it is not a readable regular file.
type Scanned = (Vec<(u64, u64, u32)>, u64, u64, u64);

fn scan(path: &Path) -> Result<Scanned, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    let mut data = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| e.to_string())?;
    let (records, valid, corrupt) = parse_index(&data);
    Ok((records, valid as u64, corrupt, data.len() as u64))
}

fn write_acked(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(".acked.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(seq.to_string().as_bytes()).and_then(|_| f.sync_data()).map_err(io(&tmp))?;
    let p = dir.join("acked");
    fs::rename(&tmp, &p).map_err(io(&p))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn append_reopen_ack_and_seq_continues() {
        let d = dir("basic");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        for i in 0..5u8 {
            assert_eq!(s.append(&[i; 10]).unwrap(), i as u64 + 1);
        }
        s.ack(2).unwrap();
        drop(s);
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        let seqs: Vec<u64> = s.pending_seqs().collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(s.read(3).unwrap().payload, vec![2u8; 10]);
        assert_eq!(s.append(b"x").unwrap(), 6, "seq continues after a restart");
        s.ack(6).unwrap();
        drop(s);
        let s = Spool::open(&d, 1 << 30).unwrap();
        assert_eq!(s.pending_len(), 0);
        assert_eq!(s.next_seq(), 7, "seq continues even when everything was acknowledged");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_and_counted() {
        let d = dir("torn");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        for _ in 0..3 {
            s.append(&[7u8; 100]).unwrap();
        }
        let seg = s.segment_paths()[0].clone();
        drop(s);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 30).unwrap();
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert_eq!(s.pending_seqs().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.stats().torn_bytes, 90);
        assert_eq!(s.append(b"after").unwrap(), 3, "the torn record's seq is reused: it was never durable");
        drop(s);
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert_eq!(s.read_all().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn flipped_bit_costs_one_record() {
        let d = dir("flip");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        for i in 0..5u8 {
            s.append(&[i; 50]).unwrap();
        }
        let seg = s.segment_paths()[0].clone();
        drop(s);
        let mut data = fs::read(&seg).unwrap();
        data[(HEADER + 50) * 2 + HEADER + 10] ^= 0x08; // payload of record 3
        fs::write(&seg, &data).unwrap();
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert_eq!(s.read_all().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        assert_eq!(s.stats().corrupt_records, 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn size_limit_drops_oldest_segments_and_counts() {
        let d = dir("limit");
        let mut s =
            Spool::open(&d, 3 * SEGMENT_BYTES).unwrap().with_sample_counter(|p| p.len() as u64 / 1024);
        let big = vec![1u8; 1024 * 1024];
        for _ in 0..40 {
            s.append(&big).unwrap();
        }
        assert!(s.bytes() <= 3 * SEGMENT_BYTES, "{}", s.bytes());
        assert!(s.stats().dropped_records > 0);
        assert_eq!(
            s.stats().dropped_samples,
            s.stats().dropped_records * 1024,
            "samples of the dropped records"
        );
        let first = s.first_pending().unwrap();
        assert_eq!(first, s.stats().dropped_records + 1, "only the oldest were dropped");
        assert_eq!(s.pending_seqs().last().unwrap(), 40);
        assert_eq!(s.read(40).unwrap().payload, big);
        fs::remove_dir_all(&d).unwrap();
    }

    /// Replaying a backlog reads it back from disk: the index, not the payloads, is what
    /// the spool keeps in memory.
    #[test]
    fn a_reopened_backlog_is_indexed_not_loaded() {
        let d = dir("index");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        for i in 0..300u32 {
            s.append(&vec![(i % 251) as u8; 64 * 1024]).unwrap();
        }
        drop(s);
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert_eq!(s.pending_len(), 300);
        let index_bytes: usize =
            s.segments.iter().map(|g| g.entries.len() * std::mem::size_of::<Entry>()).sum();
        assert!(index_bytes < 300 * 32, "{index_bytes} bytes of index for 300 records of 64 KiB");
        assert!(s.reader.is_none(), "nothing was read yet");
        assert_eq!(s.read(251).unwrap().payload, vec![250u8; 64 * 1024]);
        s.ack(299).unwrap();
        assert_eq!(s.pending_seqs().collect::<Vec<_>>(), vec![300]);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A record damaged after it was indexed is found when it is read back, and skipped.
    #[test]
    fn a_record_damaged_on_disk_after_opening_is_reported_on_read() {
        let d = dir("lateflip");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        for i in 0..3u8 {
            s.append(&[i; 50]).unwrap();
        }
        let seg = s.segment_paths()[0].clone();
        let mut data = fs::read(&seg).unwrap();
        data[HEADER + 50 + HEADER + 5] ^= 1;
        fs::write(&seg, &data).unwrap();
        assert!(matches!(s.read(2), Err(SpoolError::Damaged { seq: 2, .. })));
        s.skip_damaged(2);
        assert_eq!(s.stats().corrupt_records, 1);
        assert_eq!(s.pending_seqs().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s.read(3).unwrap().payload, vec![2u8; 50]);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A directory, a garbage file and a garbage `acked` named like spool files are set aside
    /// as `*.bad` and counted; the real segment is still read, and appends go on.
    #[test]
    fn damaged_entries_are_set_aside_and_counted_never_fatal() {
        let d = dir("damaged");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        for i in 0..3u8 {
            s.append(&[i; 20]).unwrap();
        }
        drop(s);
        fs::create_dir(d.join("00000000000000000100.seg")).unwrap();
        fs::write(d.join("00000000000000000200.seg"), b"not a spool record at all").unwrap();
        fs::write(d.join("acked"), b"\xff\xfegarbage").unwrap();
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert_eq!(s.stats().bad_files, 3, "{:?}", s.stats());
        assert!(d.join("00000000000000000100.seg.bad").is_dir());
        assert!(d.join("00000000000000000200.seg.bad").is_file());
        assert!(d.join("acked.bad").is_file());
        assert_eq!(
            s.read_all().iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "resent: acked was lost"
        );
        assert_eq!(s.append(b"more").unwrap(), 4);
        drop(s);
        fs::create_dir(d.join("00000000000000000300.seg")).unwrap();
        let s = Spool::open(&d, 1 << 30).unwrap();
        assert!(d.join("00000000000000000300.seg.bad").is_dir(), "set aside again, under its own name");
        assert_eq!(s.pending_len(), 4);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A spool whose directory cannot be made holds nothing, numbers nothing, and opens as
    /// soon as it can.
    #[test]
    fn an_unusable_directory_is_retried_not_fatal() {
        let d = dir("unusable");
        fs::create_dir_all(d.parent().unwrap()).unwrap();
        fs::write(&d, b"a file where the spool dir should be").unwrap();
        let (mut s, err) = Spool::open_or_retry(&d, 1 << 30);
        assert!(err.is_some());
        assert!(s.unavailable().is_some());
        assert!(s.append(b"x").is_err());
        assert_eq!(s.next_seq(), 1, "a failed append uses no seq");
        assert!(s.retry_open().is_err());
        fs::remove_file(&d).unwrap();
        s.retry_open().unwrap();
        assert_eq!(s.append(b"x").unwrap(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A file left at the next segment's name by an earlier failed append is set aside, not
    /// appended to, so the seq it may hold never names two batches.
    #[test]
    fn a_leftover_at_the_next_segment_name_is_set_aside() {
        let d = dir("leftover");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        s.append(b"one").unwrap();
        s.roll_next = true;
        let next = d.join(format!("{:020}.seg", 2));
        fs::write(&next, encode_record(2, b"stale")).unwrap();
        assert_eq!(s.append(b"two").unwrap(), 2);
        assert_eq!(s.stats().bad_files, 1);
        drop(s);
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        let all = s.read_all();
        assert_eq!(
            all.iter().map(|r| (r.seq, r.payload.as_slice())).collect::<Vec<_>>(),
            vec![(1, &b"one"[..]), (2, &b"two"[..])]
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// A spool started from nothing stays "new" across restarts until a receiver said what it
    /// holds; one with history never is.
    #[test]
    fn new_until_a_receiver_told_its_mark() {
        let d = dir("new");
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert!(s.is_new());
        s.append(b"a").unwrap();
        drop(s);
        let mut s = Spool::open(&d, 1 << 30).unwrap();
        assert!(s.is_new(), "still unknown to any receiver");
        s.advance_next_seq(100);
        assert_eq!(s.append(b"b").unwrap(), 100);
        s.mark_known();
        s.ack(1).unwrap();
        drop(s);
        let s = Spool::open(&d, 1 << 30).unwrap();
        assert!(!s.is_new());
        assert_eq!(s.next_seq(), 101);
        fs::remove_dir_all(&d).unwrap();
    }

    /// The reader never panics on any bytes, and a damaged region never hides the valid
    /// records after it: 200,000 random and mutated segment images.
    #[test]
    fn property_parse_is_total_and_recovers() {
        let mut rng = StdRng::seed_from_u64(0x5B001);
        for case in 0..200_000u32 {
            let mut data = Vec::new();
            let n = rng.random_range(0..6);
            for i in 0..n {
                let len = rng.random_range(0..40);
                data.extend(encode_record(i + 1, &vec![rng.random(); len]));
            }
            match case % 3 {
                0 => data = (0..rng.random_range(0..120)).map(|_| rng.random()).collect(),
                1 if !data.is_empty() => {
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..data.len());
                        data[at] ^= 1 << rng.random_range(0..8);
                    }
                }
                _ if !data.is_empty() => {
                    let at = rng.random_range(0..data.len());
                    data.truncate(at);
                }
                _ => {}
            }
            let (records, valid, _) = parse(&data);
            assert!(valid <= data.len());
            let mut last = 0;
            for r in &records {
                assert!(r.seq > last || case % 3 == 0, "case {case}: order");
                last = r.seq;
            }
        }
    }
}
