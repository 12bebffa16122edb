//! KPL aggregated records: recognise and de-aggregate them (magic prefix, protobuf body,
//! MD5 trailer), and build them (for tests, benches and the Kinesis integration tests).
//!
//! The format (amazon-kinesis-producer, `aggregation-format.md`): the 4-byte [`MAGIC`], a
//! protobuf `AggregatedRecord`, then the 16-byte MD5 digest of the protobuf bytes.
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```
//!
//! Encoding uses the prost-derived messages in [`proto`]. Decoding is a small reader of the
//! same wire format written here: it borrows every sub-record's data from the input (no copy
//! per sub-record), and it can say at which byte a broken aggregate breaks, which prost's
//! `DecodeError` does not. The unit tests check the two against each other.
//!
//! What counts as an aggregate follows KCL (`AggregatorUtil.deaggregate`): the magic prefix
//! and a matching MD5 digest. A record that starts with the magic but whose digest does not
//! match is, for KCL, a plain record; [`deaggregate`] reports it as
//! [`KplError::DigestMismatch`] and the caller decides (see `normalize.rs`). KCL also needs at
//! least one byte of protobuf; here an empty body with the digest of nothing is a valid,
//! empty aggregate (it is what [`aggregate`] makes of no records).

use md5::{Digest, Md5};

/// The first four bytes of every KPL aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer.
pub const DIGEST_LEN: usize = 16;

/// The prost messages of the aggregation format, used to encode (and, in tests, to check the
/// hand-written decoder).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AggregatedRecord {
        #[prost(string, repeated, tag = "1")]
        pub partition_key_table: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub explicit_hash_key_table: Vec<String>,
        #[prost(message, repeated, tag = "3")]
        pub records: Vec<Record>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        #[prost(uint64, required, tag = "1")]
        pub partition_key_index: u64,
        #[prost(uint64, optional, tag = "2")]
        pub explicit_hash_key_index: Option<u64>,
        #[prost(bytes = "vec", required, tag = "3")]
        pub data: Vec<u8>,
        #[prost(message, repeated, tag = "4")]
        pub tags: Vec<Tag>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tag {
        #[prost(string, required, tag = "1")]
        pub key: String,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }
}

/// Why bytes that start with the magic are not a usable aggregate. Byte offsets count from
/// the start of the Kinesis record's data (the magic is bytes 0-3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    #[error("does not start with the KPL magic F3 89 9A C2")]
    NotAggregated,
    #[error(
        "starts with the KPL magic but has only {len} bytes, fewer than magic + MD5 digest (20)"
    )]
    TooShort { len: usize },
    #[error("KPL MD5 digest does not match: trailer {}, digest of the body {}", hex(.trailer), hex(.computed))]
    DigestMismatch {
        trailer: [u8; DIGEST_LEN],
        computed: [u8; DIGEST_LEN],
    },
    #[error("bad KPL protobuf at byte {offset}: {reason}")]
    Protobuf { offset: usize, reason: String },
    #[error("KPL sub-record {record} (at byte {offset}) has no {field}")]
    MissingField {
        record: usize,
        offset: usize,
        field: &'static str,
    },
    #[error(
        "KPL sub-record {record}: partition key index {index} is out of range (the table has {table_len})"
    )]
    PartitionKeyIndex {
        record: usize,
        index: u64,
        table_len: usize,
    },
    #[error(
        "KPL sub-record {record}: explicit hash key index {index} is out of range (the table has {table_len})"
    )]
    ExplicitHashKeyIndex {
        record: usize,
        index: u64,
        table_len: usize,
    },
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// A de-aggregated KPL record: its user records, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Aggregated<'a> {
    pub records: Vec<SubRecord<'a>>,
}

/// One user record of an aggregate; its data is borrowed from the aggregate's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRecord<'a> {
    pub partition_key: &'a str,
    pub explicit_hash_key: Option<&'a str>,
    pub data: &'a [u8],
}

/// True when `bytes` start with the KPL magic: a 4-byte compare, the only cost plain records
/// pay. Whether it really is an aggregate is for [`deaggregate`] to say (the digest).
#[inline]
pub fn is_aggregated(bytes: &[u8]) -> bool {
    bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] == MAGIC
}

/// Splits an aggregate into its user records, in order.
pub fn deaggregate(bytes: &[u8]) -> Result<Aggregated<'_>, KplError> {
    if !is_aggregated(bytes) {
        return Err(KplError::NotAggregated);
    }
    if bytes.len() < MAGIC.len() + DIGEST_LEN {
        return Err(KplError::TooShort { len: bytes.len() });
    }
    let (body, trailer) = bytes[MAGIC.len()..].split_at(bytes.len() - MAGIC.len() - DIGEST_LEN);
    let computed: [u8; DIGEST_LEN] = Md5::digest(body).into();
    if computed[..] != trailer[..] {
        let mut t = [0u8; DIGEST_LEN];
        t.copy_from_slice(trailer);
        return Err(KplError::DigestMismatch {
            trailer: t,
            computed,
        });
    }
    decode_body(body, MAGIC.len())
}

/// A sub-record as written: indexes into the tables, resolved once every field is read (the
/// wire format does not order the tables before the records).
struct RawRecord<'a> {
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data: &'a [u8],
}

fn decode_body(body: &[u8], base: usize) -> Result<Aggregated<'_>, KplError> {
    let mut keys: Vec<&str> = Vec::new();
    let mut hash_keys: Vec<&str> = Vec::new();
    let mut raw: Vec<RawRecord<'_>> = Vec::new();
    let mut r = Reader {
        buf: body,
        pos: 0,
        base,
    };
    while !r.done() {
        let (field, wire, at) = r.key()?;
        match (field, wire) {
            (1, LEN) => keys.push(r.string("partition key")?),
            (2, LEN) => hash_keys.push(r.string("explicit hash key")?),
            (3, LEN) => {
                let msg = r.bytes()?;
                let msg_at = r.base + r.pos - msg.len();
                raw.push(record(msg, msg_at, raw.len(), r.base + at)?);
            }
            (1..=3, w) => return Err(r.wrong_wire(at, field, w, "AggregatedRecord")),
            (_, w) => r.skip(w, at)?,
        }
    }
    let mut records = Vec::with_capacity(raw.len());
    for (i, rr) in raw.into_iter().enumerate() {
        let partition_key = usize::try_from(rr.partition_key_index)
            .ok()
            .and_then(|k| keys.get(k))
            .ok_or(KplError::PartitionKeyIndex {
                record: i,
                index: rr.partition_key_index,
                table_len: keys.len(),
            })?;
        let explicit_hash_key = match rr.explicit_hash_key_index {
            None => None,
            Some(h) => Some(
                *usize::try_from(h)
                    .ok()
                    .and_then(|k| hash_keys.get(k))
                    .ok_or(KplError::ExplicitHashKeyIndex {
                        record: i,
                        index: h,
                        table_len: hash_keys.len(),
                    })?,
            ),
        };
        records.push(SubRecord {
            partition_key,
            explicit_hash_key,
            data: rr.data,
        });
    }
    Ok(Aggregated { records })
}

/// One `Record` message; `base` is where its bytes start, `start` where its field key starts.
fn record(msg: &[u8], base: usize, n: usize, start: usize) -> Result<RawRecord<'_>, KplError> {
    let mut r = Reader {
        buf: msg,
        pos: 0,
        base,
    };
    let mut pk = None;
    let mut ehk = None;
    let mut data = None;
    while !r.done() {
        let (field, wire, at) = r.key()?;
        match (field, wire) {
            (1, VARINT) => pk = Some(r.varint()?),
            (2, VARINT) => ehk = Some(r.varint()?),
            (3, LEN) => data = Some(r.bytes()?),
            (4, LEN) => {
                r.bytes()?;
            }
            (1..=4, w) => return Err(r.wrong_wire(at, field, w, "Record")),
            (_, w) => r.skip(w, at)?,
        }
    }
    let missing = |field| KplError::MissingField {
        record: n,
        offset: start,
        field,
    };
    Ok(RawRecord {
        partition_key_index: pk.ok_or_else(|| missing("partition_key_index"))?,
        explicit_hash_key_index: ehk,
        data: data.ok_or_else(|| missing("data"))?,
    })
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A cursor over protobuf bytes; `base` turns its positions into offsets in the whole record.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn bad(&self, at: usize, reason: impl Into<String>) -> KplError {
        KplError::Protobuf {
            offset: self.base + at,
            reason: reason.into(),
        }
    }

    fn varint(&mut self) -> Result<u64, KplError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.bad(start, "varint runs past the end"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.bad(start, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad(start, "varint overflows 64 bits"))
    }

    /// A field key: (field number, wire type, offset of the key).
    fn key(&mut self) -> Result<(u64, u8, usize), KplError> {
        let at = self.pos;
        let k = self.varint()?;
        let field = k >> 3;
        let wire = (k & 7) as u8;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(self.bad(at, format!("invalid field number {field}")));
        }
        if !matches!(wire, VARINT | I64 | LEN | I32) {
            return Err(self.bad(
                at,
                format!("field {field} has unsupported wire type {wire}"),
            ));
        }
        Ok((field, wire, at))
    }

    fn bytes(&mut self) -> Result<&'a [u8], KplError> {
        let at = self.pos;
        let len = self.varint()?;
        let left = self.buf.len() - self.pos;
        match usize::try_from(len) {
            Ok(n) if n <= left => {
                let s = &self.buf[self.pos..self.pos + n];
                self.pos += n;
                Ok(s)
            }
            _ => Err(self.bad(
                at,
                format!("length {len} runs past the end ({left} bytes left)"),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<&'a str, KplError> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.bad(at, format!("{what} is not UTF-8")))
    }

    fn fixed(&mut self, n: usize, at: usize) -> Result<(), KplError> {
        if self.buf.len() - self.pos < n {
            return Err(self.bad(at, format!("{n}-byte field runs past the end")));
        }
        self.pos += n;
        Ok(())
    }

    /// Skips an unknown field (protobuf readers ignore fields they do not know).
    fn skip(&mut self, wire: u8, at: usize) -> Result<(), KplError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.fixed(8, at),
            LEN => self.bytes().map(drop),
            _ => self.fixed(4, at),
        }
    }

    fn wrong_wire(&self, at: usize, field: u64, wire: u8, msg: &str) -> KplError {
        self.bad(
            at,
            format!("{msg} field {field} has wire type {wire}, not the one its type needs"),
        )
    }
}

/// Frames an encoded `AggregatedRecord`: magic, body, MD5 digest of the body.
pub fn encode(msg: &proto::AggregatedRecord) -> Vec<u8> {
    use prost::Message;
    frame(&msg.encode_to_vec())
}

/// Frames any body as an aggregate (magic, body, its digest), valid protobuf or not: for
/// tests of broken aggregates.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    out
}

/// Aggregates `(partition key, data)` pairs as the KPL does: one partition key table entry per
/// distinct key, no explicit hash keys, no tags.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut msg = proto::AggregatedRecord::default();
    let mut seen = std::collections::HashMap::new();
    for (key, data) in records {
        let index = *seen.entry(*key).or_insert_with(|| {
            msg.partition_key_table.push((*key).to_string());
            msg.partition_key_table.len() - 1
        });
        msg.records.push(proto::Record {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: data.to_vec(),
            tags: Vec::new(),
        });
    }
    encode(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn rec(pk: u64, ehk: Option<u64>, data: &[u8]) -> proto::Record {
        proto::Record {
            partition_key_index: pk,
            explicit_hash_key_index: ehk,
            data: data.to_vec(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn round_trip_keeps_order_keys_and_data() {
        let input: Vec<(&str, &[u8])> = vec![
            ("a", b"{\"n\":1}"),
            ("b", b""),
            ("a", &[0u8, 0xff, 0x1f, 0x8b]),
        ];
        let bytes = aggregate(&input);
        assert!(is_aggregated(&bytes));
        let agg = deaggregate(&bytes).expect("valid aggregate");
        let got: Vec<(&str, &[u8])> = agg
            .records
            .iter()
            .map(|r| (r.partition_key, r.data))
            .collect();
        assert_eq!(got, input);
        assert!(agg.records.iter().all(|r| r.explicit_hash_key.is_none()));
        // One table entry per distinct key, as the KPL writes it.
        let msg = proto::AggregatedRecord::decode(&bytes[4..bytes.len() - 16]).expect("prost");
        assert_eq!(msg.partition_key_table, ["a", "b"]);
    }

    #[test]
    fn sub_record_data_is_borrowed_from_the_input() {
        let bytes = aggregate(&[("k", b"hello")]);
        let agg = deaggregate(&bytes).expect("valid");
        let range = bytes.as_ptr_range();
        assert!(range.contains(&agg.records[0].data.as_ptr()));
    }

    #[test]
    fn empty_aggregate_has_no_records() {
        let bytes = aggregate(&[]);
        assert_eq!(bytes.len(), 20);
        assert_eq!(deaggregate(&bytes), Ok(Aggregated::default()));
    }

    #[test]
    fn plain_and_short_records() {
        assert!(!is_aggregated(b"{\"Records\":[]}"));
        assert!(!is_aggregated(&MAGIC[..3]));
        assert_eq!(deaggregate(b"{}"), Err(KplError::NotAggregated));
        let mut short = MAGIC.to_vec();
        short.extend_from_slice(&[0; 10]);
        assert_eq!(deaggregate(&short), Err(KplError::TooShort { len: 14 }));
    }

    #[test]
    fn bad_digest_is_reported_with_both_digests() {
        let mut bytes = aggregate(&[("k", b"{}")]);
        bytes[6] ^= 0x01;
        match deaggregate(&bytes) {
            Err(e @ KplError::DigestMismatch { .. }) => {
                let text = e.to_string();
                assert!(text.contains("digest does not match"), "{text}");
                assert!(text.contains(&hex(&bytes[bytes.len() - 16..])), "{text}");
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }

    #[test]
    fn truncated_protobuf_names_the_byte() {
        // records { partition_key_index: 0, data: 5 bytes } with the data cut to 2 bytes.
        let body = [0x1a, 0x09, 0x08, 0x00, 0x1a, 0x05, b'a', b'b'];
        let err = deaggregate(&frame(&body)).expect_err("truncated");
        // The record's length (9) at body byte 1 = record byte 5 overruns first.
        assert_eq!(
            err,
            KplError::Protobuf {
                offset: 5,
                reason: "length 9 runs past the end (6 bytes left)".into()
            }
        );
        // The same cut inside the record: the data length (5) at body byte 5 overruns.
        let body = [0x1a, 0x06, 0x08, 0x00, 0x1a, 0x05, b'a', b'b'];
        let err = deaggregate(&frame(&body)).expect_err("truncated");
        assert_eq!(
            err,
            KplError::Protobuf {
                offset: 9,
                reason: "length 5 runs past the end (2 bytes left)".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "bad KPL protobuf at byte 9: length 5 runs past the end (2 bytes left)"
        );
    }

    #[test]
    fn malformed_keys_and_varints() {
        let cases: [(&[u8], usize, &str); 6] = [
            (&[0x00], 4, "invalid field number 0"),
            (&[0x0b], 4, "unsupported wire type 3"),
            (&[0x80, 0x80], 4, "varint runs past the end"),
            // An unknown varint field without its value.
            (&[0x0a, 0x00, 0x48], 7, "varint runs past the end"),
            (&[0x08, 0x00], 4, "field 1 has wire type 0"),
            (&[0xff; 11], 4, "overflows 64 bits"),
        ];
        for (body, offset, reason) in cases {
            match deaggregate(&frame(body)) {
                Err(KplError::Protobuf {
                    offset: o,
                    reason: r,
                }) => {
                    assert_eq!(o, offset, "{body:?}");
                    assert!(r.contains(reason), "{body:?}: {r}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
        // A partition key table entry that is not UTF-8.
        match deaggregate(&frame(&[0x0a, 0x01, 0xff])) {
            Err(KplError::Protobuf { offset: 5, reason }) => assert!(reason.contains("UTF-8")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partition_key_index_out_of_range() {
        let msg = proto::AggregatedRecord {
            partition_key_table: vec!["only".into()],
            explicit_hash_key_table: vec![],
            records: vec![rec(0, None, b"{}"), rec(3, None, b"{}")],
        };
        assert_eq!(
            deaggregate(&encode(&msg)),
            Err(KplError::PartitionKeyIndex {
                record: 1,
                index: 3,
                table_len: 1
            })
        );
    }

    #[test]
    fn explicit_hash_keys_and_their_range() {
        let mut msg = proto::AggregatedRecord {
            partition_key_table: vec!["p".into()],
            explicit_hash_key_table: vec!["170141183460469231731687303715884105728".into()],
            records: vec![rec(0, Some(0), b"x"), rec(0, None, b"y")],
        };
        let bytes = encode(&msg);
        let agg = deaggregate(&bytes).expect("valid");
        assert_eq!(
            agg.records[0].explicit_hash_key,
            Some("170141183460469231731687303715884105728")
        );
        assert_eq!(agg.records[1].explicit_hash_key, None);
        msg.records[1].explicit_hash_key_index = Some(1);
        assert_eq!(
            deaggregate(&encode(&msg)),
            Err(KplError::ExplicitHashKeyIndex {
                record: 1,
                index: 1,
                table_len: 1
            })
        );
    }

    #[test]
    fn required_fields_must_be_present() {
        // records { data: "x" } without partition_key_index.
        let body = [0x1a, 0x03, 0x1a, 0x01, b'x'];
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(KplError::MissingField {
                record: 0,
                offset: 4,
                field: "partition_key_index"
            })
        );
        let body = [0x0a, 0x01, b'k', 0x1a, 0x02, 0x08, 0x00];
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(KplError::MissingField {
                record: 0,
                offset: 7,
                field: "data"
            })
        );
    }

    #[test]
    fn unknown_fields_and_tags_are_skipped() {
        let msg = proto::AggregatedRecord {
            partition_key_table: vec!["p".into()],
            explicit_hash_key_table: vec![],
            records: vec![proto::Record {
                tags: vec![proto::Tag {
                    key: "team".into(),
                    value: Some("sec".into()),
                }],
                ..rec(0, None, b"d")
            }],
        };
        let mut body = msg.encode_to_vec();
        // Unknown fields 9 (varint), 10 (fixed64), 11 (bytes), 12 (fixed32).
        body.extend_from_slice(&[0x48, 0x96, 0x01]);
        body.extend_from_slice(&[0x51, 1, 2, 3, 4, 5, 6, 7, 8]);
        body.extend_from_slice(&[0x5a, 0x02, b'z', b'z']);
        body.extend_from_slice(&[0x65, 1, 2, 3, 4]);
        let bytes = frame(&body);
        let agg = deaggregate(&bytes).expect("unknown fields are ignored");
        assert_eq!(agg.records.len(), 1);
        assert_eq!(agg.records[0].data, b"d");
    }

    fn arb_message() -> impl Strategy<Value = proto::AggregatedRecord> {
        (
            prop::collection::vec("[a-zA-Z0-9._-]{0,12}", 1..4),
            prop::collection::vec("[0-9]{1,39}", 0..3),
            prop::collection::vec(
                (
                    any::<u8>(),
                    any::<Option<u8>>(),
                    prop::collection::vec(any::<u8>(), 0..64),
                    prop::collection::vec(("[a-z]{0,5}", any::<Option<String>>()), 0..2),
                ),
                0..8,
            ),
        )
            .prop_map(|(pks, ehks, recs)| proto::AggregatedRecord {
                records: recs
                    .into_iter()
                    .map(|(pk, ehk, data, tags)| proto::Record {
                        partition_key_index: u64::from(pk) % pks.len() as u64,
                        explicit_hash_key_index: ehk
                            .filter(|_| !ehks.is_empty())
                            .map(|h| u64::from(h) % ehks.len() as u64),
                        data,
                        tags: tags
                            .into_iter()
                            .map(|(key, value)| proto::Tag { key, value })
                            .collect(),
                    })
                    .collect(),
                partition_key_table: pks,
                explicit_hash_key_table: ehks,
            })
    }

    proptest! {
        #[test]
        fn aggregate_then_deaggregate(
            input in prop::collection::vec(
                ("[a-z0-9]{1,8}", prop::collection::vec(any::<u8>(), 0..200)),
                0..20,
            )
        ) {
            let pairs: Vec<(&str, &[u8])> =
                input.iter().map(|(k, d)| (k.as_str(), d.as_slice())).collect();
            let bytes = aggregate(&pairs);
            let agg = deaggregate(&bytes).expect("valid aggregate");
            let got: Vec<(&str, &[u8])> =
                agg.records.iter().map(|r| (r.partition_key, r.data)).collect();
            prop_assert_eq!(got, pairs);
        }

        /// The hand-written decoder reads what prost writes, tags and hash keys included.
        #[test]
        fn decoder_agrees_with_prost(msg in arb_message()) {
            let bytes = encode(&msg);
            let agg = deaggregate(&bytes).expect("valid aggregate");
            prop_assert_eq!(agg.records.len(), msg.records.len());
            for (got, want) in agg.records.iter().zip(&msg.records) {
                prop_assert_eq!(
                    got.partition_key,
                    msg.partition_key_table[want.partition_key_index as usize].as_str()
                );
                prop_assert_eq!(
                    got.explicit_hash_key,
                    want.explicit_hash_key_index
                        .map(|h| msg.explicit_hash_key_table[h as usize].as_str())
                );
                prop_assert_eq!(got.data, want.data.as_slice());
            }
        }

        /// Any body with a valid digest: never a panic, and whatever decodes also decodes
        /// with prost to the same records.
        #[test]
        fn arbitrary_bodies_do_not_panic(body in prop::collection::vec(any::<u8>(), 0..64)) {
            let bytes = frame(&body);
            if let Ok(agg) = deaggregate(&bytes) {
                let msg = proto::AggregatedRecord::decode(body.as_slice());
                prop_assert!(msg.is_ok(), "we accepted what prost refuses: {:?}", msg);
                let msg = msg.expect("checked");
                let datas: Vec<&[u8]> = msg.records.iter().map(|r| r.data.as_slice()).collect();
                let ours: Vec<&[u8]> = agg.records.iter().map(|r| r.data).collect();
                prop_assert_eq!(ours, datas);
            }
        }

        /// Truncating a valid body anywhere gives an error or fewer records, never a panic.
        #[test]
        fn truncated_bodies_are_errors(msg in arb_message(), cut in any::<prop::sample::Index>()) {
            let body = msg.encode_to_vec();
            prop_assume!(!body.is_empty());
            let cut = cut.index(body.len());
            let bytes = frame(&body[..cut]);
            if let Ok(agg) = deaggregate(&bytes) {
                prop_assert!(agg.records.len() <= msg.records.len());
            }
        }
    }
}
