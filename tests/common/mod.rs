//! Helpers shared by the Kafka end-to-end tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrail::clock::wall_ms;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Reads partition 0 of `topic` from the beginning to its end, read_committed (what a
/// flag platform sees). The end is partition EOF: under exactly-once the last offsets
/// hold transaction markers, which are never delivered.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    read_partition(brokers, topic, 0)
}

/// Reads one partition of `topic` from the beginning to its end, read_committed.
pub fn read_partition(brokers: &str, topic: &str, partition: i32) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", wall_ms()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks");
    let mut out = Vec::new();
    if high <= low {
        return out;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(m) => out.push(m.expect("reading").detach()),
        }
    }
    panic!(
        "timed out reading {topic}/{partition}: {} records, high watermark {high}",
        out.len()
    );
}

/// A header of a record, as text.
#[allow(dead_code)] // not every test binary reads headers
pub fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The engine (`guardrail run`'s loop) and its HTTP server, in this process.
#[allow(dead_code)] // not every test binary starts an engine this way
pub struct Running {
    pub metrics: prometheus::Registry,
    pub engine: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub server: tokio::task::JoinHandle<()>,
}

#[allow(dead_code)]
impl Running {
    pub async fn start(
        config: &guardrail::config::Config,
        policy: &Arc<guardrail::policy::Policy>,
    ) -> Running {
        let served = guardrail::http::start("127.0.0.1:0", policy).await.unwrap();
        let engine = guardrail::app::spawn_engine(
            &served,
            config.clone(),
            policy.clone(),
            Duration::from_secs(10),
            None,
        );
        Running {
            metrics: served.registry,
            engine,
            stop: served.stop,
            server: served.server,
        }
    }

    /// A graceful stop; the engine must end Ok.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.engine.await.unwrap().unwrap();
        let _ = self.server.await;
    }
}
