//! Input blobs that many jobs read, kept in memory by digest so that a hot input is not fetched
//! from Redis and copied per job. Bounded in bytes (`DTEE_BLOB_CACHE_BYTES`) and in entries
//! ([`MAX_ENTRIES`], so that finding the least recently used blob stays cheap whatever blobs
//! jobs name); the least recently used blobs go first, and no blob larger than a quarter of the
//! bound is kept, so one large input cannot flush the rest. Only bytes already checked against their digest enter, so an
//! entry is the content its digest names, whoever's job read it first (blobs are shared by
//! digest in Redis too, PROTOCOL.md §7).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtee_schemas::Digest;

/// Most blobs kept at once: eviction scans them all.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// The cache.
#[derive(Debug)]
pub(crate) struct BlobCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Digest, (Arc<[u8]>, u64)>,
    bytes: usize,
    clock: u64,
}

impl BlobCache {
    /// A cache of at most `capacity` bytes (0: keeps nothing).
    pub(crate) fn new(capacity: usize) -> BlobCache {
        BlobCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// The blob, if cached.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        let mut inner = self.inner.lock().expect("blob cache lock");
        inner.clock += 1;
        let now = inner.clock;
        let (bytes, used) = inner.entries.get_mut(digest)?;
        *used = now;
        Some(Arc::clone(bytes))
    }

    /// Keeps `bytes`, which the caller checked against `digest`, evicting the least recently
    /// used blobs to make room.
    pub(crate) fn insert(&self, digest: &Digest, bytes: &Arc<[u8]>) {
        if bytes.len() > self.capacity / 4 {
            return;
        }
        let mut inner = self.inner.lock().expect("blob cache lock");
        if inner.entries.contains_key(digest) {
            return;
        }
        while inner.bytes + bytes.len() > self.capacity || inner.entries.len() >= MAX_ENTRIES {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(digest, _)| digest.clone())
            else {
                break;
            };
            if let Some((gone, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.len();
            }
        }
        inner.clock += 1;
        let now = inner.clock;
        inner.bytes += bytes.len();
        inner
            .entries
            .insert(digest.clone(), (Arc::clone(bytes), now));
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().expect("blob cache lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(fill: u8, len: usize) -> (Digest, Arc<[u8]>) {
        let bytes = vec![fill; len];
        (Digest::of(&bytes), Arc::from(bytes))
    }

    #[test]
    fn keeps_within_its_bound_and_drops_the_least_recently_used() {
        let cache = BlobCache::new(100);
        let (a, b, c) = (blob(1, 25), blob(2, 25), blob(3, 25));
        for (digest, bytes) in [&a, &b, &c] {
            cache.insert(digest, bytes);
        }
        assert_eq!(cache.bytes(), 75);
        assert!(cache.get(&a.0).is_some()); // a is now the most recent
        let d = blob(4, 25);
        cache.insert(&d.0, &d.1);
        let e = blob(5, 25);
        cache.insert(&e.0, &e.1); // evicts b, the least recently used
        assert!(cache.get(&b.0).is_none());
        assert!(cache.get(&a.0).is_some() && cache.get(&e.0).is_some());
        assert!(cache.bytes() <= 100);
        // Larger than a quarter of the bound: not kept.
        let big = blob(6, 26);
        cache.insert(&big.0, &big.1);
        assert!(cache.get(&big.0).is_none());
        // At most MAX_ENTRIES blobs, however small.
        let many = BlobCache::new(1 << 30);
        for n in 0..MAX_ENTRIES + 10 {
            let bytes: Arc<[u8]> = Arc::from(n.to_le_bytes().to_vec());
            many.insert(&Digest::of(&bytes), &bytes);
        }
        assert_eq!(many.inner.lock().unwrap().entries.len(), MAX_ENTRIES);
        // A zero bound keeps nothing.
        let none = BlobCache::new(0);
        none.insert(&a.0, &a.1);
        assert!(none.get(&a.0).is_none());
    }
}
