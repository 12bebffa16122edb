//! Leases on a stream's shards, KCL style: who reads which shard, and where it got to.
