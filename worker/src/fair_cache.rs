//! A cache that tenants share without one of them being able to flush the others' entries:
//! compiled kernels (each wasm profile, each GPU target) and hot input blobs are kept here, by
//! digest, bounded both in entries and in bytes.
//!
//! Entries are shared: content-addressed, a compiled kernel or a blob serves every tenant whose
//! job names its digest. Each entry is charged to the tenants that used it since it entered (up
//! to [`MAX_USERS`] of them), each an equal part of it, so a kernel that four tenants use counts
//! a quarter for each. Room for a new entry is made at the expense of the tenant charged the
//! most (in entries when the entry bound is what is met, in bytes when it is the byte bound),
//! unless that tenant would then hold no more than the inserting tenant with the new entry: then
//! the inserting tenant gives up one of its own instead (when it has any). The tenant chosen
//! gives up its least recently used entry that no other tenant used, and only when it has none,
//! its least recently used shared one. So a tenant that streams new kernels or blobs through a
//! worker evicts only its own once it holds as much as any other tenant, and a tenant keeps what
//! it holds as long as it holds no more than the others: max-min fairness rather than one least
//! recently used order for everyone. What a tenant can still do is use another tenant's entry
//! (it needs the digest and the right to read it), and so take part of it on its own account.

use std::collections::HashMap;
use std::sync::Arc;

use dtee_schemas::Digest;

/// The most tenants an entry is charged to: an entry used by more is popular, and the tenants
/// beyond are not charged for it.
pub(crate) const MAX_USERS: usize = 4;

/// Charges are kept in twelfths, so that an entry splits evenly between 1, 2, 3 or 4 users.
const PARTS: usize = 12;

/// The cache: values of type `V` by digest, at most `capacity` of them and `max_bytes` in all.
#[derive(Debug)]
pub(crate) struct FairCache<V> {
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Advances on every access; an entry's stamp is the clock at its last use.
    clock: u64,
    entries: HashMap<Digest, Entry<V>>,
    /// What each tenant is charged, in [`PARTS`] of entries and of bytes.
    held: HashMap<Arc<str>, Held>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    size: usize,
    used: u64,
    users: Vec<Arc<str>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    entries: usize,
    bytes: usize,
}

/// Which bound a new entry meets, and so what tenants are compared by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Entries,
    Bytes,
}

impl Bound {
    fn measure(self, held: Held) -> usize {
        match self {
            Bound::Entries => held.entries,
            Bound::Bytes => held.bytes,
        }
    }
}

/// One user's part of an entry of `size` bytes shared by `users`.
fn share(size: usize, users: usize) -> Held {
    let users = users.max(1);
    Held {
        entries: PARTS / users,
        bytes: size.saturating_mul(PARTS) / users,
    }
}

impl<V: Clone> FairCache<V> {
    /// An empty cache of at most `capacity` entries and `max_bytes` bytes.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> FairCache<V> {
        FairCache {
            capacity,
            max_bytes,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// The value for `digest`, marked as just used by `tenant` (who takes its part of the entry
    /// from now on, up to [`MAX_USERS`] tenants per entry).
    pub(crate) fn get(&mut self, tenant: &str, digest: &Digest) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(digest)?;
        entry.used = clock;
        if entry.users.len() < MAX_USERS && !entry.users.iter().any(|user| &**user == tenant) {
            let user = user_of(&self.held, tenant);
            // The parts change: each user's old part off, then the new ones on.
            let before = share(entry.size, entry.users.len());
            for each in &entry.users {
                charge(&mut self.held, each, before, false);
            }
            entry.users.push(user);
            let after = share(entry.size, entry.users.len());
            for each in &entry.users {
                charge(&mut self.held, each, after, true);
            }
        }
        Some(entry.value.clone())
    }

    /// The value for `digest`, without marking it used or charging anyone: for a look that
    /// may not lead to a use.
    pub(crate) fn peek(&self, digest: &Digest) -> Option<&V> {
        self.entries.get(digest).map(|entry| &entry.value)
    }

    /// Keeps `value` (of `size` bytes) under `digest` for `tenant`, making room as the module
    /// documentation says. A digest already kept stays as it is (its value is the same: the
    /// digest names the content), and `tenant` takes its part of it as a use would. A value
    /// over `max_bytes` alone is not kept, and neither is one for which no entry may be
    /// evicted (every candidate is also used by a tenant holding less than `tenant`).
    pub(crate) fn insert(&mut self, tenant: &str, digest: Digest, value: V, size: usize) {
        if self.get(tenant, &digest).is_some() {
            return;
        }
        if size > self.max_bytes || self.capacity == 0 {
            return;
        }
        loop {
            let bound = if self.entries.len() >= self.capacity {
                Bound::Entries
            } else if self.bytes + size > self.max_bytes {
                Bound::Bytes
            } else {
                break;
            };
            match self.victim(tenant, bound, size) {
                Some(victim) => self.remove(&victim),
                None => return,
            }
        }
        self.clock += 1;
        let user = user_of(&self.held, tenant);
        charge(&mut self.held, &user, share(size, 1), true);
        self.bytes += size;
        self.entries.insert(
            digest,
            Entry {
                value,
                size,
                used: self.clock,
                users: vec![user],
            },
        );
    }

    /// The entry to evict for room for `inserting`'s new entry of `size` bytes, if any may be.
    ///
    /// An entry may be evicted only if every tenant that uses it, the inserting one aside,
    /// holds at least as much as the inserting tenant: room is taken from those who have more
    /// (or as much), never from one who has less, whoever else shares the entry. Among those,
    /// the entries of the tenant charged the most go first while it holds more than the
    /// inserting tenant would with the new entry, and otherwise the inserting tenant's own;
    /// within either, entries no other tenant uses first, then the least recently used. For
    /// the byte bound, entries that free no bytes are not evicted.
    fn victim(&self, inserting: &str, bound: Bound, size: usize) -> Option<Digest> {
        let measure =
            |tenant: &Arc<str>| self.held.get(tenant).map_or(0, |held| bound.measure(*held));
        // The tenant charged the most (ties: the smaller name, for a stable choice).
        let (largest, most) = self
            .held
            .iter()
            .map(|(tenant, held)| (tenant, bound.measure(*held)))
            .max_by(|(a, x), (b, y)| x.cmp(y).then_with(|| b.cmp(a)))?;
        let mine = self
            .held
            .get(inserting)
            .map_or(0, |held| bound.measure(*held));
        let with_new = mine.saturating_add(bound.measure(share(size, 1)));
        let evictable = |entry: &Entry<V>| {
            (bound == Bound::Entries || entry.size > 0)
                && entry
                    .users
                    .iter()
                    .all(|user| &**user == inserting || measure(user) >= mine)
        };
        let lru_of = |tenant: &str| {
            self.entries
                .iter()
                .filter(|(_, entry)| {
                    entry.users.iter().any(|user| &**user == tenant) && evictable(entry)
                })
                .min_by_key(|(_, entry)| (entry.users.len() > 1, entry.used))
                .map(|(digest, _)| digest.clone())
        };
        if &**largest != inserting && most > with_new {
            if let Some(victim) = lru_of(largest) {
                return Some(victim);
            }
        }
        if let Some(victim) = lru_of(inserting) {
            return Some(victim);
        }
        // Neither: any entry whose users all hold at least as much, least recently used first.
        self.entries
            .iter()
            .filter(|(_, entry)| evictable(entry))
            .min_by_key(|(_, entry)| entry.used)
            .map(|(digest, _)| digest.clone())
    }

    fn remove(&mut self, digest: &Digest) {
        let Some(entry) = self.entries.remove(digest) else {
            return;
        };
        self.bytes -= entry.size;
        for user in &entry.users {
            charge(
                &mut self.held,
                user,
                share(entry.size, entry.users.len()),
                false,
            );
        }
    }

    /// The bytes of the entries kept.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many entries are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// `tenant` as the cache names it: the name already charged, or a new one.
fn user_of(held: &HashMap<Arc<str>, Held>, tenant: &str) -> Arc<str> {
    match held.get_key_value(tenant) {
        Some((user, _)) => Arc::clone(user),
        None => Arc::from(tenant),
    }
}

/// Adds `part` to `tenant`'s charge, or takes it off (a tenant charged nothing is forgotten).
fn charge(held: &mut HashMap<Arc<str>, Held>, tenant: &Arc<str>, part: Held, add: bool) {
    if add {
        let held = held.entry(Arc::clone(tenant)).or_default();
        held.entries += part.entries;
        held.bytes += part.bytes;
    } else if let Some(charged) = held.get_mut(tenant) {
        charged.entries -= part.entries;
        charged.bytes -= part.bytes;
        if charged.entries == 0 {
            held.remove(tenant);
        }
    }
}

#[cfg(test)]
#[path = "fair_cache_tests.rs"]
mod tests;
