//! The mapping table file format (`mappings/<source>.toml`), as written by people.
//!
//! Everything here is shape only; `plan.rs` checks meaning (paths exist in OCSF, lookups exist,
//! a condition has exactly one test) and reports the line of what is wrong.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The JSON Schema of a mapping table (`schemas/mapping-table.schema.json`), for editors: TOML
/// read as JSON. Shape only; `auditnorm validate` checks meaning.
pub fn json_schema() -> String {
    let schema = schemars::gen::SchemaSettings::draft07()
        .with(|s| s.option_add_null_type = false)
        .into_generator()
        .into_root_schema_for::<Table>();
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// An auditnorm mapping table (`mappings/<source>.toml`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "auditnorm mapping table")]
pub struct Table {
    /// Which source this table maps; must match the file's source kind.
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    #[schemars(with = "String")]
    pub ocsf_version: Spanned<String>,
    /// OCSF profiles every event of this table declares in `metadata.profiles`.
    pub profiles: Vec<String>,
    /// How `--source auto` recognises one record of this source.
    pub detect: Cond,
    /// A record that passes `detect` but fails one of these is a `wrong_shape` dead letter.
    #[serde(default)]
    pub require: Vec<Require>,
    /// Named value tables for `lookup = "<name>"`.
    #[serde(default)]
    pub lookups: BTreeMap<String, Lookup>,
    /// Class rules, first match wins; the last one usually has no `when`.
    #[serde(rename = "class")]
    pub classes: Vec<ClassRule>,
    /// Fields assigned in every class, after the class's own fields (which win).
    #[serde(rename = "field", default)]
    pub fields: Vec<Field>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Require {
    pub when: Cond,
    /// Said in the dead letter when the condition fails.
    pub message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub values: BTreeMap<String, toml::Value>,
    /// Compare keys ignoring ASCII case.
    #[serde(default)]
    pub ignore_case: bool,
    /// Used when the source value is present but not in `values`; without it the field is
    /// left unset and the source value stays in `unmapped`.
    #[schemars(with = "Option<serde_json::Value>")]
    pub default: Option<toml::Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// OCSF class name, e.g. `api_activity`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    pub when: Option<Cond>,
    /// Activity rules, first match wins.
    #[serde(rename = "activity")]
    pub activities: Vec<ActivityRule>,
    #[serde(rename = "field", default)]
    pub fields: Vec<Field>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityRule {
    #[schemars(with = "i64")]
    pub id: Spanned<i64>,
    pub when: Option<Cond>,
}

/// A condition on the record. Exactly one of the tests is given, on `field` unless combining.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cond {
    pub field: Option<String>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    pub eq: Option<String>,
    pub prefix: Option<Vec<String>>,
    pub suffix: Option<Vec<String>>,
    pub contains: Option<Vec<String>>,
    /// A regex (the `regex` crate: linear time).
    pub matches: Option<String>,
    pub exists: Option<bool>,
    /// JSON type of the field: string, number, boolean, object, array.
    #[serde(rename = "type")]
    pub json_type: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
    pub all: Option<Vec<Cond>>,
    pub any: Option<Vec<Cond>>,
    pub not: Option<Box<Cond>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LookupRef {
    Named(String),
    Inline(Lookup),
}

/// One OCSF attribute and where its value comes from. Exactly one source: `from`, `value`,
/// `template`, `join` or `each`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// OCSF attribute path, e.g. `actor.user.uid`.
    #[schemars(with = "String")]
    pub to: Spanned<String>,
    /// Source path(s); the first present, non-null one is used. `@carrier.x` reads the
    /// envelope the record came in.
    pub from: Option<OneOrMany>,
    /// A constant.
    #[schemars(with = "Option<serde_json::Value>")]
    pub value: Option<toml::Value>,
    /// A string with `{source.path}` placeholders (absent ones render empty). Derived values
    /// do not consume their sources.
    pub template: Option<String>,
    /// Source paths joined with `sep` (absent ones skipped); consumes them.
    pub join: Option<Vec<String>>,
    pub sep: Option<String>,
    /// Source array; `fields` map each element (their `from` paths are relative to it).
    pub each: Option<String>,
    pub fields: Option<Vec<Field>>,
    /// Value conversion; see `plan::Transform` for the list.
    pub transform: Option<String>,
    /// Regex with one capture group applied to the string value; no match = no value.
    pub extract: Option<String>,
    pub lookup: Option<LookupRef>,
    /// Used when no source is present.
    #[schemars(with = "Option<serde_json::Value>")]
    pub default: Option<toml::Value>,
    /// Where the value goes when `transform` rejects it (e.g. `ip` -> `src_endpoint.domain`).
    pub otherwise: Option<String>,
    pub when: Option<Cond>,
}
