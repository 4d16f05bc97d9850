//! What the engine asks of the device, counted: dispatches, bind groups and buffers
//! created, bytes uploaded, readbacks, submits, and the host time spent encoding. Read a
//! snapshot before and after a step and subtract (`webtune bench` prints them per step).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Counters {
    pub(crate) dispatches: AtomicU64,
    pub(crate) bind_groups: AtomicU64,
    pub(crate) buffers: AtomicU64,
    pub(crate) buffer_bytes: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) upload_bytes: AtomicU64,
    pub(crate) readbacks: AtomicU64,
    pub(crate) submits: AtomicU64,
    pub(crate) encode_ns: AtomicU64,
}

/// A snapshot of `Counters` (or the difference of two).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct CounterSnapshot {
    pub dispatches: u64,
    pub bind_groups: u64,
    pub buffers: u64,
    pub buffer_bytes: u64,
    /// write_buffer calls and buffers created with contents.
    pub uploads: u64,
    pub upload_bytes: u64,
    pub readbacks: u64,
    pub submits: u64,
    /// Host time inside `Encoder::dispatch` (pipeline lookup, uniform, bind group, record);
    /// 0 in wasm, which has no clock here.
    pub encode_ns: u64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub(crate) fn buffer(&self, bytes: u64) {
        Self::add(&self.buffers, 1);
        Self::add(&self.buffer_bytes, bytes);
    }

    pub(crate) fn upload(&self, bytes: u64) {
        Self::add(&self.uploads, 1);
        Self::add(&self.upload_bytes, bytes);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            dispatches: self.dispatches.load(Relaxed),
            bind_groups: self.bind_groups.load(Relaxed),
            buffers: self.buffers.load(Relaxed),
            buffer_bytes: self.buffer_bytes.load(Relaxed),
            uploads: self.uploads.load(Relaxed),
            upload_bytes: self.upload_bytes.load(Relaxed),
            readbacks: self.readbacks.load(Relaxed),
            submits: self.submits.load(Relaxed),
            encode_ns: self.encode_ns.load(Relaxed),
        }
    }
}

impl std::ops::Sub for CounterSnapshot {
    type Output = CounterSnapshot;
    fn sub(self, o: CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            dispatches: self.dispatches - o.dispatches,
            bind_groups: self.bind_groups - o.bind_groups,
            buffers: self.buffers - o.buffers,
            buffer_bytes: self.buffer_bytes - o.buffer_bytes,
            uploads: self.uploads - o.uploads,
            upload_bytes: self.upload_bytes - o.upload_bytes,
            readbacks: self.readbacks - o.readbacks,
            submits: self.submits - o.submits,
            encode_ns: self.encode_ns - o.encode_ns,
        }
    }
}

impl std::fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} dispatches, {} bind groups, {} buffers ({:.2} MiB), {} uploads ({:.1} KiB), {} readbacks, {} submits, {:.1} ms encoding",
            self.dispatches,
            self.bind_groups,
            self.buffers,
            self.buffer_bytes as f64 / 1048576.0,
            self.uploads,
            self.upload_bytes as f64 / 1024.0,
            self.readbacks,
            self.submits,
            self.encode_ns as f64 / 1e6
        )
    }
}
