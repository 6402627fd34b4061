//! The patched AMQP client (third_party/lapin): a connection's I/O loop is a task of the async
//! runtime that opened the connection, so what happens to the connection when that runtime ends
//! is the patch's to decide.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// A connection whose runtime ended fails what is asked of it afterwards, from another runtime,
/// instead of leaving it waiting for an I/O loop that is gone (stock lapin's loop was a thread
/// of its own; without the patch's clean-up, the publish below never completes).
#[test]
fn a_connection_whose_runtime_ended_fails_instead_of_hanging() {
    let opener = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (connection, channel) = opener.block_on(async {
        let connection =
            Connection::connect(&dtee_tests::amqp_url(), ConnectionProperties::default())
                .await
                .expect("connecting to RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (connection, channel)
    });
    assert!(connection.status().connected());
    drop(opener);

    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async {
        let published = tokio::time::timeout(Duration::from_secs(20), async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    "dtee-test-nowhere".into(),
                    BasicPublishOptions::default(),
                    b"x",
                    BasicProperties::default(),
                )
                .await?;
            confirm.await
        })
        .await;
        match published {
            Ok(Err(_)) => {}
            Ok(Ok(confirmation)) => panic!("published through a dead connection: {confirmation:?}"),
            Err(_) => panic!("the publish still waits 20 s after the connection's runtime ended"),
        }
        assert!(
            !connection.status().connected(),
            "{:?}",
            connection.status()
        );
    });
}

/// A consumer channel with a body limit (`Channel::set_max_body_size`, the patch's) keeps the
/// bodies up to the limit and drops larger ones as they arrive, frame by frame, handing their
/// deliveries on with no data and the size the broker announced; the bodies that follow are
/// kept again. The worker and the keeper so refuse an oversized message by its size without
/// holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_drops_bodies_over_its_limit_and_tells_their_size() {
    use futures_util::StreamExt as _;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    use lapin::types::FieldTable;

    let connection = Connection::connect(&dtee_tests::amqp_url(), ConnectionProperties::default())
        .await
        .expect("connecting to RabbitMQ");
    let publisher = connection.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = dtee_tests::scratch_queue(&publisher, "").await;
    // Up to the limit, one over, several frames over (frame_max is 128 KiB), then small again.
    let bodies: Vec<Vec<u8>> = [10usize, 1000, 1001, 300_000, 7]
        .iter()
        .enumerate()
        .map(|(idx, len)| vec![b'a' + idx as u8; *len])
        .collect();
    for body in &bodies {
        publisher
            .basic_publish(
                "".into(),
                queue.name().as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel.set_max_body_size(Some(1000));
    let mut consumer = consumer_channel
        .basic_consume(
            queue.name().as_str().into(),
            "limited".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for body in &bodies {
        let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("delivered")
            .expect("consuming")
            .unwrap();
        assert_eq!(delivery.body_size, body.len() as u64);
        if body.len() <= 1000 {
            assert_eq!(&delivery.data, body, "kept whole");
        } else {
            assert!(
                delivery.data.is_empty(),
                "{} bytes kept",
                delivery.data.len()
            );
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
}
