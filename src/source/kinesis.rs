//! Kinesis input: one lane per shard, leases shared with other replicas, resharding in order.
