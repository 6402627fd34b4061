//! A dead-lettered job's answer names the broker's actual reason (`x-death`), not always the
//! delivery limit: here the message expired before any worker took it.

use std::time::Duration;

use dtee_schemas::protocol;
use dtee_schemas::ErrorCode;
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::{TestEnv, RESULT_TIMEOUT};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_is_answered_with_the_reason_expired() {
    let env = TestEnv::new("dead-letter-expired").await;
    // Declare the topology, then leave the queue without a consumer.
    env.start_worker().await.shutdown().await.unwrap();
    let dead = env.namespace.dead_letter_queue();

    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"late"), output("out", 64)];
    let id = dtee_schemas::job_id(&spec).unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    // The job as the client sends it, with a 50 ms message TTL.
    let channel = env.client.connection().create_channel().await.unwrap();
    let properties = BasicProperties::default()
        .with_user_id(env.client.tenant().into())
        .with_content_type(protocol::CONTENT_TYPE_JSON.into())
        .with_message_id(id.as_str().into())
        .with_type(protocol::JOB_MESSAGE_TYPE.into())
        .with_delivery_mode(2)
        .with_expiration("50".into());
    channel
        .basic_publish(
            env.namespace.jobs_exchange().into(),
            protocol::job_routing_key(&spec).as_str().into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .unwrap();
    for _ in 0..200 {
        if env.queue_depth_of(&dead).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.queue_depth_of(&dead).await, 1, "the message expired");

    let worker = env.start_worker().await;
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(result.error_code(), Some(ErrorCode::DeadLettered));
    let message = &result.error.as_ref().unwrap().message;
    assert!(message.contains("expired"), "{message}");
    assert!(!message.contains("delivery limit"), "{message}");
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
