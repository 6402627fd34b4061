//! Prepared kernels by digest, least recently used evicted first.

use std::collections::HashMap;
use std::sync::Arc;

use dtee_schemas::Digest;

use crate::backend::Prepared;

/// Prepared kernels (or their deterministic failures) by digest, at most `capacity` of them.
pub(super) struct ModuleCache<K> {
    /// Entries kept; a new digest beyond this evicts the least recently used one.
    capacity: usize,
    /// Advances on every access; an entry's stamp is the clock at its last use.
    clock: u64,
    /// The prepared kernel and its last-use stamp, by digest.
    entries: HashMap<Digest, (Arc<Prepared<K>>, u64)>,
}

impl<K> ModuleCache<K> {
    /// An empty cache for `capacity` kernels.
    pub(super) fn new(capacity: usize) -> ModuleCache<K> {
        ModuleCache {
            capacity,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The entry for `digest`, marked as just used.
    pub(super) fn get(&mut self, digest: &Digest) -> Option<Arc<Prepared<K>>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(digest).map(|(prepared, used)| {
            *used = clock;
            Arc::clone(prepared)
        })
    }

    /// Stores `prepared` under `digest`, evicting the least recently used entry when full.
    pub(super) fn insert(&mut self, digest: Digest, prepared: Arc<Prepared<K>>) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&digest) {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| d.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(digest, (prepared, self.clock));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let mut cache = ModuleCache::<u32>::new(2);
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        cache.insert(a.clone(), Arc::new(Ok(1)));
        cache.insert(b.clone(), Arc::new(Ok(2)));
        // Using `a` makes `b` the least recently used.
        assert!(cache.get(&a).is_some());
        cache.insert(c.clone(), Arc::new(Ok(3)));
        assert!(cache.get(&b).is_none());
        assert_eq!(
            cache.get(&a).as_deref().map(|p| p.as_ref().ok()),
            Some(Some(&1))
        );
        assert_eq!(
            cache.get(&c).as_deref().map(|p| p.as_ref().ok()),
            Some(Some(&3))
        );
        // Replacing an entry that is present evicts nothing.
        cache.insert(a.clone(), Arc::new(Ok(4)));
        assert_eq!(
            cache.get(&a).as_deref().map(|p| p.as_ref().ok()),
            Some(Some(&4))
        );
        assert!(cache.get(&c).is_some());
    }
}
