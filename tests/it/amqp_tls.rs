//! `amqps://` against a second RabbitMQ node with a mutual-TLS listener, started by the test
//! on its own ports (`ipc_tests::tls::TlsBroker`); the default broker is left alone.

use std::time::Duration;

use anyhow::Result;
use ipc_core::ErrorKind;
use ipc_queue::{AmqpOptions, ProducerOptions, Queue, QueueConfig};
use ipc_tests::Watchdog;
use ipc_tests::amqp::amqp_url;
use ipc_tests::tls::{TestPki, TlsBroker};

#[test]
fn amqps_with_mutual_tls_works_and_untrusted_certificates_are_refused() -> Result<()> {
    // The broker tests run where IPC_AMQP_URL says a broker is (CI); this one starts its own
    // node of the same installation.
    if amqp_url("amqps").is_none() {
        return Ok(());
    }
    let _watchdog = Watchdog::new("amqps", Duration::from_secs(240));
    let pki = TestPki::generate()?;
    let Some(broker) = TlsBroker::start(&pki)? else {
        println!("amqps: skipped: rabbitmq-server is not installed");
        return Ok(());
    };
    let ca = String::from_utf8(pki.read("ca.pem")?)?;
    let trusted = AmqpOptions::new()
        .with_timeout(Duration::from_secs(20))
        .with_ca_pem(ca.clone())
        .with_client_certificate(pki.read("client.pem")?, pki.read("client.key")?);
    assert!(
        !format!("{trusted:?}").contains("PRIVATE KEY"),
        "{trusted:?}"
    );

    // Mutual TLS with the right certificates: a message goes through and comes back.
    let address = broker.url(&ipc_tests::unique_name("ipcq-tls"));
    let queue = Queue::create_with(address.as_str(), &QueueConfig::new(), &trusted)?;
    let mut producer = queue.producer::<String>(ProducerOptions::default())?;
    producer.send(&"over tls".to_owned())?;
    let mut consumer = queue.consumer::<String>()?;
    let delivery = consumer.recv_timeout(Duration::from_secs(20))?;
    assert_eq!(delivery.message(), "over tls");
    consumer.ack(&delivery)?;
    drop((producer, consumer));
    queue.delete()?;

    let refused = |options: AmqpOptions| {
        let options = options.with_timeout(Duration::from_secs(10));
        let address = broker.url(&ipc_tests::unique_name("ipcq-tls-refused"));
        Queue::create_with(address.as_str(), &QueueConfig::new(), &options).unwrap_err()
    };

    // The broker's certificate is not trusted without the test CA.
    let err = refused(
        AmqpOptions::new()
            .with_client_certificate(pki.read("client.pem")?, pki.read("client.key")?),
    );
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // A client certificate the broker does not trust (another CA), and none at all.
    let err = refused(
        AmqpOptions::new()
            .with_ca_pem(ca.clone())
            .with_client_certificate(pki.read("other-client.pem")?, pki.read("other-client.key")?),
    );
    println!("untrusted client certificate: {err}");
    assert_refused_client(&err);
    let err = refused(AmqpOptions::new().with_ca_pem(ca));
    println!("no client certificate: {err}");
    assert_refused_client(&err);
    drop(broker);
    Ok(())
}

/// The broker refused the client's certificate: its alert (TLS 1.2, or when it arrives
/// before the reset) or the reset that TLS 1.3 often leaves instead.
fn assert_refused_client(err: &ipc_core::Error) {
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("received fatal alert")
            || text.contains("refuses this client's certificate, or requires one"),
        "{err}"
    );
}

#[test]
fn amqps_without_the_tls_feature_is_refused_clearly() {
    // This package builds ipc-durable-queue with `tls`; the refusal without it is the
    // crate's own unit test. Here: an amqps URL to a port nobody listens on is a timeout
    // or a lost connection, never a plaintext attempt that hangs.
    let options = AmqpOptions::new().with_timeout(Duration::from_millis(500));
    let err = Queue::create_with(
        "amqps://guest:guest@127.0.0.1:1/%2f#nobody",
        &QueueConfig::new(),
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::PeerDied),
        "{err}"
    );
}
