//! The parallel paths of a backup and a restore.
//!
//! Restore: a part's chunks are grouped into runs (neighbours in one pack, one range read
//! each); `parallel` worker threads fetch and decode runs (decryption, zstd) while the
//! calling thread writes them in order and hashes the whole part. That sha256 covers every
//! chunk, so the chunks' own hashes are checked only to name the damage when it fails. At most
//! `parallel + 2` runs are fetched ahead of the writer, so memory stays bounded whatever the
//! part's size.
//!
//! Create: the calling thread reads the input in batches of chunks; worker threads hash and
//! compress them; the calling thread puts them into packs in input order (so a backup's packs
//! and chunk lists do not depend on thread timing) and hands full packs to the uploader.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::crypto::Keys;
use crate::id::Id;
use crate::pack::{decode_blob, open_blob, Encoding, Index, Location};
use crate::RepoError;

use super::Repository;

/// Raw bytes of one run at most: with `parallel + 2` runs in memory this bounds a restore's
/// buffers (about 10 × 8 MiB at `--parallel 8`).
const RUN_RAW_MAX: u64 = 8 << 20;
/// Bytes read from the input per batch of a create (a whole number of chunks).
const BATCH_BYTES: usize = 1 << 20;

/// Reports bytes as they are restored or backed up (a terminal's progress bar).
pub trait Progress: Send + Sync {
    /// `total` when known (a restore, a backup of a file).
    fn begin(&self, total: Option<u64>);
    fn advance(&self, bytes: u64);
    fn end(&self);
}

/// How a backup or a restore moves data.
#[derive(Clone, Default)]
pub struct Transfer {
    /// Range reads (restore) or compression threads and uploads (create) at once; 0 picks
    /// the default ([`Transfer::workers`]).
    pub parallel: usize,
    /// Bytes per second a backup reads its input at, at most (`--limit-rate`).
    pub limit_rate: Option<u64>,
    pub progress: Option<Arc<dyn Progress>>,
    /// The zstd level of the chunks a backup stores instead of the repository's
    /// (`--compression-level`); any level reads back the same way.
    pub compression_level: Option<i32>,
    /// Skip reading back the stored packs a backup reuses (`--trust-stored`): faster on a
    /// distant bucket, but a damaged chunk then spreads into the new backup until a scrub or
    /// a verify finds it.
    pub trust_stored: bool,
    /// What the user should know but is not an error (damage found and healed on the way),
    /// for the workflow to pass on ([`Notes::drain`]).
    pub notes: Notes,
}

/// Lines a repository operation leaves for its caller; clones share them.
#[derive(Clone, Default)]
pub struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    pub fn drain(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("parallel", &self.parallel)
            .field("limit_rate", &self.limit_rate)
            .field("compression_level", &self.compression_level)
            .field("trust_stored", &self.trust_stored)
            .finish()
    }
}

impl Transfer {
    pub(crate) fn note(&self, text: &str) {
        self.notes.push(text.to_string());
    }

    /// Worker threads: `parallel`, or the number of cores (at least 2, at most 8).
    pub fn workers(&self) -> usize {
        match self.parallel {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8),
            n => n.min(64),
        }
    }
}

/// Parses a rate such as `50MiB/s`, `10M`, `500k`, `1G/s` or a plain number of bytes per
/// second. Binary and decimal suffixes both count in powers of 1024 (as curl and rsync do).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("{text:?}: not a rate; use e.g. 50MiB/s, 10M or 800k"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use B, KiB, MiB or GiB (per second)"
            ))
        }
    };
    let rate = (value * scale as f64) as u64;
    if rate < 1024 {
        return Err(format!("{text:?}: too low; the smallest rate is 1KiB/s"));
    }
    Ok(rate)
}

/// A token bucket: `take(n)` sleeps until `n` more bytes fit into `rate` per second (with a
/// burst of a quarter second).
pub(crate) struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub(crate) fn new(rate: u64) -> Throttle {
        let rate = rate as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        Throttle { rate, burst, tokens: burst, last: Instant::now() }
    }

    pub(crate) fn take(&mut self, n: usize) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / self.rate));
        }
    }
}

/// What a restore does with each run's decoded chunks, in order.
pub(crate) type WriteRun<'w> = dyn FnMut(&[Vec<u8>]) -> Result<(), RepoError> + 'w;

/// One range read: neighbouring chunks of one pack, in part order.
pub(crate) struct Run {
    pub(crate) pack: Id,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) blobs: Vec<(Id, Location)>,
}

impl Repository {
    /// Groups a part's chunks into runs of neighbours in one pack (at most `MAX_READ_SPAN`
    /// stored and `RUN_RAW_MAX` raw bytes each).
    pub(crate) fn plan_runs(&self, index: &Index, ids: &[Id]) -> Result<Vec<Run>, RepoError> {
        let mut runs: Vec<Run> = Vec::new();
        let mut raw = 0u64;
        for id in ids {
            let loc = *self.locate(index, id)?;
            let (start, stored) = (loc.offset as u64, loc.stored_len as u64);
            if let Some(run) = runs.last_mut() {
                if run.pack == loc.pack
                    && run.end == start
                    && run.end + stored - run.start <= super::MAX_READ_SPAN
                    && raw + loc.raw_len as u64 <= RUN_RAW_MAX
                {
                    run.end += stored;
                    run.blobs.push((*id, loc));
                    raw += loc.raw_len as u64;
                    continue;
                }
            }
            runs.push(Run { pack: loc.pack, start, end: start + stored, blobs: vec![(*id, loc)] });
            raw = loc.raw_len as u64;
        }
        Ok(runs)
    }

    /// Fetches and decodes one run: its chunks' content, each checked against its id when
    /// `check_each`.
    fn fetch_run(
        &self,
        keys: Option<&Keys>,
        run: &Run,
        check_each: bool,
    ) -> Result<Vec<Vec<u8>>, RepoError> {
        let bytes = self.pack_range(&run.pack, run.start..run.end)?;
        if (bytes.len() as u64) < run.end - run.start {
            return Err(RepoError::Damaged(format!(
                "pack {} is shorter than its index says",
                run.pack.hex()
            )));
        }
        run.blobs
            .iter()
            .map(|(id, loc)| {
                let off = (loc.offset as u64 - run.start) as usize;
                let stored = &bytes[off..off + loc.stored_len as usize];
                match check_each {
                    true => decode_blob(keys, *id, loc.encoding, loc.raw_len, stored),
                    false => open_blob(keys, *id, loc.encoding, loc.raw_len, stored),
                }
                .map_err(|e| RepoError::Damaged(format!("pack {}: {e}", loc.pack.hex())))
            })
            .collect()
    }

    /// Fetches and decodes `runs` on worker threads and hands each run's chunks to `write`,
    /// in order. The first error (a damaged pack, a failed write) stops the workers.
    /// `check_each`: see [`Repository::fetch_run`].
    pub(crate) fn read_runs(
        &self,
        runs: &[Run],
        check_each: bool,
        write: &mut WriteRun<'_>,
    ) -> Result<(), RepoError> {
        let keys = self.keys()?;
        let workers = self.transfer.workers().min(runs.len());
        if workers <= 1 {
            for run in runs {
                write(&self.fetch_run(keys, run, check_each)?)?;
            }
            return Ok(());
        }
        let window = workers + 2;
        let next = AtomicUsize::new(0);
        // (runs written so far, stop): a worker waits while it is `window` runs ahead.
        let state = Mutex::new((0usize, false));
        let wake = Condvar::new();
        let (tx, rx) = mpsc::channel::<(usize, Result<Vec<Vec<u8>>, RepoError>)>();
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, state, wake) = (&next, &state, &wake);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs.len() {
                        return;
                    }
                    {
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        while !st.1 && i >= st.0 + window {
                            st = wake.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        if st.1 {
                            return;
                        }
                    }
                    let result = self.fetch_run(keys, &runs[i], check_each);
                    let failed = result.is_err();
                    if tx.send((i, result)).is_err() || failed {
                        return;
                    }
                });
            }
            drop(tx);
            let stop = || {
                state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
                wake.notify_all();
            };
            let mut ready: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
            for want in 0..runs.len() {
                let chunks = loop {
                    if let Some(c) = ready.remove(&want) {
                        break c;
                    }
                    match rx.recv() {
                        Ok((i, Ok(c))) => {
                            ready.insert(i, c);
                        }
                        Ok((_, Err(e))) => {
                            stop();
                            return Err(e);
                        }
                        Err(_) => {
                            stop();
                            return Err(RepoError::Io(
                                "the restore's reader threads stopped unexpectedly".into(),
                            ));
                        }
                    }
                };
                if let Err(e) = write(&chunks) {
                    stop();
                    return Err(e);
                }
                state.lock().unwrap_or_else(|p| p.into_inner()).0 = want + 1;
                wake.notify_all();
            }
            Ok(())
        })
    }
}

/// One chunk as a create's worker leaves it: its id, and its stored form unless the
/// repository already holds it.
pub(crate) struct Encoded {
    pub id: Id,
    pub raw_len: u32,
    pub stored: Option<(Encoding, Vec<u8>)>,
}

/// Reads `reader` in chunks of `chunk_size`, hashes and compresses them on `workers` threads
/// (skipping what `index` holds) and hands them to `put` in input order, with the whole
/// input to `whole` as it is read. Returns the bytes read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_stream(
    reader: &mut dyn Read,
    chunk_size: usize,
    workers: usize,
    index: &Index,
    keys: Option<&Keys>,
    level: i32,
    throttle: &mut Option<Throttle>,
    whole: &mut dyn FnMut(&[u8]),
    put: &mut dyn FnMut(Encoded) -> Result<(), RepoError>,
) -> Result<u64, RepoError> {
    let batch_len = (BATCH_BYTES / chunk_size).max(1) * chunk_size;
    let encode_batch = |batch: &[u8]| -> Vec<Encoded> {
        batch
            .chunks(chunk_size)
            .map(|raw| {
                let id = crate::pack::blob_id(keys, raw);
                let stored =
                    (!index.contains(&id)).then(|| crate::pack::encode_blob(&id, raw, level, keys));
                Encoded { id, raw_len: raw.len() as u32, stored }
            })
            .collect()
    };
    let mut total = 0u64;
    let (job_tx, job_rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(usize, Vec<Encoded>, Vec<u8>)>();
    // Spent batch buffers come back with the results and are reused.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    std::thread::scope(|s| -> Result<u64, RepoError> {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (job_rx, encode_batch) = (&job_rx, &encode_batch);
            s.spawn(move || loop {
                let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((seq, batch)) = job else { return };
                let encoded = encode_batch(&batch);
                if done_tx.send((seq, encoded, batch)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let max_in_flight = workers * 2;
        let (mut sent, mut next_out) = (0usize, 0usize);
        let mut ready: BTreeMap<usize, Vec<Encoded>> = BTreeMap::new();
        // Hands over results in order; blocks for one when `block`.
        let mut drain = |block: bool,
                         ready: &mut BTreeMap<usize, Vec<Encoded>>,
                         spare: &mut Vec<Vec<u8>>,
                         next_out: &mut usize|
         -> Result<(), RepoError> {
            let first = if block { done_rx.recv().ok() } else { done_rx.try_recv().ok() };
            if block && first.is_none() {
                return Err(RepoError::Io(
                    "the backup's compression threads stopped unexpectedly".into(),
                ));
            }
            let mut got = first;
            while let Some((seq, enc, buf)) = got.take() {
                ready.insert(seq, enc);
                spare.push(buf);
                got = done_rx.try_recv().ok();
            }
            while let Some(enc) = ready.remove(next_out) {
                *next_out += 1;
                for e in enc {
                    put(e)?;
                }
            }
            Ok(())
        };
        let result = (|| {
            loop {
                let mut buf = spare.pop().unwrap_or_default();
                buf.resize(batch_len, 0);
                let n = read_full(reader, &mut buf)
                    .map_err(|e| RepoError::Io(format!("reading: {e}")))?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                if let Some(t) = throttle.as_mut() {
                    t.take(n);
                }
                whole(&buf);
                total += n as u64;
                while sent - next_out >= max_in_flight {
                    drain(true, &mut ready, &mut spare, &mut next_out)?;
                }
                job_tx.send((sent, buf)).map_err(|_| {
                    RepoError::Io("the backup's compression threads stopped unexpectedly".into())
                })?;
                sent += 1;
                drain(false, &mut ready, &mut spare, &mut next_out)?;
                if n < batch_len {
                    break;
                }
            }
            while next_out < sent {
                drain(true, &mut ready, &mut spare, &mut next_out)?;
            }
            Ok(total)
        })();
        drop(job_tx);
        result
    })
}

pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::test_support::*;

    /// Several packs, several workers: the same bytes, packs and chunk lists whatever the
    /// parallelism; a damaged pack in the middle stops the restore with the usual error.
    #[test]
    fn parallel_round_trip_and_damage() {
        let mut sizes = Vec::new();
        let mut parts = Vec::new();
        for parallel in [1usize, 3, 8] {
            let dir = tempfile::tempdir().unwrap();
            let mut r = repo(dir.path(), 64 * 1024);
            r.set_transfer(Transfer { parallel, ..Default::default() });
            let mut data = db(11);
            data.extend_from_slice(&db(12));
            let m = backup(&r, &data);
            assert!(r.store.list("packs/").unwrap().len() > 8, "want many packs");
            assert_eq!(restore(&r, &m), data, "parallel {parallel}");
            sizes.push(m.sizes.clone());
            parts.push(m.snapshot.clone());
            // Damage one chunk halfway through: the restore fails, naming the pack.
            let index = r.load_index().unwrap();
            let ids = r.chunk_ids(&index, &m.snapshot).unwrap();
            let loc = *index.get(&ids[ids.len() / 2]).unwrap();
            let pack = dir.path().join(super::super::pack_key(&loc.pack));
            let mut bytes = std::fs::read(&pack).unwrap();
            bytes[loc.offset as usize + 1] ^= 0x40;
            std::fs::write(&pack, bytes).unwrap();
            let mut out = Vec::new();
            let err = r.read_part(&index, &m.snapshot, &mut out).unwrap_err();
            assert!(
                matches!(err, RepoError::Damaged(ref s) if s.contains(&loc.pack.hex())),
                "{err}"
            );
            assert!(out.len() < data.len());
        }
        assert!(parts
            .windows(2)
            .all(|w| w[0].chunk_lists == w[1].chunk_lists && w[0].sha256 == w[1].sha256));
        assert!(sizes
            .windows(2)
            .all(|w| w[0].added == w[1].added && w[0].blobs_added == w[1].blobs_added));
    }

    /// A chunk stored raw (incompressible) decodes whatever its bytes: the part's sha256
    /// catches a flipped bit in it, and the second pass names the pack, as for any damage.
    #[test]
    fn damage_in_a_raw_chunk_is_named() {
        use crate::pack::Encoding;
        use rand::{RngCore, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let mut r = repo(dir.path(), 64 * 1024);
        r.set_transfer(Transfer { parallel: 3, ..Default::default() });
        let mut data = vec![0u8; 64 * 4096 + 32];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
        let m = backup(&r, &data);
        let index = r.load_index().unwrap();
        let ids = r.chunk_ids(&index, &m.snapshot).unwrap();
        let loc = *index.get(&ids[ids.len() / 2]).unwrap();
        assert_eq!(loc.encoding, Encoding::Raw, "random bytes are stored raw");
        let pack = dir.path().join(super::super::pack_key(&loc.pack));
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[loc.offset as usize + 100] ^= 0x01;
        std::fs::write(&pack, bytes).unwrap();
        let err = r.read_part(&index, &m.snapshot, &mut io::sink()).unwrap_err();
        assert!(
            matches!(err, RepoError::Damaged(ref s) if s.contains(&loc.pack.hex()) && s.contains("does not match")),
            "{err}"
        );
    }

    /// A write that fails stops the workers and names the error.
    #[test]
    fn a_failed_write_stops_the_readers() {
        struct FailAfter(usize);
        impl std::io::Write for FailAfter {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 < b.len() {
                    return Err(io::Error::other("disk gone"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut r = repo(dir.path(), 64 * 1024);
        r.set_transfer(Transfer { parallel: 4, ..Default::default() });
        let m = backup(&r, &db(13));
        let index = r.load_index().unwrap();
        let err = r.read_part(&index, &m.snapshot, &mut FailAfter(100_000)).unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("50MiB/s").unwrap(), 50 << 20);
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("800k").unwrap(), 800 << 10);
        assert_eq!(parse_rate("1.5G/s").unwrap(), 3 << 29);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
        assert!(parse_rate("10").is_err());
    }

    #[test]
    fn throttle_holds_the_rate() {
        let mut t = Throttle::new(4 << 20);
        let started = Instant::now();
        for _ in 0..12 {
            t.take(256 << 10); // 3 MiB in all, 1 MiB of it burst
        }
        let took = started.elapsed().as_secs_f64();
        assert!((0.4..1.5).contains(&took), "3 MiB at 4 MiB/s with a 1 MiB burst took {took:.2} s");
    }
}
