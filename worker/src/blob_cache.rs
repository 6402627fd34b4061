//! Input blobs that many jobs read, kept in memory by digest so that a hot input is not fetched
//! from Redis and copied per job. Bounded in bytes (`DTEE_BLOB_CACHE_BYTES`) and in entries
//! ([`MAX_ENTRIES`], so that finding what to evict stays cheap whatever blobs jobs name), and
//! shared fairly by tenants (`fair_cache`: a tenant that streams new blobs through the worker
//! evicts its own once it holds more than any other); no blob larger than a quarter of the
//! bound is kept, so one large input cannot flush the rest. Only bytes already checked against
//! their digest enter, so an entry is the content its digest names, whoever's job read it first
//! (blobs are shared by digest in Redis too, PROTOCOL.md §7).

use std::sync::{Arc, Mutex};

use dtee_schemas::Digest;

use crate::fair_cache::FairCache;

/// Most blobs kept at once: eviction scans them all.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// The cache.
#[derive(Debug)]
pub(crate) struct BlobCache {
    capacity: usize,
    inner: Mutex<FairCache<Arc<[u8]>>>,
}

impl BlobCache {
    /// A cache of at most `capacity` bytes (0: keeps nothing).
    pub(crate) fn new(capacity: usize) -> BlobCache {
        BlobCache {
            capacity,
            inner: Mutex::new(FairCache::new(MAX_ENTRIES, capacity)),
        }
    }

    /// The blob, if cached, for a job of `tenant`.
    pub(crate) fn get(&self, tenant: &str, digest: &Digest) -> Option<Arc<[u8]>> {
        self.inner
            .lock()
            .expect("blob cache lock")
            .get(tenant, digest)
    }

    /// The length of the blob, if cached, without using it (nobody is charged for a look).
    pub(crate) fn peek_len(&self, digest: &Digest) -> Option<usize> {
        self.inner
            .lock()
            .expect("blob cache lock")
            .peek(digest)
            .map(|bytes| bytes.len())
    }

    /// Keeps `bytes`, which the caller checked against `digest`, for `tenant`, making room as
    /// `fair_cache` says.
    pub(crate) fn insert(&self, tenant: &str, digest: &Digest, bytes: &Arc<[u8]>) {
        if bytes.len() > self.capacity / 4 {
            return;
        }
        // A blob already kept stays as it is (`FairCache::insert`).
        self.inner.lock().expect("blob cache lock").insert(
            tenant,
            digest.clone(),
            Arc::clone(bytes),
            bytes.len(),
        );
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().expect("blob cache lock").bytes()
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
            cache.insert("t", digest, bytes);
        }
        assert_eq!(cache.bytes(), 75);
        assert!(cache.get("t", &a.0).is_some()); // a is now the most recent
        let d = blob(4, 25);
        cache.insert("t", &d.0, &d.1);
        let e = blob(5, 25);
        cache.insert("t", &e.0, &e.1); // evicts b, the least recently used
        assert!(cache.get("t", &b.0).is_none());
        assert!(cache.get("t", &a.0).is_some() && cache.get("t", &e.0).is_some());
        assert!(cache.bytes() <= 100);
        // Larger than a quarter of the bound: not kept.
        let big = blob(6, 26);
        cache.insert("t", &big.0, &big.1);
        assert!(cache.get("t", &big.0).is_none());
        // At most MAX_ENTRIES blobs, however small.
        let many = BlobCache::new(1 << 30);
        for n in 0..MAX_ENTRIES + 10 {
            let bytes: Arc<[u8]> = Arc::from(n.to_le_bytes().to_vec());
            many.insert("t", &Digest::of(&bytes), &bytes);
        }
        assert_eq!(many.inner.lock().unwrap().len(), MAX_ENTRIES);
        // A zero bound keeps nothing.
        let none = BlobCache::new(0);
        none.insert("t", &a.0, &a.1);
        assert!(none.get("t", &a.0).is_none());
    }

    #[test]
    fn another_tenants_stream_of_blobs_leaves_a_tenants_blob() {
        let cache = BlobCache::new(100);
        let kept = blob(1, 20);
        cache.insert("victim", &kept.0, &kept.1);
        for n in 0..200u32 {
            let bytes: Arc<[u8]> = Arc::from([n.to_le_bytes().as_slice(), &[0; 16]].concat());
            cache.insert("flood", &Digest::of(&bytes), &bytes);
        }
        assert!(cache.get("victim", &kept.0).is_some());
        assert!(cache.bytes() <= 100);
    }
}
