//! The commit script caches the job's result in the same atomic step as its state writes and
//! applied record, on one Redis node (`dtee_worker::state::StateStore::commit`): driven
//! directly, against a real Redis. On a Redis Cluster (`deploy/local/test-cluster.sh` runs
//! these tests there too) the result key lies in another slot: Redis refuses the script whole
//! (`CROSSSLOT`), and the commit is made without caching, for the worker to cache after it.

use std::time::Duration;

use dtee_schemas::state::StateKey;
use dtee_schemas::Digest;
use dtee_tests::TestEnv;
use dtee_worker::state::{Commit, CommitEntry, StateStore, WriteOp};

/// Whether these tests run against a Redis Cluster.
fn cluster() -> bool {
    dtee_net::redis_conn::is_cluster_url(&dtee_tests::redis_url())
}

/// Commits `ops` (each key seen at version 0) for `job`, recording `b"success"`, asked to cache
/// the result for 120 s.
async fn commit(store: &StateStore, job: &Digest, ops: Vec<(StateKey, WriteOp)>) -> Commit {
    let tag = ops[0].0.hash_tag();
    let entries: Vec<CommitEntry> = ops
        .into_iter()
        .map(|(key, op)| CommitEntry {
            key,
            seen_version: 0,
            op,
        })
        .collect();
    let (applied, cache) = (Duration::from_secs(60), Some(Duration::from_secs(120)));
    store
        .commit(&tag, job, &entries, b"success", applied, cache, 1 << 20)
        .await
        .expect("commit script")
}

/// The cached result of `job` and its remaining lifetime in seconds (-2: no key).
async fn cached(env: &TestEnv, job: &Digest) -> (Option<Vec<u8>>, i64) {
    let key = env.namespace.result_key(job);
    let mut redis = env.client.redis();
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    (value, ttl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_caches_its_result_in_the_same_step_unless_one_is_cached() {
    let env = TestEnv::new("commitcache").await;
    let store = StateStore::new(env.client.redis(), env.namespace.clone());
    let tenant = env.client.tenant().to_owned();
    let key =
        |name: &str| StateKey::parse(&format!("{tenant}/cc/{}/{name}", env.namespace)).unwrap();
    // One node: cached in the commit. A cluster: refused as crossing slots, committed without.
    let caches = !cluster();

    // A commit that writes: the state, the applied record and the result, in one step.
    let job = Digest::of(b"job a");
    let answer = commit(&store, &job, vec![(key("a"), WriteOp::Set(b"v".to_vec()))]).await;
    assert_eq!(answer, Commit::Committed { cached: caches });
    assert_eq!(
        env.client.state_get(&key("a")).await.unwrap(),
        (Some(b"v".to_vec()), 1)
    );
    let applied = store.applied(&key("a").hash_tag(), &job).await.unwrap();
    assert_eq!(applied, Some(b"success".to_vec()));
    let (value, lifetime) = cached(&env, &job).await;
    if caches {
        assert_eq!(value, Some(b"success".to_vec()));
        assert!(
            (100..=120).contains(&lifetime),
            "the result's own TTL: {lifetime}"
        );
    } else {
        assert_eq!((value, lifetime), (None, -2), "nothing cached across slots");
    }

    // Several bindings, one appended, one only checked: all applied, the result cached once.
    let job = Digest::of(b"job b");
    let ops = vec![
        (key("b1"), WriteOp::Set(b"one".to_vec())),
        (key("b2"), WriteOp::Append(b"two".to_vec())),
        (key("b3"), WriteOp::None),
    ];
    assert_eq!(
        commit(&store, &job, ops).await,
        Commit::Committed { cached: caches }
    );
    assert_eq!(
        env.client.state_get(&key("b1")).await.unwrap(),
        (Some(b"one".to_vec()), 1)
    );
    assert_eq!(
        env.client.state_get(&key("b2")).await.unwrap(),
        (Some(b"two".to_vec()), 1)
    );
    assert_eq!(env.client.state_get(&key("b3")).await.unwrap(), (None, 0));
    assert_eq!(cached(&env, &job).await.0.is_some(), caches);

    // A commit that writes nothing records and caches the same way.
    let job = Digest::of(b"job c");
    let answer = commit(&store, &job, vec![(key("c"), WriteOp::None)]).await;
    assert_eq!(answer, Commit::Committed { cached: caches });
    assert_eq!(cached(&env, &job).await.1 > 0, caches);

    // A result cached already (another execution's) stays: the commit applies and answers that
    // it did not cache, for the worker to adopt the cached one.
    let job = Digest::of(b"job d");
    let _: () = redis::cmd("SET")
        .arg(env.namespace.result_key(&job))
        .arg("earlier")
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let answer = commit(&store, &job, vec![(key("d"), WriteOp::Set(b"v".to_vec()))]).await;
    assert_eq!(answer, Commit::Committed { cached: false });
    assert_eq!(cached(&env, &job).await.0, Some(b"earlier".to_vec()));
    assert_eq!(
        env.client.state_get(&key("d")).await.unwrap(),
        (Some(b"v".to_vec()), 1)
    );

    // A refused commit caches nothing.
    let job = Digest::of(b"job e");
    let large = WriteOp::Set(vec![b'x'; (1 << 20) + 1]);
    let answer = commit(&store, &job, vec![(key("e"), large)]).await;
    assert!(matches!(answer, Commit::TooLarge { .. }), "{answer:?}");
    assert_eq!(cached(&env, &job).await, (None, -2), "no result cached");
    env.cleanup().await;
}
