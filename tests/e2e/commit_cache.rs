//! The commit script caches the job's result in the same atomic step as its state writes and
//! applied record, on one Redis node (`dtee_worker::state::StateStore::commit`): driven
//! directly, against a real Redis.

use std::time::Duration;

use dtee_schemas::state::StateKey;
use dtee_schemas::Digest;
use dtee_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_caches_its_result_in_the_same_step_unless_one_is_cached() {
    use dtee_worker::state::{Commit, CommitEntry, StateStore, WriteOp};
    let env = TestEnv::new("commitcache").await;
    let store = StateStore::new(env.client.redis(), env.namespace.clone());
    let tenant = env.client.tenant().to_owned();
    let ttl = Duration::from_secs(60);
    let mut redis = env.client.redis();
    let commit = |key: StateKey, job: Digest, op: WriteOp| {
        let store = &store;
        async move {
            let entry = CommitEntry {
                key: key.clone(),
                seen_version: 0,
                op,
            };
            let cache = Some(Duration::from_secs(120));
            store
                .commit(
                    &key.hash_tag(),
                    &job,
                    &[entry],
                    b"success",
                    ttl,
                    cache,
                    1 << 20,
                )
                .await
                .unwrap()
        }
    };
    let result_ttl = |job: Digest| {
        let key = env.namespace.result_key(&job);
        let mut redis = env.client.redis();
        async move {
            let ttl: i64 = redis::cmd("TTL")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            ttl
        }
    };

    // A commit that writes: the state, the applied record and the result, in one step.
    let key = StateKey::parse(&format!("{tenant}/cc/{}/a", env.namespace)).unwrap();
    let job = Digest::of(b"job a");
    let answer = commit(key.clone(), job.clone(), WriteOp::Set(b"v".to_vec())).await;
    assert_eq!(answer, Commit::Committed { cached: true });
    assert_eq!(
        env.client.state_get(&key).await.unwrap(),
        (Some(b"v".to_vec()), 1)
    );
    assert_eq!(
        store.applied(&key.hash_tag(), &job).await.unwrap(),
        Some(b"success".to_vec())
    );
    let cached: Option<Vec<u8>> = redis::cmd("GET")
        .arg(env.namespace.result_key(&job))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(cached, Some(b"success".to_vec()));
    let lifetime = result_ttl(job.clone()).await;
    assert!(
        (100..=120).contains(&lifetime),
        "the result's own TTL: {lifetime}"
    );

    // A commit that writes nothing records and caches the same way.
    let key = StateKey::parse(&format!("{tenant}/cc/{}/b", env.namespace)).unwrap();
    let job = Digest::of(b"job b");
    assert_eq!(
        commit(key.clone(), job.clone(), WriteOp::None).await,
        Commit::Committed { cached: true }
    );
    assert!(result_ttl(job).await > 0);

    // A result cached already (another execution's) stays: the commit applies and answers that
    // it did not cache, for the worker to adopt the cached one.
    let key = StateKey::parse(&format!("{tenant}/cc/{}/c", env.namespace)).unwrap();
    let job = Digest::of(b"job c");
    let _: () = redis::cmd("SET")
        .arg(env.namespace.result_key(&job))
        .arg("earlier")
        .query_async(&mut redis)
        .await
        .unwrap();
    let answer = commit(key.clone(), job.clone(), WriteOp::Set(b"v".to_vec())).await;
    assert_eq!(answer, Commit::Committed { cached: false });
    let cached: Vec<u8> = redis::cmd("GET")
        .arg(env.namespace.result_key(&job))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(cached, b"earlier");
    assert_eq!(
        env.client.state_get(&key).await.unwrap(),
        (Some(b"v".to_vec()), 1)
    );

    // A refused commit caches nothing.
    let key = StateKey::parse(&format!("{tenant}/cc/{}/d", env.namespace)).unwrap();
    let job = Digest::of(b"job d");
    let answer = commit(
        key.clone(),
        job.clone(),
        WriteOp::Set(vec![b'x'; (1 << 20) + 1]),
    )
    .await;
    assert!(matches!(answer, Commit::TooLarge { .. }), "{answer:?}");
    assert_eq!(result_ttl(job).await, -2, "no result cached");
    env.cleanup().await;
}
