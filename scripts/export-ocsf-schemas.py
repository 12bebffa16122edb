#!/usr/bin/env python3
"""Export the OCSF 1.8.0 JSON Schemas of the classes auditnorm emits into schemas/ocsf/1.8.0/.

Offline: the PyPI package `ocsf-json-schema` embeds the schema.ocsf.io exports.
    pip install ocsf-json-schema==1.2.0 && python3 scripts/export-ocsf-schemas.py
Output is normalised (sorted keys, sorted enums) so that a re-export gives byte-identical files
and a diff shows only real schema changes.
"""
import json
import pathlib
import sys

from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

VERSION = "1.8.0"
# Every class a mapping table may select. Keep in sync with src/ocsf.rs (a test checks it).
CLASSES = [
    "api_activity",
    "authentication",
    "account_change",
    "authorize_session",
    "entity_management",
    "user_access",
    "group_management",
    "datastore_activity",
]
PROFILES = ["cloud", "datetime"]


def normalise(node):
    if isinstance(node, dict):
        out = {k: normalise(v) for k, v in sorted(node.items())}
        if "enum" in out and all(isinstance(x, (int, float)) for x in out["enum"]):
            out["enum"] = sorted(out["enum"])
        elif "enum" in out and all(isinstance(x, str) for x in out["enum"]):
            out["enum"] = sorted(out["enum"])
        return out
    if isinstance(node, list):
        return [normalise(x) for x in node]
    return node


def main():
    root = pathlib.Path(__file__).resolve().parent.parent / "schemas" / "ocsf" / VERSION
    root.mkdir(parents=True, exist_ok=True)
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=VERSION))
    for name in CLASSES:
        sc = normalise(schema.get_class_schema(class_name=name, profiles=PROFILES))
        path = root / f"{name}.json"
        path.write_text(json.dumps(sc, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(root.parent.parent.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
