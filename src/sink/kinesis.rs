//! Kinesis stream output: PutRecords with per-record failure handling.
