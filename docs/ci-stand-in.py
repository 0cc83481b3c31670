#!/usr/bin/env python3
"""A stand-in for CircleCI on 127.0.0.1: answers every POST with 201 and a
pipeline, and prints what it received. Usage: python3 docs/ci-stand-in.py PORT"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class StandIn(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"stand-in: {self.command} {self.path} {body.decode()}", flush=True)
        reply = json.dumps({"id": "5034460f-c7c4-4c43-9457-de07e2029e7b", "state": "created",
                            "number": 1, "created_at": "2026-01-01T00:00:00Z"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), StandIn).serve_forever()
