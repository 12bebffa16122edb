//! Carrier formats: how records arrive wrapped, and how to get them out.
//!
//! One parsed document can hold many records (`{"Records":[..]}`), one record in an envelope
//! (EventBridge `detail`), or a payload that must be decoded and parsed again (a JSON string, a
//! base64 or gzip body). Which source a record is comes later, from the tables' `detect` rules,
//! unless the carrier already says so.

use crate::error::{ErrorCode, RecordError, Stage};
use crate::json::Src;
use crate::record::SourceKind;

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

fn wrong_shape(detail: String) -> RecordError {
    RecordError::new(ErrorCode::WrongShape, Stage::Envelope, detail)
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
    // CloudTrail S3 delivery file.
    if let Some(records) = doc.get("Records") {
        return list(records, "Records", Some(SourceKind::CloudTrail), out);
    }
    // CloudTrail digest files sit in the same bucket tree; they list log files, not events.
    if doc.get("digestStartTime").is_some() && doc.get("logFiles").is_some() {
        out.push(Item::Skipped {
            reason: "CloudTrail digest file (holds no events)",
        });
        return;
    }
    // EventBridge: {"detail-type": "AWS API Call via CloudTrail", "detail": {...}}.
    if let (Some(dt), Some(detail)) = (doc.get("detail-type"), doc.get("detail")) {
        let hint = dt
            .as_str()
            .filter(|t| t.ends_with("via CloudTrail"))
            .map(|_| SourceKind::CloudTrail);
        out.push(Item::Record {
            record: detail,
            carriers: Carriers {
                carrier: Some(Wrap {
                    doc,
                    payload: &["detail"],
                }),
                element: None,
            },
            hint,
            index: None,
        });
        return;
    }
    out.push(Item::Record {
        record: doc,
        carriers: Carriers::default(),
        hint: None,
        index: None,
    });
}

/// A carrier's list member: every element is a record. The list's siblings (page tokens and
/// the like) describe the batch, not a record, and are not copied into each event.
fn list<'t, 'i>(v: Src<'t, 'i>, name: &str, hint: Option<SourceKind>, out: &mut Vec<Item<'t, 'i>>) {
    if !v.is_array() {
        out.push(Item::Failed {
            error: wrong_shape(format!(
                "`{name}` must be an array of records, found {}",
                v.type_phrase()
            )),
            raw: None,
            index: None,
        });
        return;
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
