#!/usr/bin/env python3
"""Checks proto/schemas/*.schema.json against the proto fixtures.

usage: validate_schemas.py <schemas dir> <fixtures dir (tests/fixtures/proto)>

- every schema is itself a valid JSON Schema (draft 2020-12);
- every valid/*.json fixture validates against the schema its name selects;
- every corrupt/*.json fixture that is well-formed JSON is rejected by its schema, except the
  few listed in SEMANTIC_ONLY (rules JSON Schema cannot express; the C++ decoder still rejects
  them), and at least MIN_REJECTED corrupt fixtures are rejected.
Exit code 77 (ctest: skipped) when python3-jsonschema is not installed.
"""
import json
import os
import sys

try:
    import jsonschema
except ImportError:  # e.g. a pyenv python first on PATH: retry with the system one
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("python3-jsonschema not installed: skipping")
    sys.exit(77)

# Corrupt fixtures whose defect JSON Schema cannot see.
SEMANTIC_ONLY = {
    "offer_size_exponent.json",              # 1e6 is an integer to JSON Schema; we want digits
    "event_progress_received_gt_total.json", # cross-field rule
    "chunk_req_first_overflow.json",         # first + count <= 2^32
    "chunk_req_bitmap_wrong_len.json",       # bitmap length depends on count
    "chunk_req_bitmap_padding_bits.json",    # unused bits must be zero
    "offer_deep_nesting.json",               # nesting limit (8) applies to unknown members too
    "keys_duplicate_id.json",                # ids unique across entries that differ otherwise
}
MIN_REJECTED = 40

PREFIXES = [("offer", ["offer"]), ("cancel", ["cancel"]), ("hello", ["hello"]),
            ("heartbeat", ["heartbeat"]), ("offline", ["offline"]),
            ("presence", ["hello", "offline", "heartbeat"]), ("event", ["event"]),
            ("chunk_req", ["chunk_req"]), ("keys", ["keys"]), ("release", ["release"])]


def schemas_for(name):
    for prefix, names in PREFIXES:
        if name.startswith(prefix):
            return names
    return None


def strict_load(data):
    """json.loads that refuses what our decoder refuses at the syntax level."""
    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_const(c):
        raise ValueError("non-standard constant " + c)

    text = data.decode("utf-8")  # raises on invalid UTF-8
    return json.loads(text, object_pairs_hook=no_dups, parse_constant=no_const)


def main():
    schema_dir, fixture_dir = sys.argv[1], sys.argv[2]
    validators = {}
    for fn in sorted(os.listdir(schema_dir)):
        if not fn.endswith(".schema.json"):
            continue
        with open(os.path.join(schema_dir, fn)) as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[fn[: -len(".schema.json")]] = jsonschema.Draft202012Validator(schema)
    for needed in ("offer", "cancel", "hello", "heartbeat", "offline", "event", "chunk_req",
                   "keys", "release"):
        if needed not in validators:
            print("missing schema", needed)
            return 1

    failures = 0

    def check(names, doc):
        errors = []
        for n in names:
            errs = list(validators[n].iter_errors(doc))
            if not errs:
                return []
            errors.extend(errs)
        return errors

    valid_dir = os.path.join(fixture_dir, "valid")
    count = 0
    for fn in sorted(os.listdir(valid_dir)):
        names = schemas_for(fn)
        if not fn.endswith(".json") or names is None:
            continue
        with open(os.path.join(valid_dir, fn), "rb") as f:
            doc = strict_load(f.read())
        errs = check(names, doc)
        count += 1
        if errs:
            failures += 1
            print("FAIL valid/%s: %s" % (fn, errs[0].message))
    print("%d valid fixtures validate" % count)

    corrupt_dir = os.path.join(fixture_dir, "corrupt")
    rejected = 0
    for fn in sorted(os.listdir(corrupt_dir)):
        names = schemas_for(fn)
        if not fn.endswith(".json") or names is None:
            continue
        with open(os.path.join(corrupt_dir, fn), "rb") as f:
            raw = f.read()
        try:
            doc = strict_load(raw)
        except ValueError:
            continue  # not JSON at all: nothing for a schema to say
        errs = check(names, doc)
        if errs:
            rejected += 1
            if fn in SEMANTIC_ONLY:
                print("note: corrupt/%s is rejected by the schema too (%s)" % (fn, errs[0].message))
        elif fn not in SEMANTIC_ONLY:
            failures += 1
            print("FAIL corrupt/%s: accepted by the schema" % fn)
    print("%d corrupt fixtures rejected by the schemas" % rejected)
    if rejected < MIN_REJECTED:
        print("FAIL: expected at least %d rejections" % MIN_REJECTED)
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
