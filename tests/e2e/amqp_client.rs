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
