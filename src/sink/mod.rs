//! Where events and dead letters go.

pub mod file;
pub mod kafka;
pub mod kinesis;
