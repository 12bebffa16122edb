//! A Kafka topic as a destination of events or dead letters: an idempotent producer, the
//! placement of a lane's records on the topic's partitions, and the dead-letter headers.
//!
//! Sending never blocks: [`KafkaTopic::send`] hands the record to librdkafka and returns a
//! [`Delivery`] that resolves when the broker acknowledged it (or librdkafka gave up after
//! `message.timeout.ms`). The lane that sent it decides what an acknowledgement means for its
//! commit point (`pipeline.rs`).

use crate::config::{KafkaTopicPlan, Partitioning};
use crate::dlq::DeadLetter;
use crate::record::Position;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Header names of a dead letter on a Kafka topic. The value is the original record.
pub mod headers {
    pub const ERROR_CODE: &str = "auditnorm-error-code";
    pub const ERROR_STAGE: &str = "auditnorm-error-stage";
    pub const ERROR_DETAIL: &str = "auditnorm-error-detail";
    /// Where the record was read: `topic/partition@offset [record i]`, any kind of input.
    pub const POSITION: &str = "auditnorm-position";
    pub const SOURCE_TOPIC: &str = "auditnorm-source-topic";
    pub const SOURCE_PARTITION: &str = "auditnorm-source-partition";
    pub const SOURCE_OFFSET: &str = "auditnorm-source-offset";
    /// Index of the record inside a carrier that holds many (`Records[i]`).
    pub const SOURCE_INDEX: &str = "auditnorm-source-index";
    /// The source kind, when it was known (`cloudtrail`, ...).
    pub const SOURCE_KIND: &str = "auditnorm-source-kind";
    /// `true` when secrets were removed from the value.
    pub const REDACTED: &str = "auditnorm-redacted";
    pub const VERSION: &str = "auditnorm-version";
}

/// Logs librdkafka's errors and warnings, naming the client.
pub struct ClientLog {
    pub client: &'static str,
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(self.client, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_line(self.client, &error, reason);
    }
}

/// librdkafka's own log lines: warnings and worse always; below that only what the `debug`
/// property asked for (librdkafka emits debug lines only then).
pub fn log_line(client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {}
        RDKafkaLogLevel::Debug => crate::telemetry::kafka_client_log(client, level, fac, message),
        _ => {
            if once(client, format!("[{fac}] {message}")) {
                crate::telemetry::kafka_client_log(client, level, fac, message);
            }
        }
    }
}

pub fn error_line(client: &str, error: &KafkaError, reason: &str) {
    let text = format!("{error}: {reason}");
    if once(client, text.clone()) {
        crate::telemetry::kafka_client_error(client, &text, 0);
    }
}

/// Whether a line should be written: not when it repeats the previous one within 10 s
/// (librdkafka reports a down broker many times a second). How many repeats were held back is
/// said once, when a different line comes.
fn once(client: &str, line: String) -> bool {
    type Last = Option<(String, String, Instant, u64)>;
    static LAST: Mutex<Last> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((prev_client, prev, at, repeats)) = last.as_mut() {
        if *prev_client == client && *prev == line && at.elapsed() < Duration::from_secs(10) {
            *repeats += 1;
            return false;
        }
        if *repeats > 0 {
            crate::telemetry::kafka_client_error(prev_client, prev, *repeats);
        }
    }
    *last = Some((client.to_string(), line, Instant::now(), 0));
    true
}

/// Where the records of one lane go on a topic: one partition, so that the lane's order holds,
/// and the lane's name as the key.
#[derive(Debug, Clone)]
pub struct Placement {
    pub partition: i32,
    pub key: Arc<str>,
}

#[derive(Debug)]
pub enum SendError {
    /// librdkafka's queue is full: wait for deliveries and send again.
    Full,
    /// The record is larger than the producer's `message.max.bytes`: it can never be sent.
    TooLarge(String),
    /// The record cannot be sent at all (unknown partition, fatal producer state).
    Failed(String),
}

pub struct KafkaTopic {
    producer: FutureProducer<ClientLog>,
    topic: String,
    partitions: i32,
    partitioning: Partitioning,
    brokers: String,
}

impl KafkaTopic {
    /// Creates the producer and reads the topic's partition count. Blocks (a metadata
    /// request); fails when the topic does not exist or the brokers cannot be reached.
    pub fn connect(
        plan: &KafkaTopicPlan,
        client: &'static str,
        timeout: Duration,
    ) -> Result<KafkaTopic, String> {
        let brokers = plan
            .client
            .get("bootstrap.servers")
            .unwrap_or("")
            .to_string();
        let producer: FutureProducer<ClientLog> = plan
            .client
            .to_client_config()
            .create_with_context(ClientLog { client })
            .map_err(|e| format!("cannot create the {client} producer: {e}"))?;
        let partitions = partition_count(producer.client(), &plan.topic, timeout)
            .map_err(|e| format!("{client} topic `{}` on {brokers}: {e}", plan.topic))?;
        Ok(KafkaTopic {
            producer,
            topic: plan.topic.clone(),
            partitions,
            partitioning: plan.partitioning,
            brokers,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The partition of a lane's records. `ordinal`: the lane's partition and its input
    /// topic's partition count, when the lane is a Kafka partition.
    pub fn placement(
        &self,
        lane: &Arc<str>,
        ordinal: Option<(i32, i32)>,
    ) -> Result<Placement, String> {
        let partition =
            place(self.partitioning, self.partitions, lane, ordinal).ok_or_else(|| {
                format!(
                    "lane {lane} has no partition of its own on topic `{}` ({} partitions) and \
                 `partitioning: input_partition` is set; add partitions or use `auto`",
                    self.topic, self.partitions
                )
            })?;
        Ok(Placement {
            partition,
            key: lane.clone(),
        })
    }

    /// Hands one record to librdkafka.
    pub fn send(
        &self,
        place: &Placement,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Delivery, SendError> {
        let mut record = FutureRecord::to(&self.topic)
            .partition(place.partition)
            .key(place.key.as_bytes())
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        match self.producer.send_result(record) {
            Ok(f) => Ok(Delivery(f)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::Full)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                Err(SendError::TooLarge(format!(
                    "the record ({} bytes) is larger than the producer's message.max.bytes for `{}`",
                    payload.len(),
                    self.topic
                )))
            }
            Err((e, _)) => Err(SendError::Failed(format!(
                "cannot send to `{}` partition {}: {e}",
                self.topic, place.partition
            ))),
        }
    }

    /// Waits (blocking) until librdkafka has delivered or given up on everything queued.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

fn partition_count<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, String> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot read its metadata: {e}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or("the brokers did not describe it")?;
    if let Some(err) = t.error() {
        let code: RDKafkaErrorCode = err.into();
        return Err(format!("{code} (does the topic exist?)"));
    }
    match t.partitions().len() {
        0 => Err("it has no partitions (does the topic exist?)".into()),
        n => Ok(n as i32),
    }
}

/// The output partition of a lane (guarantee 1 in `pipeline.rs`); `None` when
/// `input_partition` is asked for and the partition does not exist.
pub fn place(
    how: Partitioning,
    partitions: i32,
    lane: &str,
    ordinal: Option<(i32, i32)>,
) -> Option<i32> {
    let hashed = murmur2_partition(lane.as_bytes(), partitions);
    match (how, ordinal) {
        (Partitioning::LaneHash, _) => Some(hashed),
        (Partitioning::Auto, Some((p, n))) if n <= partitions && p < partitions => Some(p),
        (Partitioning::Auto, _) => Some(hashed),
        (Partitioning::InputPartition, Some((p, _))) if p < partitions => Some(p),
        (Partitioning::InputPartition, _) => None,
    }
}

/// The acknowledgement of one record: `Ok` once the broker has it.
pub struct Delivery(DeliveryFuture);

impl Future for Delivery {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.to_string()),
            Err(_) => Err("the producer was closed before delivery".into()),
        })
    }
}

/// The headers of a dead letter on a Kafka topic.
pub fn dead_letter_headers(dl: &DeadLetter) -> OwnedHeaders {
    let position = dl.position.to_string();
    let mut h = OwnedHeaders::new_with_capacity(11)
        .insert(Header {
            key: headers::ERROR_CODE,
            value: Some(dl.error_code.as_str()),
        })
        .insert(Header {
            key: headers::ERROR_STAGE,
            value: Some(dl.stage.as_str()),
        })
        .insert(Header {
            key: headers::ERROR_DETAIL,
            value: Some(dl.detail.as_str()),
        })
        .insert(Header {
            key: headers::POSITION,
            value: Some(position.as_str()),
        });
    if let Position::Kafka {
        topic,
        partition,
        offset,
        index,
    } = &dl.position
    {
        h = h
            .insert(Header {
                key: headers::SOURCE_TOPIC,
                value: Some(&**topic),
            })
            .insert(Header {
                key: headers::SOURCE_PARTITION,
                value: Some(partition.to_string().as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_OFFSET,
                value: Some(offset.to_string().as_str()),
            });
        if let Some(i) = index {
            h = h.insert(Header {
                key: headers::SOURCE_INDEX,
                value: Some(i.to_string().as_str()),
            });
        }
    }
    if let Some(kind) = dl.source {
        h = h.insert(Header {
            key: headers::SOURCE_KIND,
            value: Some(kind.as_str()),
        });
    }
    if dl.redacted {
        h = h.insert(Header {
            key: headers::REDACTED,
            value: Some("true"),
        });
    }
    h.insert(Header {
        key: headers::VERSION,
        value: Some(dl.auditnorm_version),
    })
}

/// Kafka's murmur2 (the Java client's default partitioner), so that a lane lands where any
/// Kafka client would put its key.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// `toPositive(murmur2(key)) % partitions`, as Kafka's default partitioner computes it.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_keep_their_partition_number_only_when_every_input_partition_has_one() {
        use Partitioning::*;
        // Output at least as large as the input: p -> p.
        assert_eq!(place(Auto, 6, "in/4", Some((4, 6))), Some(4));
        assert_eq!(place(Auto, 12, "in/4", Some((4, 6))), Some(4));
        // Smaller output: every lane by hash, the same for the same lane.
        let h = place(Auto, 3, "in/4", Some((4, 6)));
        assert_eq!(h, Some(murmur2_partition(b"in/4", 3)));
        assert_eq!(
            place(Auto, 3, "in/1", Some((1, 6))),
            Some(murmur2_partition(b"in/1", 3))
        );
        assert_eq!(
            place(Auto, 3, "shard-a", None),
            Some(murmur2_partition(b"shard-a", 3))
        );
        assert_eq!(
            place(LaneHash, 6, "in/4", Some((4, 6))),
            Some(murmur2_partition(b"in/4", 6))
        );
        assert_eq!(place(InputPartition, 3, "in/4", Some((4, 6))), None);
        assert_eq!(place(InputPartition, 3, "in/2", Some((2, 6))), Some(2));
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }
}
