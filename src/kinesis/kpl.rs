//! KPL aggregated records: recognise and de-aggregate them (magic prefix, protobuf body,
//! MD5 trailer).
