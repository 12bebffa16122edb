//! Where records come from. Each source reads units in lane order and tags them with their
//! position.

pub mod file;
pub mod kafka;
pub mod kinesis;
