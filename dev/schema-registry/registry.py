#!/usr/bin/env python3
"""Schema Registry stand-in -- DEV/TEST-ONLY.

    dev/test-only stand-in; production uses Confluent Schema Registry.

Confluent's Schema Registry is not available from Maven Central, so local dev
and tests run this small in-memory server instead. It speaks the subset of the
Confluent REST API that serializers/deserializers use, with Confluent's JSON
shapes and error bodies ({"error_code": 40401, "message": ...}). It does NOT
check compatibility between versions (every new schema is accepted), and it
only checks that AVRO/JSON schemas are JSON.

Ids are global: the same schema (compared as normalized parsed JSON, plus type
and references) gets the same id under every subject. With --data FILE the
state is rewritten atomically after every change and reloaded at start, so the
process can be killed and restarted without losing ids.

With --auth-port PORT --basic-auth-file FILE the same process (same state) also
serves on a second port where every request needs HTTP Basic credentials equal
to the one line `user:password` in FILE (a file, so the secret is not in `ps`);
otherwise it answers 401 {"error_code": 401, "message": "Unauthorized"}, as
Confluent's basic auth does. The --port server stays open.

Usage: registry.py [--host 127.0.0.1] [--port 8081] [--data FILE] [--verbose]
                   [--auth-port PORT --basic-auth-file FILE]
Python 3 standard library only.
"""

import argparse
import base64
import hmac
import json
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
LEVELS = {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD",
          "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"}


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def subject_not_found(subject):
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


class Registry:
    """All state, guarded by one lock; persisted to `path` if given."""

    def __init__(self, path=None):
        self.path = path
        self.lock = threading.Lock()
        self.schemas = {}    # id -> {"schema", "schemaType", "references"}
        self.by_key = {}     # identity key -> id
        self.subjects = {}   # subject -> [{"version", "id", "deleted"}]
        self.config = {"compatibilityLevel": "BACKWARD"}
        self.subject_config = {}
        if path and os.path.exists(path):
            self._load()

    # -- persistence -------------------------------------------------------
    def _load(self):
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        for sid, s in data["schemas"].items():
            self.schemas[int(sid)] = s
            self.by_key[self._key(s)] = int(sid)
        self.subjects = data["subjects"]
        self.config = data["config"]
        self.subject_config = data.get("subject_config", {})

    def _save(self):
        if not self.path:
            return
        data = {"schemas": self.schemas, "subjects": self.subjects,
                "config": self.config, "subject_config": self.subject_config}
        d = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".registry-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: readers see old or new, never half

    # -- schema identity ---------------------------------------------------
    @staticmethod
    def _normalize(schema, schema_type):
        """Returns the stored (compact) form; raises 42201 if unparsable."""
        if schema_type == "PROTOBUF":
            return schema.strip()
        try:
            parsed = json.loads(schema)
        except ValueError as e:
            raise ApiError(422, 42201, f"Invalid schema: {e}") from None
        if schema_type == "AVRO" and not isinstance(parsed, (str, list, dict)):
            raise ApiError(422, 42201, "Invalid schema: not an Avro schema")
        return json.dumps(parsed, separators=(",", ":"))

    @staticmethod
    def _key(s):
        text = s["schema"]
        if s["schemaType"] != "PROTOBUF":
            # key order inside JSON objects is not significant
            text = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
        refs = json.dumps(s.get("references") or [], sort_keys=True)
        return f"{s['schemaType']}\0{text}\0{refs}"

    def _parse_request(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str) \
                or not body["schema"].strip():
            raise ApiError(422, 42201, "Empty schema")
        schema_type = (body.get("schemaType") or "AVRO").upper()
        if schema_type not in ("AVRO", "JSON", "PROTOBUF"):
            raise ApiError(422, 42201, f"Invalid schema type {schema_type}")
        return {"schema": self._normalize(body["schema"], schema_type),
                "schemaType": schema_type,
                "references": body.get("references") or []}

    def _live_versions(self, subject):
        versions = [v for v in self.subjects.get(subject, []) if not v["deleted"]]
        if not versions:
            raise subject_not_found(subject)
        return versions

    def _describe(self, subject, v):
        s = self.schemas[v["id"]]
        out = {"subject": subject, "version": v["version"], "id": v["id"],
               "schema": s["schema"]}
        return self._decorate(out, s)

    @staticmethod
    def _decorate(out, s):
        # Confluent omits schemaType for AVRO and references when empty
        if s["schemaType"] != "AVRO":
            out["schemaType"] = s["schemaType"]
        if s.get("references"):
            out["references"] = s["references"]
        return out

    # -- operations --------------------------------------------------------
    def register(self, subject, body):
        s = self._parse_request(body)
        with self.lock:
            key = self._key(s)
            sid = self.by_key.get(key)
            versions = self.subjects.setdefault(subject, [])
            if sid is not None and any(v["id"] == sid and not v["deleted"] for v in versions):
                return {"id": sid}
            if sid is None:
                sid = max(self.schemas, default=0) + 1
                self.schemas[sid] = s
                self.by_key[key] = sid
            versions.append({"version": max((v["version"] for v in versions), default=0) + 1,
                             "id": sid, "deleted": False})
            self._save()
            return {"id": sid}

    def lookup(self, subject, body):
        s = self._parse_request(body)
        with self.lock:
            versions = self._live_versions(subject)
            sid = self.by_key.get(self._key(s))
            for v in versions:
                if v["id"] == sid:
                    return self._describe(subject, v)
            raise ApiError(404, 40403, "Schema not found")

    def schema_by_id(self, sid):
        with self.lock:
            s = self.schemas.get(sid)
            if s is None:
                raise ApiError(404, 40403, f"Schema {sid} not found")
            return self._decorate({"schema": s["schema"]}, s)

    def versions_of_id(self, sid):
        with self.lock:
            if sid not in self.schemas:
                raise ApiError(404, 40403, f"Schema {sid} not found")
            return [{"subject": subj, "version": v["version"]}
                    for subj, vs in sorted(self.subjects.items())
                    for v in vs if v["id"] == sid and not v["deleted"]]

    def list_subjects(self, deleted):
        with self.lock:
            return sorted(s for s, vs in self.subjects.items()
                          if vs and (deleted or any(not v["deleted"] for v in vs)))

    def list_versions(self, subject):
        with self.lock:
            return [v["version"] for v in self._live_versions(subject)]

    def get_version(self, subject, version):
        with self.lock:
            versions = self._live_versions(subject)
            if version in ("latest", "-1"):
                return self._describe(subject, versions[-1])
            try:
                n = int(version)
                if n < 1:
                    raise ValueError
            except ValueError:
                raise ApiError(422, 42202, f"The specified version '{version}' is not a valid "
                               "version id. Allowed values are between [1, 2^31-1] and "
                               "the string \"latest\"") from None
            for v in versions:
                if v["version"] == n:
                    return self._describe(subject, v)
            raise ApiError(404, 40402, f"Version {n} not found.")

    def delete_subject(self, subject, permanent):
        with self.lock:
            vs = self.subjects.get(subject)
            if not vs:
                raise subject_not_found(subject)
            if permanent:
                del self.subjects[subject]
                deleted = [v["version"] for v in vs]
            else:
                deleted = [v["version"] for v in vs if not v["deleted"]]
                if not deleted:
                    raise ApiError(404, 40404, f"Subject '{subject}' was soft deleted."
                                   "Set permanent=true to delete permanently")
                for v in vs:
                    v["deleted"] = True
            self._save()
            return deleted

    def get_config(self, subject=None):
        with self.lock:
            # as Confluent with defaultToGlobal=true: fall back to the global level
            return dict(self.subject_config.get(subject) or self.config)

    def set_config(self, body, subject=None):
        level = body.get("compatibility") if isinstance(body, dict) else None
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise ApiError(422, 42203, "Invalid compatibility level. Valid values are "
                           + ", ".join(sorted(LEVELS)))
        with self.lock:
            if subject is None:
                self.config = {"compatibilityLevel": level.upper()}
            else:
                self.subject_config[subject] = {"compatibilityLevel": level.upper()}
            self._save()
        return {"compatibility": level.upper()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients pool connections
    server_version = "dev-schema-registry-stand-in"
    registry = None  # set in main()
    verbose = False
    credentials = None  # b"user:password": HTTP Basic required (the --auth-port server)

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def _send(self, status, payload, headers=()):
        body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self):
        if self.credentials is None:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except ValueError:  # binascii.Error: not base64
            return False
        # constant time: a mismatch must not tell how many leading bytes were right
        return hmac.compare_digest(given, self.credentials) and scheme.lower() == "basic"

    def _body(self):
        if not self.raw_body:
            return {}
        try:
            return json.loads(self.raw_body)
        except ValueError as e:
            raise ApiError(400, 400, f"Unexpected character in request body: {e}") from None

    def _dispatch(self, method):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        flag = lambda name: query.get(name, "").lower() == "true"
        # split before decoding, so an encoded '/' stays inside its segment
        p = [unquote(seg) for seg in url.path.strip("/").split("/")] if url.path.strip("/") else []
        r = self.registry
        route = (method, len(p), p[0] if p else "")

        if route == ("GET", 0, ""):
            return {}
        if route == ("GET", 1, "subjects"):
            return r.list_subjects(flag("deleted"))
        if route == ("GET", 2, "schemas") and p[1] == "types":
            return ["JSON", "PROTOBUF", "AVRO"]
        if p[:2] == ["schemas", "ids"] and method == "GET" and len(p) in (3, 4):
            try:
                sid = int(p[2])
            except ValueError:
                raise ApiError(404, 40403, f"Schema {p[2]} not found") from None
            if len(p) == 3:
                return r.schema_by_id(sid)
            if p[3] == "versions":
                return r.versions_of_id(sid)
        if p[:1] == ["subjects"] and len(p) >= 2:
            subject = p[1]
            if len(p) == 2 and method == "POST":
                return r.lookup(subject, self._body())
            if len(p) == 2 and method == "DELETE":
                return r.delete_subject(subject, flag("permanent"))
            if len(p) == 3 and p[2] == "versions" and method == "POST":
                return r.register(subject, self._body())
            if len(p) == 3 and p[2] == "versions" and method == "GET":
                return r.list_versions(subject)
            if len(p) in (4, 5) and p[2] == "versions" and method == "GET":
                described = r.get_version(subject, p[3])
                if len(p) == 4:
                    return described
                if p[4] == "schema":
                    return described["schema"]
        if p[:1] == ["config"] and len(p) in (1, 2):
            subject = p[1] if len(p) == 2 else None
            if method == "GET":
                return r.get_config(subject)
            if method == "PUT":
                return r.set_config(self._body(), subject)
        raise ApiError(404, 404, "HTTP 404 Not Found")

    def _handle(self, method):
        # always drain the body, or the next request on this connection breaks
        n = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(n) if n else b""
        if not self._authorized():
            self._send(401, {"error_code": 401, "message": "Unauthorized"},
                       [("WWW-Authenticate", 'Basic realm="schema-registry"')])
            return
        try:
            self._send(200, self._dispatch(method))
        except ApiError as e:
            self._send(e.status, {"error_code": e.code, "message": e.message})
        except Exception as e:  # keep serving; report like Confluent's 50001
            self._send(500, {"error_code": 50001, "message": f"Error in the backend data store: {e}"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--data", help="persist state to this JSON file")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    ap.add_argument("--auth-port", type=int,
                    help="also serve here, requiring the HTTP Basic credentials of --basic-auth-file")
    ap.add_argument("--basic-auth-file", help="file holding one line user:password")
    args = ap.parse_args()
    if (args.auth_port is None) != (args.basic_auth_file is None):
        ap.error("--auth-port and --basic-auth-file go together")
    credentials = None
    if args.basic_auth_file:
        with open(args.basic_auth_file, encoding="utf-8") as f:
            credentials = f.read().strip().encode()
        if b":" not in credentials:
            ap.error("--basic-auth-file must hold user:password")

    Handler.registry = Registry(args.data)
    Handler.verbose = args.verbose
    ThreadingHTTPServer.request_queue_size = 128  # default 5 drops connections under load
    servers = [ThreadingHTTPServer((args.host, args.port), Handler)]
    if credentials:
        # same Registry (class attribute inherited), only the credential check differs
        auth_handler = type("AuthHandler", (Handler,), {"credentials": credentials})
        servers.append(ThreadingHTTPServer((args.host, args.auth_port), auth_handler))
    for server in servers:
        server.daemon_threads = True
    ports = f"http://{args.host}:{servers[0].server_port}"
    if credentials:
        ports += f" and, with basic auth, http://{args.host}:{servers[1].server_port}"
    sys.stderr.write(
        f"schema-registry stand-in listening on {ports} "
        f"(dev/test-only stand-in; production uses Confluent Schema Registry; "
        f"data={args.data or 'in-memory'}, {len(Handler.registry.schemas)} schemas loaded)\n")
    sys.stderr.flush()
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
