use super::*;

fn digest(n: usize) -> Digest {
    Digest::of(format!("entry {n}").as_bytes())
}

#[test]
fn the_least_recently_used_entry_of_one_tenant_is_evicted() {
    let mut cache = FairCache::<u32>::new(2, usize::MAX);
    let (a, b, c) = (digest(1), digest(2), digest(3));
    cache.insert("t", a.clone(), 1, 1);
    cache.insert("t", b.clone(), 2, 1);
    // Using `a` makes `b` the least recently used.
    assert_eq!(cache.get("t", &a), Some(1));
    cache.insert("t", c.clone(), 3, 1);
    assert_eq!(cache.get("t", &b), None);
    assert_eq!(cache.get("t", &a), Some(1));
    assert_eq!(cache.get("t", &c), Some(3));
    // Inserting a digest already kept keeps it as it is, and evicts nothing.
    cache.insert("t", a.clone(), 4, 1);
    assert_eq!(cache.get("t", &a), Some(1));
    assert_eq!(cache.get("t", &c), Some(3));
}

#[test]
fn entries_are_evicted_until_the_bytes_fit() {
    let mut cache = FairCache::<u32>::new(100, 10);
    let (a, b, c, d) = (digest(1), digest(2), digest(3), digest(4));
    cache.insert("t", a.clone(), 1, 4);
    cache.insert("t", b.clone(), 2, 4);
    assert!(cache.get("t", &a).is_some());
    // 4 + 4 + 6 > 10: `b`, the least recently used, goes; then 4 + 6 fits.
    cache.insert("t", c.clone(), 3, 6);
    assert_eq!(cache.bytes(), 10);
    assert!(cache.get("t", &b).is_none());
    assert_eq!(cache.get("t", &a), Some(1));
    // An entry over the whole budget is not kept, and evicts nothing.
    cache.insert("t", d.clone(), 4, 11);
    assert!(cache.get("t", &d).is_none());
    assert_eq!(cache.bytes(), 10);
    // Inserting a digest already kept changes nothing.
    cache.insert("t", a.clone(), 5, 2);
    assert_eq!(cache.bytes(), 10);
    assert_eq!(cache.get("t", &a), Some(1));
    assert_eq!(cache.get("t", &c), Some(3));
    // A zero capacity keeps nothing.
    let mut none = FairCache::<u32>::new(0, 100);
    none.insert("t", a.clone(), 1, 1);
    assert!(none.get("t", &a).is_none());
}

#[test]
fn a_tenant_streaming_new_entries_evicts_only_its_own() {
    let mut cache = FairCache::<usize>::new(8, usize::MAX);
    // The victim's three entries, used now and then.
    for n in 0..3 {
        cache.insert("victim", digest(n), n, 1);
    }
    // A flood of 1,000 distinct entries, each used once, more recently than the victim's.
    for n in 100..1100 {
        cache.insert("flood", digest(n), n, 1);
        assert!(cache.len() <= 8);
    }
    for n in 0..3 {
        assert_eq!(
            cache.get("victim", &digest(n)),
            Some(n),
            "the victim's entry {n} was flushed by another tenant's stream"
        );
    }
    // The flood keeps the rest of the room: its five most recent entries.
    for n in 1095..1100 {
        assert_eq!(cache.get("flood", &digest(n)), Some(n));
    }
    assert_eq!(cache.len(), 8);
}

#[test]
fn the_byte_bound_is_shared_the_same_way() {
    let mut cache = FairCache::<usize>::new(1000, 100);
    cache.insert("victim", digest(0), 0, 30);
    for n in 1..200 {
        cache.insert("flood", digest(n), n, 10);
        assert!(cache.bytes() <= 100);
    }
    assert_eq!(cache.get("victim", &digest(0)), Some(0));
    // 40 bytes more would make the victim hold as much as the flood (70): it makes room from
    // its own entries first, then from the flood's.
    cache.insert("victim", digest(500), 500, 40);
    assert!(cache.bytes() <= 100);
    assert!(cache.peek(&digest(0)).is_none());
    assert_eq!(cache.get("victim", &digest(500)), Some(500));
    // From now on the flood, holding more (60 bytes against 40), makes room from its own.
    for n in 600..700 {
        cache.insert("flood", digest(n), n, 10);
        assert!(cache.bytes() <= 100);
    }
    assert_eq!(cache.get("victim", &digest(500)), Some(500));
}

#[test]
fn tenants_that_share_popular_entries_keep_their_own_against_a_stream() {
    // Three tenants use the same three kernels and one of their own each: six of eight slots.
    let mut cache = FairCache::<usize>::new(8, usize::MAX);
    for n in 0..3 {
        cache.insert("b", digest(n), n, 1);
        cache.get("d", &digest(n));
        cache.get("e", &digest(n));
    }
    for (n, tenant) in [(10, "b"), (11, "d"), (12, "e")] {
        cache.insert(tenant, digest(n), n, 1);
    }
    for n in 100..400 {
        cache.insert("flood", digest(n), n, 1);
    }
    // Each holds two entries' worth (a third of each shared one, and its own): the stream,
    // once it holds as much, evicts only its own.
    for (n, tenant) in [
        (10, "b"),
        (11, "d"),
        (12, "e"),
        (0, "b"),
        (1, "d"),
        (2, "e"),
    ] {
        assert_eq!(cache.get(tenant, &digest(n)), Some(n), "{tenant} lost {n}");
    }
    assert_eq!(cache.len(), 8);
}

#[test]
fn charges_always_add_up_to_the_entries_kept() {
    // A deterministic mix of gets and inserts by five tenants over forty digests.
    let mut cache = FairCache::<usize>::new(10, 200);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below) as usize
    };
    for _ in 0..20_000 {
        let tenant = format!("t{}", next(5));
        let n = next(40);
        if next(3) == 0 {
            cache.insert(&tenant, digest(n), n, next(60));
        } else {
            cache.get(&tenant, &digest(n));
        }
        assert!(cache.len() <= 10 && cache.bytes() <= 200);
        let mut expected: HashMap<Arc<str>, Held> = HashMap::new();
        for entry in cache.entries.values() {
            let part = share(entry.size, entry.users.len());
            for user in &entry.users {
                let held = expected.entry(Arc::clone(user)).or_default();
                held.entries += part.entries;
                held.bytes += part.bytes;
            }
        }
        assert_eq!(expected.len(), cache.held.len());
        for (tenant, held) in &expected {
            let charged = cache.held[tenant];
            assert_eq!((charged.entries, charged.bytes), (held.entries, held.bytes));
        }
    }
}

#[test]
fn a_tenant_holding_more_than_the_others_is_the_one_that_shrinks() {
    let mut cache = FairCache::<usize>::new(6, usize::MAX);
    for n in 0..5 {
        cache.insert("big", digest(n), n, 1);
    }
    cache.insert("small", digest(10), 10, 1);
    // Full: a new entry of `small` evicts `big`'s least recently used (entry 0), though
    // `small`'s entry is older than `big`'s others.
    cache.insert("small", digest(11), 11, 1);
    assert!(cache.get("big", &digest(0)).is_none());
    assert_eq!(cache.get("small", &digest(10)), Some(10));
    assert_eq!(cache.get("big", &digest(1)), Some(1));
}

#[test]
fn an_entry_another_tenant_uses_is_charged_to_both_and_evicted_last() {
    let mut cache = FairCache::<usize>::new(4, usize::MAX);
    cache.insert("flood", digest(0), 0, 1);
    // The victim uses the flood's entry: shared from now on.
    assert_eq!(cache.get("victim", &digest(0)), Some(0));
    for n in 1..100 {
        cache.insert("flood", digest(n), n, 1);
    }
    // The flood evicts what it alone uses before what it shares, however old.
    assert_eq!(cache.get("victim", &digest(0)), Some(0));
    // The charges come off with the entries: nothing is charged once all are gone.
    let mut small = FairCache::<usize>::new(1, usize::MAX);
    small.insert("a", digest(0), 0, 1);
    small.get("b", &digest(0));
    small.insert("c", digest(1), 1, 1);
    assert!(small.get("a", &digest(0)).is_none());
    assert_eq!(small.held.len(), 1);
    assert_eq!(small.held["c"].entries, PARTS);
}

#[test]
fn an_entry_is_charged_to_at_most_max_users_tenants() {
    let mut cache = FairCache::<usize>::new(4, usize::MAX);
    cache.insert("t0", digest(0), 0, 7);
    for n in 1..10 {
        cache.get(&format!("t{n}"), &digest(0));
    }
    assert_eq!(cache.held.len(), MAX_USERS);
    assert!(cache
        .held
        .values()
        .all(|held| held.bytes == 7 * PARTS / MAX_USERS));
}

#[test]
fn two_accounts_sharing_everything_cannot_flush_a_third_tenants_entries() {
    let mut cache = FairCache::<usize>::new(8, usize::MAX);
    for n in 0..3 {
        cache.insert("victim", digest(n), n, 1);
    }
    // Both attacking accounts use the victim's entries, so that none is the victim's alone...
    for n in 0..3 {
        cache.get("a1", &digest(n));
        cache.get("a2", &digest(n));
    }
    // ...and each new entry of one is used at once by the other, so that neither ever holds
    // an entry alone.
    for n in 100..400 {
        let (inserter, helper) = if n % 2 == 0 {
            ("a1", "a2")
        } else {
            ("a2", "a1")
        };
        cache.insert(inserter, digest(n), n, 1);
        cache.get(helper, &digest(n));
    }
    for n in 0..3 {
        assert!(
            cache.peek(&digest(n)).is_some(),
            "the victim's entry {n} was flushed by two colluding accounts"
        );
    }
}

#[test]
fn a_digest_inserted_again_keeps_its_users() {
    let mut cache = FairCache::<usize>::new(2, usize::MAX);
    cache.insert("victim", digest(0), 0, 1);
    // Another tenant compiles the same kernel at the same time and inserts it too: the victim
    // keeps its part of the entry, so the other tenant's stream cannot evict it as its own.
    cache.insert("flood", digest(0), 0, 1);
    for n in 1..50 {
        cache.insert("flood", digest(n), n, 1);
    }
    assert_eq!(cache.get("victim", &digest(0)), Some(0));
}

#[test]
fn entries_that_free_no_bytes_are_not_evicted_for_the_byte_bound() {
    let mut cache = FairCache::<usize>::new(100, 10);
    // Refusals kept at size 0 (as the GPU cache keeps them), and one entry with bytes.
    for n in 0..5 {
        cache.insert("t", digest(n), n, 0);
    }
    cache.insert("t", digest(10), 10, 8);
    cache.insert("t", digest(11), 11, 8);
    assert_eq!(cache.bytes(), 8);
    for n in 0..5 {
        assert!(
            cache.peek(&digest(n)).is_some(),
            "refusal {n} evicted for bytes"
        );
    }
    assert!(cache.peek(&digest(10)).is_none() && cache.peek(&digest(11)).is_some());
}
