//! Prepared kernels by digest, least recently used evicted first, bounded both in count and in
//! bytes (the size of each compiled module's image, as the backend measures it).

use std::collections::HashMap;
use std::sync::Arc;

use dtee_schemas::Digest;

use crate::backend::Prepared;

/// Prepared kernels (or their deterministic failures) by digest: at most `capacity` of them, of
/// at most `max_bytes` in all.
pub(super) struct ModuleCache<K> {
    /// Entries kept; a new digest beyond this evicts the least recently used one.
    capacity: usize,
    /// Bytes kept; a new entry evicts least recently used ones until it fits. An entry larger
    /// than this on its own is not kept.
    max_bytes: usize,
    /// The sum of the sizes of the entries kept.
    bytes: usize,
    /// Advances on every access; an entry's stamp is the clock at its last use.
    clock: u64,
    /// The prepared kernel, its size and its last-use stamp, by digest.
    entries: HashMap<Digest, Entry<K>>,
}

struct Entry<K> {
    prepared: Arc<Prepared<K>>,
    size: usize,
    used: u64,
}

impl<K> ModuleCache<K> {
    /// An empty cache for `capacity` kernels of `max_bytes` in all.
    pub(super) fn new(capacity: usize, max_bytes: usize) -> ModuleCache<K> {
        ModuleCache {
            capacity,
            max_bytes,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The entry for `digest`, marked as just used.
    pub(super) fn get(&mut self, digest: &Digest) -> Option<Arc<Prepared<K>>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(digest).map(|entry| {
            entry.used = clock;
            Arc::clone(&entry.prepared)
        })
    }

    /// The bytes the entries kept add up to.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `prepared` (of `size` bytes) under `digest`, evicting least recently used entries
    /// until both bounds hold; an entry over `max_bytes` alone is not stored.
    pub(super) fn insert(&mut self, digest: Digest, prepared: Arc<Prepared<K>>, size: usize) {
        self.remove(&digest);
        if size > self.max_bytes {
            return;
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity || self.bytes + size > self.max_bytes)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(digest, _)| digest.clone());
            match oldest {
                Some(oldest) => self.remove(&oldest),
                None => break,
            }
        }
        self.clock += 1;
        self.bytes += size;
        let used = self.clock;
        self.entries.insert(
            digest,
            Entry {
                prepared,
                size,
                used,
            },
        );
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.remove(digest) {
            self.bytes -= entry.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(cache: &mut ModuleCache<u32>, digest: &Digest) -> Option<u32> {
        cache
            .get(digest)
            .and_then(|p| p.as_ref().as_ref().ok().copied())
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let mut cache = ModuleCache::<u32>::new(2, usize::MAX);
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        cache.insert(a.clone(), Arc::new(Ok(1)), 1);
        cache.insert(b.clone(), Arc::new(Ok(2)), 1);
        // Using `a` makes `b` the least recently used.
        assert!(cache.get(&a).is_some());
        cache.insert(c.clone(), Arc::new(Ok(3)), 1);
        assert!(cache.get(&b).is_none());
        assert_eq!(value(&mut cache, &a), Some(1));
        assert_eq!(value(&mut cache, &c), Some(3));
        // Replacing an entry that is present evicts nothing.
        cache.insert(a.clone(), Arc::new(Ok(4)), 1);
        assert_eq!(value(&mut cache, &a), Some(4));
        assert!(cache.get(&c).is_some());
    }

    #[test]
    fn entries_are_evicted_until_the_bytes_fit() {
        let mut cache = ModuleCache::<u32>::new(100, 10);
        let (a, b, c, d) = (
            Digest::of(b"a"),
            Digest::of(b"b"),
            Digest::of(b"c"),
            Digest::of(b"d"),
        );
        cache.insert(a.clone(), Arc::new(Ok(1)), 4);
        cache.insert(b.clone(), Arc::new(Ok(2)), 4);
        assert!(cache.get(&a).is_some());
        // 4 + 4 + 6 > 10: `b`, the least recently used, goes; then 4 + 6 fits.
        cache.insert(c.clone(), Arc::new(Ok(3)), 6);
        assert_eq!(cache.bytes(), 10);
        assert!(cache.get(&b).is_none());
        assert_eq!(value(&mut cache, &a), Some(1));
        // An entry over the whole budget is not kept, and evicts nothing.
        cache.insert(d.clone(), Arc::new(Ok(4)), 11);
        assert!(cache.get(&d).is_none());
        assert_eq!(cache.bytes(), 10);
        // Replacing an entry counts its new size only.
        cache.insert(a.clone(), Arc::new(Ok(5)), 2);
        assert_eq!(cache.bytes(), 8);
        assert_eq!(value(&mut cache, &c), Some(3));
    }
}
