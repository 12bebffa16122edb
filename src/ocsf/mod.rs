//! OCSF 1.8.0 facts auditnorm relies on: the classes a table may select, their captions, and
//! the exported JSON Schemas (`schemas/ocsf/1.8.0/`) every event is checked against.

pub mod schema;

pub const OCSF_VERSION: &str = "1.8.0";

/// A class a mapping table may select. The JSON Schema of each is exported by
/// `scripts/export-ocsf-schemas.py` with the same class list.
#[derive(Debug)]
pub struct ClassInfo {
    pub name: &'static str,
    pub uid: i64,
    pub caption: &'static str,
    pub category_caption: &'static str,
    /// (activity_id, caption), including 0 Unknown and 99 Other.
    pub activities: &'static [(i64, &'static str)],
    pub schema_json: &'static str,
}

impl ClassInfo {
    pub fn category_uid(&self) -> i64 {
        self.uid / 1000
    }

    pub fn activity_caption(&self, id: i64) -> Option<&'static str> {
        self.activities
            .iter()
            .find(|(a, _)| *a == id)
            .map(|(_, c)| *c)
    }
}

macro_rules! schema_file {
    ($name:literal) => {
        include_str!(concat!("../../schemas/ocsf/1.8.0/", $name, ".json"))
    };
}

pub static CLASSES: &[ClassInfo] = &[
    ClassInfo {
        name: "api_activity",
        uid: 6003,
        caption: "API Activity",
        category_caption: "Application Activity",
        activities: &[
            (0, "Unknown"),
            (1, "Create"),
            (2, "Read"),
            (3, "Update"),
            (4, "Delete"),
            (99, "Other"),
        ],
        schema_json: schema_file!("api_activity"),
    },
    ClassInfo {
        name: "authentication",
        uid: 3002,
        caption: "Authentication",
        category_caption: "Identity & Access Management",
        activities: &[
            (0, "Unknown"),
            (1, "Logon"),
            (2, "Logoff"),
            (3, "Authentication Ticket"),
            (4, "Service Ticket Request"),
            (5, "Service Ticket Renew"),
            (6, "Preauth"),
            (7, "Account Switch"),
            (99, "Other"),
        ],
        schema_json: schema_file!("authentication"),
    },
    ClassInfo {
        name: "account_change",
        uid: 3001,
        caption: "Account Change",
        category_caption: "Identity & Access Management",
        activities: &[
            (0, "Unknown"),
            (1, "Create"),
            (2, "Enable"),
            (3, "Password Change"),
            (4, "Password Reset"),
            (5, "Disable"),
            (6, "Delete"),
            (7, "Attach Policy"),
            (8, "Detach Policy"),
            (9, "Lock"),
            (10, "MFA Factor Enable"),
            (11, "MFA Factor Disable"),
            (12, "Unlock"),
            (99, "Other"),
        ],
        schema_json: schema_file!("account_change"),
    },
    ClassInfo {
        name: "authorize_session",
        uid: 3003,
        caption: "Authorize Session",
        category_caption: "Identity & Access Management",
        activities: &[
            (0, "Unknown"),
            (1, "Assign Privileges"),
            (2, "Assign Groups"),
            (99, "Other"),
        ],
        schema_json: schema_file!("authorize_session"),
    },
    ClassInfo {
        name: "entity_management",
        uid: 3004,
        caption: "Entity Management",
        category_caption: "Identity & Access Management",
        activities: &[
            (0, "Unknown"),
            (1, "Create"),
            (2, "Read"),
            (3, "Update"),
            (4, "Delete"),
            (5, "Move"),
            (6, "Enroll"),
            (7, "Unenroll"),
            (8, "Enable"),
            (9, "Disable"),
            (10, "Activate"),
            (11, "Deactivate"),
            (12, "Suspend"),
            (13, "Resume"),
            (99, "Other"),
        ],
        schema_json: schema_file!("entity_management"),
    },
    ClassInfo {
        name: "user_access",
        uid: 3005,
        caption: "User Access Management",
        category_caption: "Identity & Access Management",
        activities: &[
            (0, "Unknown"),
            (1, "Assign Privileges"),
            (2, "Revoke Privileges"),
            (99, "Other"),
        ],
        schema_json: schema_file!("user_access"),
    },
    ClassInfo {
        name: "group_management",
        uid: 3006,
        caption: "Group Management",
        category_caption: "Identity & Access Management",
        activities: &[
            (0, "Unknown"),
            (1, "Assign Privileges"),
            (2, "Revoke Privileges"),
            (3, "Add User"),
            (4, "Remove User"),
            (5, "Delete"),
            (6, "Create"),
            (7, "Add Subgroup"),
            (8, "Remove Subgroup"),
            (99, "Other"),
        ],
        schema_json: schema_file!("group_management"),
    },
    ClassInfo {
        name: "datastore_activity",
        uid: 6005,
        caption: "Datastore Activity",
        category_caption: "Application Activity",
        activities: &[
            (0, "Unknown"),
            (1, "Read"),
            (2, "Update"),
            (3, "Connect"),
            (4, "Query"),
            (5, "Write"),
            (6, "Create"),
            (7, "Delete"),
            (8, "List"),
            (9, "Encrypt"),
            (10, "Decrypt"),
            (99, "Other"),
        ],
        schema_json: schema_file!("datastore_activity"),
    },
];

/// The compiled schema of a class, compiled once per process and shared by all tables.
pub fn schema_of(
    info: &'static ClassInfo,
) -> Result<std::sync::Arc<schema::ClassSchema>, schema::SchemaError> {
    use std::sync::{Arc, Mutex, OnceLock};
    type Cache = Mutex<Vec<(i64, Arc<schema::ClassSchema>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, s)) = guard.iter().find(|(uid, _)| *uid == info.uid) {
        return Ok(s.clone());
    }
    let s = Arc::new(schema::ClassSchema::compile(info.name, info.schema_json)?);
    guard.push((info.uid, s.clone()));
    Ok(s)
}

pub fn class_by_name(name: &str) -> Option<&'static ClassInfo> {
    CLASSES.iter().find(|c| c.name == name)
}

pub fn severity_caption(id: i64) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        99 => "Other",
        _ => "Unknown",
    }
}

pub fn status_caption(id: i64) -> &'static str {
    match id {
        1 => "Success",
        2 => "Failure",
        99 => "Other",
        _ => "Unknown",
    }
}
