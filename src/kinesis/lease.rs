//! Leases on a stream's shards, KCL style: who reads which shard, and where it got to.
//!
//! One lease per shard: its owner (a worker id), a lease counter, the checkpoint (the sequence
//! number after which reading resumes, or `SHARD_END`) and the parent shards. Every write is
//! conditional on the counter the writer last saw (and, for the owner's own writes, on still
//! being the owner), and bumps it; so the counter is both the lock and the heartbeat:
//! - the owner renews by bumping it; a lease whose counter a worker has seen standing still
//!   for the lease duration (its own clock, never another machine's) is expired and may be
//!   taken;
//! - a worker that finds its conditional write refused has lost the lease (taken over after a
//!   pause, or stolen for balance) and stops its lane at once: the new owner reads again
//!   from the last checkpoint, so records after it may be delivered twice, never lost.
//!
//! The store is a closed set: a DynamoDB table (several replicas share a stream) or a file
//! (one replica; the same rules, kept in one JSON document).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The checkpoint value of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";
/// The checkpoint value of a lease no one has read from yet.
pub const START: &str = "START";

/// Where reading a shard resumes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// Nothing read yet: the configured starting position.
    Start,
    /// After this sequence number.
    After(String),
    /// The shard is closed and every record in it was acknowledged.
    End,
}

impl Checkpoint {
    fn as_str(&self) -> &str {
        match self {
            Checkpoint::Start => START,
            Checkpoint::After(s) => s,
            Checkpoint::End => SHARD_END,
        }
    }

    fn parse(s: &str) -> Checkpoint {
        match s {
            SHARD_END => Checkpoint::End,
            s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                Checkpoint::After(s.to_string())
            }
            // KCL writes TRIM_HORIZON / LATEST / AT_TIMESTAMP for a new lease.
            _ => Checkpoint::Start,
        }
    }
}

/// One shard's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub shard: String,
    #[serde(default)]
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub parents: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease table {table}: {op}: {reason}; check the table name, the region/endpoint and that the credentials may use DynamoDB (dynamodb:CreateTable, DescribeTable, Scan, PutItem, UpdateItem)")]
    Dynamo {
        table: String,
        op: &'static str,
        reason: String,
    },
    #[error("checkpoint file {path}: {reason}; check that the directory exists and is writable")]
    File { path: String, reason: String },
    #[error("lease table {table}: item {shard} is malformed: {reason}; delete the item so that it is created again")]
    Malformed {
        table: String,
        shard: String,
        reason: String,
    },
}

/// Where leases live.
pub enum LeaseStore {
    Dynamo(DynamoLeases),
    /// One replica only; also an in-memory store when `path` is `None` (tests).
    File(FileLeases),
}

/// The result of a conditional write: the lease as written, or refused because the lease
/// changed since it was read (another worker took it, or it was not ours any more).
pub type Written = Option<Lease>;

impl LeaseStore {
    pub fn name(&self) -> String {
        match self {
            LeaseStore::Dynamo(d) => format!("DynamoDB table {}", d.table),
            LeaseStore::File(f) => match &f.path {
                Some(p) => format!("checkpoint file {}", p.display()),
                None => "in-memory leases".into(),
            },
        }
    }

    /// Creates the table (or file) when it does not exist yet.
    pub async fn prepare(&self) -> Result<(), LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.prepare().await,
            LeaseStore::File(f) => f.load(),
        }
    }

    /// Every lease, read consistently.
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.list().await,
            LeaseStore::File(f) => Ok(f.lock().values().cloned().collect()),
        }
    }

    /// Adds a lease for a shard found in the stream, unless it has one. True when created.
    pub async fn create(&self, shard: &str, parents: &[String]) -> Result<bool, LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.create(shard, parents).await,
            LeaseStore::File(f) => f
                .update(shard, |m| {
                    if m.contains_key(shard) {
                        return None;
                    }
                    let l = Lease {
                        shard: shard.to_string(),
                        owner: None,
                        counter: 0,
                        checkpoint: Checkpoint::Start,
                        parents: parents.to_vec(),
                    };
                    m.insert(shard.to_string(), l.clone());
                    Some(l)
                })
                .map(|w| w.is_some()),
        }
    }

    /// Takes `lease` (as last read) for `owner`: expired, unowned or stolen.
    pub async fn take(&self, lease: &Lease, owner: &str) -> Result<Written, LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.take(lease, owner).await,
            LeaseStore::File(f) => f.write(lease, false, |l| l.owner = Some(owner.to_string())),
        }
    }

    /// Bumps the counter of a lease we own.
    pub async fn renew(&self, lease: &Lease) -> Result<Written, LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.write_owned(lease, None, false).await,
            LeaseStore::File(f) => f.write(lease, true, |_| {}),
        }
    }

    /// Stores a checkpoint of a lease we own (and renews it).
    pub async fn checkpoint(&self, lease: &Lease, cp: &Checkpoint) -> Result<Written, LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.write_owned(lease, Some(cp), false).await,
            LeaseStore::File(f) => f.write(lease, true, |l| l.checkpoint = cp.clone()),
        }
    }

    /// Lets a lease we own go (at shutdown), so another worker takes it without waiting.
    pub async fn release(&self, lease: &Lease) -> Result<Written, LeaseError> {
        match self {
            LeaseStore::Dynamo(d) => d.write_owned(lease, None, true).await,
            LeaseStore::File(f) => f.write(lease, true, |l| l.owner = None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Which leases to take: pure, so that it is unit-tested.
// ---------------------------------------------------------------------------------------------

/// What a worker has seen of each lease's counter, on its own clock.
#[derive(Debug, Default)]
pub struct Observed {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observed {
    /// Records a listing made at `now`.
    pub fn update(&mut self, leases: &[Lease], now: Instant) {
        for l in leases {
            let unchanged = self
                .seen
                .get(&l.shard)
                .is_some_and(|(c, _)| *c == l.counter);
            if !unchanged {
                self.seen.insert(l.shard.clone(), (l.counter, now));
            }
        }
        self.seen
            .retain(|s, _| leases.iter().any(|l| l.shard == *s));
    }

    /// The lease is unowned, or its counter has stood still for `duration`.
    pub fn expired(&self, l: &Lease, now: Instant, duration: Duration) -> bool {
        if l.owner.is_none() {
            return true;
        }
        match self.seen.get(&l.shard) {
            Some((c, at)) if *c == l.counter => now.duration_since(*at) >= duration,
            _ => false,
        }
    }
}

/// A lease that may be read now: not finished, and every parent finished (or gone from the
/// table: trimmed away). The KCL rule that keeps order across splits and merges.
pub fn readable(l: &Lease, by_shard: &HashMap<&str, &Lease>) -> bool {
    l.checkpoint != Checkpoint::End
        && l.parents.iter().all(|p| {
            by_shard
                .get(p.as_str())
                .is_none_or(|pl| pl.checkpoint == Checkpoint::End)
        })
}

/// The leases `me` should take in this round: expired ones up to its fair share
/// (`ceil(readable / workers)`), or, when none is expired, one stolen from the most loaded
/// worker if that one holds more than its share. Leases held by `me` (in the table) count as
/// its own.
pub fn to_take(
    leases: &[Lease],
    me: &str,
    observed: &Observed,
    now: Instant,
    duration: Duration,
) -> Vec<Lease> {
    let by_shard: HashMap<&str, &Lease> = leases.iter().map(|l| (l.shard.as_str(), l)).collect();
    let work: Vec<&Lease> = leases.iter().filter(|l| readable(l, &by_shard)).collect();
    if work.is_empty() {
        return Vec::new();
    }
    // Live holdings per worker (me included, even with nothing).
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    held.insert(me, 0);
    for l in &work {
        if let Some(o) = &l.owner {
            if o == me || !observed.expired(l, now, duration) {
                *held.entry(o.as_str()).or_default() += 1;
            }
        }
    }
    let target = work.len().div_ceil(held.len());
    let mine = held[me];
    if mine >= target {
        return Vec::new();
    }
    let mut expired: Vec<&Lease> = work
        .iter()
        .copied()
        .filter(|l| l.owner.as_deref() != Some(me) && observed.expired(l, now, duration))
        .collect();
    // Oldest shards first: parents before their children's siblings, stable across workers.
    expired.sort_by(|a, b| a.shard.cmp(&b.shard));
    if !expired.is_empty() {
        return expired.into_iter().take(target - mine).cloned().collect();
    }
    // Steal one lease from the most loaded worker, if it has more than its share.
    let (victim, n) = held
        .iter()
        .filter(|(w, _)| **w != me)
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(w, n)| (*w, *n))
        .unwrap_or((me, 0));
    if victim == me || n <= target {
        return Vec::new();
    }
    work.iter()
        .filter(|l| l.owner.as_deref() == Some(victim))
        .max_by(|a, b| a.shard.cmp(&b.shard))
        .map(|l| vec![(*l).clone()])
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// DynamoDB
// ---------------------------------------------------------------------------------------------

/// Attribute names, as KCL names them, so that an operator who knows KCL tables can read ours.
mod attr {
    pub const KEY: &str = "leaseKey";
    pub const OWNER: &str = "leaseOwner";
    pub const COUNTER: &str = "leaseCounter";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const PARENTS: &str = "parentShardId";
    pub const SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
}

pub struct DynamoLeases {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl DynamoLeases {
    fn err(&self, op: &'static str, reason: String) -> LeaseError {
        LeaseError::Dynamo {
            table: self.table.clone(),
            op,
            reason,
        }
    }

    async fn prepare(&self) -> Result<(), LeaseError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let status = match described {
            Ok(d) => d.table().and_then(|t| t.table_status().cloned()),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                if !not_found {
                    return Err(self.err("DescribeTable", describe(&e)));
                }
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(attr::KEY)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(|e| self.err("CreateTable", e.to_string()))?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(attr::KEY)
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(|e| self.err("CreateTable", e.to_string()))?,
                    )
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
                    .await;
                match created {
                    Ok(c) => c
                        .table_description()
                        .and_then(|t| t.table_status().cloned()),
                    // Another replica created it meanwhile.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_in_use_exception()) =>
                    {
                        None
                    }
                    Err(e) => return Err(self.err("CreateTable", describe(&e))),
                }
            }
        };
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        for _ in 0..120 {
            let d = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| self.err("DescribeTable", describe(&e)))?;
            if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(self.err(
            "DescribeTable",
            "the table did not become ACTIVE within 60s".into(),
        ))
    }

    fn parse(&self, item: &HashMap<String, AttributeValue>) -> Result<Lease, LeaseError> {
        let shard = item
            .get(attr::KEY)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default();
        let bad = |reason: &str| LeaseError::Malformed {
            table: self.table.clone(),
            shard: shard.clone(),
            reason: reason.into(),
        };
        if shard.is_empty() {
            return Err(bad("no leaseKey"));
        }
        let counter = item
            .get(attr::COUNTER)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("leaseCounter is missing or not a number"))?;
        let owner = item
            .get(attr::OWNER)
            .and_then(|v| v.as_s().ok())
            .filter(|o| !o.is_empty())
            .cloned();
        let checkpoint = item
            .get(attr::CHECKPOINT)
            .and_then(|v| v.as_s().ok())
            .map(|c| Checkpoint::parse(c))
            .unwrap_or(Checkpoint::Start);
        let mut parents = match item.get(attr::PARENTS) {
            Some(AttributeValue::Ss(v)) => v.clone(),
            Some(AttributeValue::S(v)) => vec![v.clone()],
            _ => Vec::new(),
        };
        parents.sort();
        Ok(Lease {
            shard,
            owner,
            counter,
            checkpoint,
            parents,
        })
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err("Scan", describe(&e)))?;
            for item in page.items() {
                out.push(self.parse(item)?);
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn create(&self, shard: &str, parents: &[String]) -> Result<bool, LeaseError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(attr::KEY, s(shard))
            .item(attr::COUNTER, n(0))
            .item(attr::CHECKPOINT, s(START))
            .item(attr::SWITCHES, n(0))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::KEY);
        if !parents.is_empty() {
            req = req.item(attr::PARENTS, AttributeValue::Ss(parents.to_vec()));
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err("PutItem", describe(&e))),
        }
    }

    async fn take(&self, lease: &Lease, owner: &str) -> Result<Written, LeaseError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::KEY, s(&lease.shard))
            .update_expression("SET #o = :o, #c = #c + :one, #w = if_not_exists(#w, :zero) + :one")
            .condition_expression("#c = :c")
            .expression_attribute_names("#o", attr::OWNER)
            .expression_attribute_names("#c", attr::COUNTER)
            .expression_attribute_names("#w", attr::SWITCHES)
            .expression_attribute_values(":o", s(owner))
            .expression_attribute_values(":c", n(lease.counter))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":zero", n(0))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        self.written("UpdateItem (take)", r)
    }

    /// A write by the owner: renew, checkpoint, or release.
    async fn write_owned(
        &self,
        lease: &Lease,
        cp: Option<&Checkpoint>,
        release: bool,
    ) -> Result<Written, LeaseError> {
        let Some(owner) = &lease.owner else {
            return Ok(None);
        };
        let mut set = vec!["#c = #c + :one"];
        if cp.is_some() {
            set.push("#cp = :cp");
            set.push("#w = :zero");
        }
        let mut expr = format!("SET {}", set.join(", "));
        if release {
            expr.push_str(" REMOVE #o");
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::KEY, s(&lease.shard))
            .update_expression(expr)
            .condition_expression("#c = :c AND #o = :o")
            .expression_attribute_names("#o", attr::OWNER)
            .expression_attribute_names("#c", attr::COUNTER)
            .expression_attribute_values(":o", s(owner))
            .expression_attribute_values(":c", n(lease.counter))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew);
        if let Some(cp) = cp {
            req = req
                .expression_attribute_names("#cp", attr::CHECKPOINT)
                .expression_attribute_names("#w", attr::SWITCHES)
                .expression_attribute_values(":cp", s(cp.as_str()))
                .expression_attribute_values(":zero", n(0));
        }
        let r = req.send().await;
        self.written("UpdateItem", r)
    }

    /// The outcome of a conditional UpdateItem: the lease as written, or `None` when the
    /// condition refused it.
    fn written(
        &self,
        op: &'static str,
        r: Result<
            aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
            aws_sdk_dynamodb::error::SdkError<
                aws_sdk_dynamodb::operation::update_item::UpdateItemError,
                aws_sdk_dynamodb::config::http::HttpResponse,
            >,
        >,
    ) -> Result<Written, LeaseError> {
        match r {
            Ok(o) => match o.attributes {
                Some(item) => self.parse(&item).map(Some),
                None => Err(self.err(op, "no attributes returned".into())),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(op, describe(&e))),
        }
    }
}

fn describe<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    crate::kinesis::aws::describe(e)
}

// ---------------------------------------------------------------------------------------------
// File
// ---------------------------------------------------------------------------------------------

/// Leases in one JSON file, rewritten (write + rename) on every change. For one replica: two
/// processes sharing the file would overwrite each other's writes.
pub struct FileLeases {
    pub path: Option<PathBuf>,
    leases: Mutex<BTreeMap<String, Lease>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileDoc {
    leases: Vec<Lease>,
}

impl FileLeases {
    pub fn new(path: Option<PathBuf>) -> FileLeases {
        FileLeases {
            path,
            leases: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, reason: String) -> LeaseError {
        LeaseError::File {
            path: self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason,
        }
    }

    fn load(&self) -> Result<(), LeaseError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(e.to_string())),
        };
        let doc: FileDoc = serde_json::from_str(&text)
            .map_err(|e| self.err(format!("not a checkpoint file: {e}")))?;
        let mut m = self.lock();
        m.clear();
        for mut l in doc.leases {
            // One replica: whoever owned a lease before a restart is gone.
            l.owner = None;
            m.insert(l.shard.clone(), l);
        }
        Ok(())
    }

    fn save(&self, m: &BTreeMap<String, Lease>) -> Result<(), LeaseError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let doc = FileDoc {
            leases: m.values().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| self.err(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e.to_string()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| self.err(e.to_string()))
    }

    fn update(
        &self,
        shard: &str,
        f: impl FnOnce(&mut BTreeMap<String, Lease>) -> Option<Lease>,
    ) -> Result<Written, LeaseError> {
        let mut m = self.lock();
        let before = m.get(shard).cloned();
        let w = f(&mut m);
        if w.is_some() {
            if let Err(e) = self.save(&m) {
                match before {
                    Some(b) => m.insert(shard.to_string(), b),
                    None => m.remove(shard),
                };
                return Err(e);
            }
        }
        Ok(w)
    }

    fn write(
        &self,
        lease: &Lease,
        owned: bool,
        f: impl FnOnce(&mut Lease),
    ) -> Result<Written, LeaseError> {
        self.update(&lease.shard, |m| {
            let cur = m.get_mut(&lease.shard)?;
            if cur.counter != lease.counter || (owned && cur.owner != lease.owner) {
                return None;
            }
            f(cur);
            cur.counter += 1;
            Some(cur.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, counter: u64, cp: Checkpoint) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(Into::into),
            counter,
            checkpoint: cp,
            parents: Vec::new(),
        }
    }

    const D: Duration = Duration::from_secs(10);

    #[test]
    fn a_lone_worker_takes_every_unowned_lease() {
        let leases: Vec<Lease> = (0..4)
            .map(|i| lease(&format!("shard-{i}"), None, 0, Checkpoint::Start))
            .collect();
        let mut o = Observed::default();
        let now = Instant::now();
        o.update(&leases, now);
        let t = to_take(&leases, "a", &o, now, D);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_live_owner_keeps_its_leases_until_they_expire() {
        let leases: Vec<Lease> = (0..2)
            .map(|i| lease(&format!("s{i}"), Some("b"), 5, Checkpoint::Start))
            .collect();
        let mut o = Observed::default();
        let t0 = Instant::now();
        o.update(&leases, t0);
        // b holds 2, a holds 0: the share is 1 each, but nothing is expired: steal one.
        let t = to_take(&leases, "a", &o, t0, D);
        assert_eq!(t.len(), 1, "one lease is stolen for balance");
        // After the lease duration with no counter change, both are expired and b no longer
        // counts as a worker: a takes both.
        let later = t0 + D + Duration::from_millis(1);
        let t = to_take(&leases, "a", &o, later, D);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_renewed_lease_is_not_expired() {
        let mut leases = vec![lease("s0", Some("b"), 1, Checkpoint::Start)];
        let mut o = Observed::default();
        let t0 = Instant::now();
        o.update(&leases, t0);
        leases[0].counter = 2;
        o.update(&leases, t0 + D);
        assert!(!o.expired(&leases[0], t0 + D + Duration::from_secs(1), D));
        assert!(o.expired(&leases[0], t0 + D + D, D));
    }

    #[test]
    fn balanced_workers_steal_nothing() {
        let leases = vec![
            lease("s0", Some("a"), 1, Checkpoint::Start),
            lease("s1", Some("b"), 1, Checkpoint::Start),
            lease("s2", Some("b"), 1, Checkpoint::Start),
        ];
        let mut o = Observed::default();
        let now = Instant::now();
        o.update(&leases, now);
        // share = ceil(3/2) = 2; b holds 2 (not more than its share), a holds 1.
        assert!(to_take(&leases, "a", &o, now, D).is_empty());
        assert!(to_take(&leases, "b", &o, now, D).is_empty());
    }

    #[test]
    fn children_wait_for_every_parent_to_end() {
        let mut child = lease("s2", None, 0, Checkpoint::Start);
        child.parents = vec!["s0".into(), "s1".into()];
        let mut leases = vec![
            lease("s0", Some("a"), 3, Checkpoint::End),
            lease("s1", Some("a"), 3, Checkpoint::After("42".into())),
            child,
        ];
        let mut o = Observed::default();
        let now = Instant::now();
        o.update(&leases, now);
        let t = to_take(&leases, "b", &o, now, D);
        assert!(t.iter().all(|l| l.shard != "s2"), "{t:?}");
        leases[1].checkpoint = Checkpoint::End;
        let t = to_take(&leases, "b", &o, now, D);
        assert_eq!(
            t.iter().map(|l| l.shard.as_str()).collect::<Vec<_>>(),
            ["s2"]
        );
    }

    #[test]
    fn a_trimmed_parent_does_not_block_its_child() {
        let mut child = lease("s9", None, 0, Checkpoint::Start);
        child.parents = vec!["gone".into()];
        let leases = vec![child];
        let o = Observed::default();
        assert_eq!(to_take(&leases, "a", &o, Instant::now(), D).len(), 1);
    }

    #[test]
    fn checkpoint_values_round_trip() {
        for c in [
            Checkpoint::Start,
            Checkpoint::End,
            Checkpoint::After("49590338271490256608559692538361571095921575989136588898".into()),
        ] {
            assert_eq!(Checkpoint::parse(c.as_str()), c);
        }
        assert_eq!(Checkpoint::parse("TRIM_HORIZON"), Checkpoint::Start);
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn conditional_writes_refuse_a_stale_counter_or_a_lost_owner() {
        block(async {
            let st = LeaseStore::File(FileLeases::new(None));
            assert!(st.create("s0", &[]).await.unwrap());
            assert!(!st.create("s0", &[]).await.unwrap(), "created once");
            let l = st.list().await.unwrap().remove(0);
            let a = st.take(&l, "a").await.unwrap().expect("a takes it");
            assert_eq!(a.counter, 1);
            // b read the lease before a took it: its take is refused.
            assert!(st.take(&l, "b").await.unwrap().is_none());
            let a = st.renew(&a).await.unwrap().expect("renewed");
            let b = st.take(&a, "b").await.unwrap().expect("b steals it");
            // a's next write is refused: it lost the lease.
            assert!(st
                .checkpoint(&a, &Checkpoint::After("7".into()))
                .await
                .unwrap()
                .is_none());
            let b = st
                .checkpoint(&b, &Checkpoint::After("7".into()))
                .await
                .unwrap()
                .expect("owner checkpoints");
            assert_eq!(b.checkpoint, Checkpoint::After("7".into()));
            let b = st.release(&b).await.unwrap().expect("released");
            assert_eq!(b.owner, None);
        });
    }

    #[test]
    fn the_file_store_survives_a_restart_without_owners() {
        let dir = std::env::temp_dir().join(format!("auditnorm-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A directory that does not exist yet is created.
        let path = dir.join("volume/checkpoints.json");
        let _ = std::fs::remove_file(&path);
        block(async {
            let st = LeaseStore::File(FileLeases::new(Some(path.clone())));
            st.prepare().await.unwrap();
            st.create("s0", &["p".to_string()]).await.unwrap();
            let l = st.list().await.unwrap().remove(0);
            let l = st.take(&l, "a").await.unwrap().unwrap();
            st.checkpoint(&l, &Checkpoint::After("123".into()))
                .await
                .unwrap()
                .unwrap();
            let again = LeaseStore::File(FileLeases::new(Some(path.clone())));
            again.prepare().await.unwrap();
            let l = again.list().await.unwrap().remove(0);
            assert_eq!(l.checkpoint, Checkpoint::After("123".into()));
            assert_eq!(l.parents, ["p"]);
            assert_eq!(l.owner, None);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A worker in a simulation: what it holds, what it has seen.
    struct Sim {
        id: String,
        held: BTreeMap<String, Lease>,
        observed: Observed,
        alive: bool,
    }

    /// One round of a worker, as the Kinesis driver does it: list, drop what changed under
    /// it, renew, take.
    async fn round(st: &LeaseStore, w: &mut Sim, now: Instant) {
        let leases = st.list().await.unwrap();
        w.observed.update(&leases, now);
        w.held.retain(|s, h| {
            leases
                .iter()
                .any(|l| l.shard == *s && l.counter == h.counter && l.owner == h.owner)
        });
        let shards: Vec<String> = w.held.keys().cloned().collect();
        for s in shards {
            match st.renew(&w.held[&s]).await.unwrap() {
                Some(l) => {
                    w.held.insert(s, l);
                }
                None => {
                    w.held.remove(&s);
                }
            }
        }
        let view: Vec<Lease> = st
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| w.held.get(&l.shard).cloned().unwrap_or(l))
            .collect();
        for l in to_take(&view, &w.id, &w.observed, now, D) {
            if let Some(t) = st.take(&l, &w.id).await.unwrap() {
                w.held.insert(t.shard.clone(), t);
            }
        }
    }

    #[test]
    fn workers_balance_and_a_dead_workers_leases_are_taken_over() {
        block(async {
            let st = LeaseStore::File(FileLeases::new(None));
            for i in 0..8 {
                st.create(&format!("shard-{i}"), &[]).await.unwrap();
            }
            let mut ws: Vec<Sim> = ["a", "b", "c"]
                .iter()
                .map(|id| Sim {
                    id: id.to_string(),
                    held: BTreeMap::new(),
                    observed: Observed::default(),
                    alive: true,
                })
                .collect();
            let t0 = Instant::now();
            let step = D / 3;
            let mut now = t0;
            // "a" starts alone and takes everything; b and c join and steal one at a time.
            round(&st, &mut ws[0], now).await;
            assert_eq!(ws[0].held.len(), 8);
            for _ in 0..12 {
                now += step;
                for w in ws.iter_mut().filter(|w| w.alive) {
                    round(&st, w, now).await;
                }
            }
            let counts: Vec<usize> = ws.iter().map(|w| w.held.len()).collect();
            assert!(counts.iter().all(|&n| (2..=3).contains(&n)), "{counts:?}");
            assert_eq!(counts.iter().sum::<usize>(), 8, "every shard held once");
            // "b" dies (its rounds stop): after the lease duration a and c share its shards.
            ws[1].alive = false;
            for _ in 0..8 {
                now += step;
                for w in ws.iter_mut().filter(|w| w.alive) {
                    round(&st, w, now).await;
                }
            }
            let leases = st.list().await.unwrap();
            assert!(
                leases.iter().all(|l| l.owner.as_deref() != Some("b")),
                "{leases:?}"
            );
            let (a, c) = (ws[0].held.len(), ws[2].held.len());
            assert_eq!((a + c, a.abs_diff(c) <= 1), (8, true), "a {a}, c {c}");
        });
    }
}
