#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz harnesses in tests/fuzz (run from anywhere; the files are
committed, this script only documents and reproduces them).

bundle/      inputs of bundle_fuzz: whole bundles (header, index, contents) as otactl builds
             them, an index on its own, a path.
controller/  inputs of controller_fuzz beyond tests/fixtures/proto/valid: records separated by
             0x1E, each led by a topic selector byte (bits 0-1: presence, event, chunk request,
             other topic; bits 2-3: device dev-0001..dev-0003 or a 64-character id; bit 4:
             retained); "dep-2025-001" and "3f2a9c1b7d4e8f60" stand for the controller's own
             deployment and image ids.
"""
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def bundle(files, deletes=()):
    """The bytes ota::proto::bundle::build makes: files sorted by path, keys sorted."""
    files = sorted(files, key=lambda f: f[0])
    index = {"delete": sorted(deletes),
             "files": [{"mode": mode, "path": path, "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data)} for path, mode, data in files]}
    text = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    return b"OTAB" + struct.pack("<II", 1, len(text)) + text + b"".join(f[2] for f in files)


def write(path, data):
    with open(os.path.join(HERE, path), "wb") as f:
        f.write(data)


app = [("main.py", 0o644, b"import lib.util\nprint(lib.util.f())\n"),
       ("lib/util.py", 0o644, b"def f():\n    return 2\n"),
       ("lib/new.py", 0o755, b"#!/usr/bin/env python3\n"),
       ("assets/logo.bin", 0o644, bytes(range(64))),
       ("empty.txt", 0o600, b"")]
write("bundle/app.otab", bundle(app, ["old.py", "legacy"]))
write("bundle/empty.otab", bundle([]))
write("bundle/delete_only.otab", bundle([], ["lib", "cache/tmp"]))
whole = bundle(app[:2], ["old.py"])
write("bundle/index.json", whole[12:12 + struct.unpack("<I", whole[8:12])[0]])
write("bundle/path.txt", b"lib/a.b_c+d@e=f,g~h-i/x.py")
# Indexes on their own (the harness puts a header in front and contents behind): most
# mutations land here, where a whole bundle's length field and hashes would stop them.
def index_of(b):
    return b[12:12 + struct.unpack("<I", b[8:12])[0]]
write("bundle/index_app.json", index_of(bundle(app, ["old.py", "legacy"])))
write("bundle/index_deep.json", index_of(bundle(
    [("a/b/c/d/e.py", 0o644, b"x"), ("a/b/f", 0o600, b""), ("g~h@i=j,k+l", 0o777, b"yz")],
    ["a/old", "z"])))
write("bundle/index_escapes.json",
      b'{"delete":["\u006cib"],"files":[{"path":"m\u0061in.py","size":0,'
      b'"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}')

PRESENCE, EVENT, REQ, OTHER = 0, 1, 2, 3


def rec(kind, dev, payload, retained=False):
    return bytes([kind | dev << 2 | (0x10 if retained else 0)]) + payload.encode()


def msg(**m):
    return json.dumps(dict(v=1, **m), separators=(",", ":"))


DEP, IMG = "dep-2025-001", "3f2a9c1b7d4e8f60"
hello = msg(type="hello", device="dev-0001", hw="esp32-s3-devkit", version="1.4.1", slot="a",
            slot_state="confirmed", free=2097152, counter=3)
# A whole update of dev-0001: accept, downloading, requests, progress, verifying, result.
update = [rec(PRESENCE, 0, hello),
          rec(EVENT, 0, msg(type="accept", seq=100, deployment=DEP)),
          rec(EVENT, 0, msg(type="status", seq=101, deployment=DEP, state="downloading")),
          rec(REQ, 0, msg(type="chunk_req", deployment=DEP, image=IMG, first=0, count=4)),
          rec(REQ, 0, msg(type="chunk_req", deployment=DEP, image=IMG, first=0, count=5,
                          bitmap="11")),
          rec(EVENT, 0, msg(type="progress", seq=102, deployment=DEP, received=20000,
                            total=20000)),
          rec(EVENT, 0, msg(type="status", seq=103, deployment=DEP, state="verifying")),
          rec(EVENT, 0, msg(type="result", seq=104, deployment=DEP, ok=True, reason="ok",
                            version="1.4.2"))]
write("controller/update_dev1.bin", b"\x1e".join(update))
# A group member (dev-0002, group "canary"): declines, then defers, then a failed result.
member = [rec(EVENT, 1, msg(type="decline", seq=7, deployment=DEP, reason="no_space")),
          rec(EVENT, 1, msg(type="defer", seq=8, deployment=DEP, reason="busy",
                            retry_after=60)),
          rec(EVENT, 1, msg(type="result", seq=9, deployment=DEP, ok=False,
                            reason="self_test_failed", version="1.4.1"))]
write("controller/group_member.bin", b"\x1e".join(member))
# Presence: heartbeat, retained hello, offline; a hello naming another device.
write("controller/presence.bin", b"\x1e".join([
    rec(PRESENCE, 2, msg(type="heartbeat", device="dev-0003", state="idle", uptime=5)),
    rec(PRESENCE, 2, hello.replace("dev-0001", "dev-0003"), retained=True),
    rec(PRESENCE, 2, msg(type="offline")),
    rec(PRESENCE, 1, hello)]))
# Topics the controller does not serve, a stale attempt suffix.
write("controller/elsewhere.bin", b"\x1e".join([
    rec(OTHER, 0, msg(type="accept", seq=1, deployment=DEP)),
    rec(REQ, 3, msg(type="chunk_req", deployment=DEP + ".7", image=IMG, first=4, count=1))]))
