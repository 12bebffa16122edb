//! Carrier formats: how records arrive wrapped, and how to get them out.
//!
//! One parsed document can hold many records (`{"Records":[..]}`), one record in an envelope
//! (EventBridge `detail`), or a payload that must be decoded and parsed again (a JSON string, a
//! base64 or gzip body). Which source a record is comes later, from the tables' `detect` rules,
//! unless the carrier already says so.

use crate::error::{ErrorCode, RecordError, Stage};
use crate::json::Src;
use crate::record::SourceKind;
use base64::Engine as _;

/// An envelope around a record: the document, and the path inside it that holds the payload
/// (left out of `unmapped`, since the payload is the record itself).
#[derive(Clone, Copy, Debug)]
pub struct Wrap<'t, 'i> {
    pub doc: Src<'t, 'i>,
    pub payload: &'static [&'static str],
}

/// The envelopes of one record: the outer document (`@carrier.` paths) and, for carriers
/// that list many records with per-record metadata, the list element (`@element.` paths).
#[derive(Clone, Copy, Debug, Default)]
pub struct Carriers<'t, 'i> {
    pub carrier: Option<Wrap<'t, 'i>>,
    pub element: Option<Wrap<'t, 'i>>,
}

impl<'t, 'i> Carriers<'t, 'i> {
    pub fn is_empty(&self) -> bool {
        self.carrier.is_none() && self.element.is_none()
    }

    /// Inner envelopes win; an outer one fills what the inner lacks.
    pub fn or(self, outer: Carriers<'t, 'i>) -> Carriers<'t, 'i> {
        Carriers {
            carrier: self.carrier.or(outer.carrier),
            element: self.element.or(outer.element),
        }
    }
}

/// What a document turned out to hold.
pub enum Item<'t, 'i> {
    /// A record to map, with the envelopes it came in and its index in the carrier.
    Record {
        record: Src<'t, 'i>,
        carriers: Carriers<'t, 'i>,
        hint: Option<SourceKind>,
        index: Option<u32>,
    },
    /// Bytes to parse as a document of their own (a record embedded as a string, a decoded
    /// base64 or gzip body). Its records are positioned under `index`.
    Nested {
        bytes: Vec<u8>,
        carriers: Carriers<'t, 'i>,
        hint: Option<SourceKind>,
        index: Option<u32>,
    },
    /// A document that holds no records on purpose (a CloudTrail digest file).
    Skipped { reason: &'static str },
    /// One element of a carrier that cannot be used; the rest of the carrier goes on.
    Failed {
        error: RecordError,
        raw: Option<Src<'t, 'i>>,
        index: Option<u32>,
    },
}

impl Item<'_, '_> {
    /// The item's index in its carrier, when the carrier lists many.
    pub fn index(&self) -> Option<u32> {
        match self {
            Item::Record { index, .. }
            | Item::Nested { index, .. }
            | Item::Failed { index, .. } => *index,
            Item::Skipped { .. } => None,
        }
    }
}

fn wrong_shape(detail: String) -> RecordError {
    RecordError::new(ErrorCode::WrongShape, Stage::Envelope, detail)
}

/// The top-level members the carrier rules look at, found in one pass over the document
/// (records are mostly not carriers: a dozen lookups by name each would cost more than mapping).
#[derive(Default)]
struct Top<'t, 'i> {
    records_ct: Option<Src<'t, 'i>>,
    digest_start: Option<Src<'t, 'i>>,
    log_files: Option<Src<'t, 'i>>,
    detail_type: Option<Src<'t, 'i>>,
    detail: Option<Src<'t, 'i>>,
    records: Option<Src<'t, 'i>>,
    value: Option<Src<'t, 'i>>,
    entries: Option<Src<'t, 'i>>,
    kind: Option<Src<'t, 'i>>,
    items: Option<Src<'t, 'i>>,
    message: Option<Src<'t, 'i>>,
    data: Option<Src<'t, 'i>>,
    message_id: Option<Src<'t, 'i>>,
    message_id_: Option<Src<'t, 'i>>,
    publish_time: Option<Src<'t, 'i>>,
    publish_time_: Option<Src<'t, 'i>>,
    attributes: Option<Src<'t, 'i>>,
    message_type: Option<Src<'t, 'i>>,
    log_events: Option<Src<'t, 'i>>,
    log_stream_name: Option<Src<'t, 'i>>,
    ingestion_time: Option<Src<'t, 'i>>,
    event_id: Option<Src<'t, 'i>>,
    log_group_name: Option<Src<'t, 'i>>,
    log_group: Option<Src<'t, 'i>>,
    category: Option<Src<'t, 'i>>,
    properties: Option<Src<'t, 'i>>,
}

fn scan<'t, 'i>(doc: Src<'t, 'i>) -> Top<'t, 'i> {
    let mut top = Top::default();
    for (k, v) in doc.members() {
        let slot = match k {
            "Records" => &mut top.records_ct,
            "digestStartTime" => &mut top.digest_start,
            "logFiles" => &mut top.log_files,
            "detail-type" => &mut top.detail_type,
            "detail" => &mut top.detail,
            "records" => &mut top.records,
            "value" => &mut top.value,
            "entries" => &mut top.entries,
            "kind" => &mut top.kind,
            "items" => &mut top.items,
            "message" => &mut top.message,
            "data" => &mut top.data,
            "messageId" => &mut top.message_id,
            "message_id" => &mut top.message_id_,
            "publishTime" => &mut top.publish_time,
            "publish_time" => &mut top.publish_time_,
            "attributes" => &mut top.attributes,
            "messageType" => &mut top.message_type,
            "logEvents" => &mut top.log_events,
            "logStreamName" => &mut top.log_stream_name,
            "ingestionTime" => &mut top.ingestion_time,
            "eventId" => &mut top.event_id,
            "logGroupName" => &mut top.log_group_name,
            "logGroup" => &mut top.log_group,
            "category" => &mut top.category,
            "properties" => &mut top.properties,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v);
        }
    }
    top
}

/// Splits one parsed document into items.
pub fn unwrap<'t, 'i>(doc: Src<'t, 'i>, out: &mut Vec<Item<'t, 'i>>) {
    if doc.is_array() {
        // A bare JSON array: a portal export or a hand-made batch.
        for (i, el) in doc.elements().enumerate() {
            out.push(Item::Record {
                record: el,
                carriers: Carriers::default(),
                hint: None,
                index: Some(i as u32),
            });
        }
        return;
    }
    if !doc.is_object() {
        out.push(Item::Failed {
            error: RecordError::new(
                ErrorCode::UnknownSource,
                Stage::Envelope,
                format!("{} is not an audit record or carrier", doc.type_phrase()),
            ),
            raw: Some(doc),
            index: None,
        });
        return;
    }
    let top = scan(doc);
    // CloudTrail S3 delivery file.
    if let Some(records) = top.records_ct {
        return list(records, "Records", Some(SourceKind::CloudTrail), out);
    }
    // CloudTrail digest files sit in the same bucket tree; they list log files, not events.
    if top.digest_start.is_some() && top.log_files.is_some() {
        out.push(Item::Skipped {
            reason: "CloudTrail digest file (holds no events)",
        });
        return;
    }
    // EventBridge: {"detail-type": "AWS API Call via CloudTrail", "detail": {...}}.
    if let (Some(dt), Some(detail)) = (top.detail_type, top.detail) {
        let hint = dt
            .as_str()
            .filter(|t| t.ends_with("via CloudTrail"))
            .map(|_| SourceKind::CloudTrail);
        out.push(Item::Record {
            record: detail,
            carriers: wrapped(doc, &["detail"]),
            hint,
            index: None,
        });
        return;
    }
    // Azure diagnostic settings / Event Hub batch; AKS audit records ride in it too.
    if let Some(records) = top.records {
        if !records.is_array() {
            return bad_list("records", records, out);
        }
        for (i, el) in records.elements().enumerate() {
            match aks_log(el) {
                Some(log) => out.push(Item::Nested {
                    bytes: log.as_bytes().to_vec(),
                    carriers: Carriers {
                        carrier: None,
                        element: Some(Wrap {
                            doc: el,
                            payload: AKS_PAYLOAD,
                        }),
                    },
                    hint: Some(SourceKind::K8sAudit),
                    index: Some(i as u32),
                }),
                None => out.push(Item::Record {
                    record: el,
                    carriers: Carriers::default(),
                    hint: None,
                    index: Some(i as u32),
                }),
            }
        }
        return;
    }
    // One AKS diagnostic record on its own (a storage-account export line).
    if let Some(log) = top_aks_log(&top) {
        out.push(Item::Nested {
            bytes: log.as_bytes().to_vec(),
            carriers: Carriers {
                carrier: None,
                element: Some(Wrap {
                    doc,
                    payload: AKS_PAYLOAD,
                }),
            },
            hint: Some(SourceKind::K8sAudit),
            index: None,
        });
        return;
    }
    // Azure REST API (`{"value":[..], "nextLink"}`) and GCP Logging API (`{"entries":[..]}`).
    if let Some(value) = top.value.filter(|v| v.is_array()) {
        return list(value, "value", None, out);
    }
    if let Some(entries) = top.entries {
        return list(entries, "entries", Some(SourceKind::GcpAudit), out);
    }
    // Kubernetes audit webhook batch.
    if top.kind.and_then(|k| k.as_str()) == Some("EventList") {
        return match top.items {
            Some(items) => list(items, "items", Some(SourceKind::K8sAudit), out),
            None => out.push(Item::Failed {
                error: wrong_shape("EventList without `items`".into()),
                raw: None,
                index: None,
            }),
        };
    }
    // Pub/Sub push: {"message": {"data": <base64>, ...}, "subscription": ...}.
    if let Some(data) = top.message.and_then(|m| m.get("data")) {
        return base64_payload(data, wrapped(doc, &["message", "data"]), out);
    }
    // Pub/Sub pull message: {"data": <base64>, "messageId": ..., "attributes": ...}.
    if let Some(data) = top.data.filter(|d| d.as_str().is_some()) {
        if [
            top.message_id,
            top.message_id_,
            top.publish_time,
            top.publish_time_,
            top.attributes,
        ]
        .iter()
        .any(Option::is_some)
        {
            return base64_payload(data, wrapped(doc, &["data"]), out);
        }
    }
    // CloudWatch Logs subscription payload (already gunzipped).
    if let (Some(kind), Some(events)) = (top.message_type, top.log_events) {
        if kind.as_str() == Some("CONTROL_MESSAGE") {
            out.push(Item::Skipped {
                reason: "CloudWatch Logs control message (holds no events)",
            });
            return;
        }
        if !events.is_array() {
            return bad_list("logEvents", events, out);
        }
        let hint = cloudwatch_hint(top.log_group);
        for (i, ev) in events.elements().enumerate() {
            let Some(message) = ev.get("message").and_then(|m| m.as_str()) else {
                out.push(Item::Failed {
                    error: wrong_shape("CloudWatch log event without a string `message`".into()),
                    raw: Some(ev),
                    index: Some(i as u32),
                });
                continue;
            };
            out.push(Item::Nested {
                bytes: message.as_bytes().to_vec(),
                carriers: Carriers {
                    carrier: Some(Wrap {
                        doc,
                        payload: &["logEvents"],
                    }),
                    element: Some(Wrap {
                        doc: ev,
                        payload: &["message"],
                    }),
                },
                hint,
                index: Some(i as u32),
            });
        }
        return;
    }
    // One CloudWatch Logs event as exported (filter-log-events, S3 export): the record is the
    // `message` string.
    if let Some(message) = top.message.and_then(|m| m.as_str()) {
        if [top.log_stream_name, top.ingestion_time, top.event_id]
            .iter()
            .any(|k| k.is_some())
        {
            let hint = cloudwatch_hint(top.log_group_name.or(top.log_group))
                .or_else(|| cloudwatch_hint(top.log_stream_name));
            out.push(Item::Nested {
                bytes: message.as_bytes().to_vec(),
                carriers: wrapped(doc, &["message"]),
                hint,
                index: None,
            });
            return;
        }
    }
    out.push(Item::Record {
        record: doc,
        carriers: Carriers::default(),
        hint: None,
        index: None,
    });
}

const AKS_PAYLOAD: &[&str] = &["properties", "log"];

/// The embedded audit event of an AKS `kube-audit` / `kube-audit-admin` diagnostic record.
fn aks_log<'i>(el: Src<'_, 'i>) -> Option<&'i str> {
    let category = el.get("category")?.as_str()?;
    if !category.eq_ignore_ascii_case("kube-audit")
        && !category.eq_ignore_ascii_case("kube-audit-admin")
    {
        return None;
    }
    el.get("properties")?.get("log")?.as_str()
}

fn top_aks_log<'i>(top: &Top<'_, 'i>) -> Option<&'i str> {
    let category = top.category?.as_str()?;
    if !category.eq_ignore_ascii_case("kube-audit")
        && !category.eq_ignore_ascii_case("kube-audit-admin")
    {
        return None;
    }
    top.properties?.get("log")?.as_str()
}

/// EKS control-plane logs live in `/aws/eks/<cluster>/cluster`, audit streams are named
/// `kube-apiserver-audit-*`.
fn cloudwatch_hint(v: Option<Src<'_, '_>>) -> Option<SourceKind> {
    let s = v?.as_str()?;
    (s.starts_with("/aws/eks/") || s.starts_with("kube-apiserver-audit"))
        .then_some(SourceKind::K8sAudit)
}

fn wrapped<'t, 'i>(doc: Src<'t, 'i>, payload: &'static [&'static str]) -> Carriers<'t, 'i> {
    Carriers {
        carrier: Some(Wrap { doc, payload }),
        element: None,
    }
}

fn base64_payload<'t, 'i>(
    data: Src<'t, 'i>,
    carriers: Carriers<'t, 'i>,
    out: &mut Vec<Item<'t, 'i>>,
) {
    let decoded = data
        .as_str()
        .ok_or_else(|| "Pub/Sub `data` is not a string".to_string())
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("Pub/Sub `data` is not valid base64: {e}"))
        });
    match decoded {
        Ok(bytes) => out.push(Item::Nested {
            bytes,
            carriers,
            hint: None,
            index: None,
        }),
        Err(detail) => out.push(Item::Failed {
            error: RecordError::new(ErrorCode::BadPayload, Stage::Envelope, detail),
            raw: None,
            index: None,
        }),
    }
}

fn bad_list<'t, 'i>(name: &str, v: Src<'t, 'i>, out: &mut Vec<Item<'t, 'i>>) {
    out.push(Item::Failed {
        error: wrong_shape(format!(
            "`{name}` must be an array of records, found {}",
            v.type_phrase()
        )),
        raw: None,
        index: None,
    });
}

/// A carrier's list member: every element is a record. The list's siblings (page tokens and
/// the like) describe the batch, not a record, and are not copied into each event.
fn list<'t, 'i>(v: Src<'t, 'i>, name: &str, hint: Option<SourceKind>, out: &mut Vec<Item<'t, 'i>>) {
    if !v.is_array() {
        return bad_list(name, v, out);
    }
    for (i, el) in v.elements().enumerate() {
        out.push(Item::Record {
            record: el,
            carriers: Carriers::default(),
            hint,
            index: Some(i as u32),
        });
    }
}
