//! Kinesis Data Streams: what the Kinesis input (`source/kinesis.rs`) and output
//! (`sink/kinesis.rs`) share: AWS clients, KPL de-aggregation, and the lease table through
//! which replicas share a stream's shards.

pub mod aws;
pub mod kpl;
pub mod lease;
