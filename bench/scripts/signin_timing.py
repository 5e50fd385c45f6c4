#!/usr/bin/env python3
"""Sign-in timing: does a failed `POST /auth/login` tell a known email from an
unknown one? Alternates the two kinds of attempt, one request at a time, and
prints both distributions (milliseconds).

    python3 bench/scripts/signin_timing.py http://127.0.0.1:8103/ admin@example.com 300

Run the server with FHIRGATE_LOCKOUT_THRESHOLD=1000 and a high
FHIRGATE_AUTH_RATE_LIMIT so that neither a lockout nor the rate limit answers.
"""
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid


def attempt(base, email):
    body = json.dumps({"email": email, "password": "not the password " + uuid.uuid4().hex,
                       "scope": "openid"}).encode()
    request = urllib.request.Request(base + "auth/login", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        urllib.request.urlopen(request).read()
        status = 200
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    elapsed = (time.perf_counter() - started) * 1000
    if status != 400:
        sys.exit(f"expected 400 for {email}, got {status}: raise the lockout threshold and rate limit")
    return elapsed


def row(name, samples):
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return (f"| {name} | {statistics.mean(ordered):.1f} ms | {pick(0.10):.1f} | {pick(0.50):.1f} | "
            f"{pick(0.90):.1f} | {pick(0.99):.1f} | {statistics.stdev(ordered):.1f} |")


def main():
    base, known, pairs = sys.argv[1].rstrip("/") + "/", sys.argv[2], int(sys.argv[3])
    for _ in range(10):  # warm-up: connections, caches, the dummy hash
        attempt(base, known)
        attempt(base, f"nobody-{uuid.uuid4().hex}@example.com")
    unknown, wrong = [], []
    for i in range(pairs):
        # Alternate which goes first, so neither always follows the other.
        order = [("unknown", f"nobody-{uuid.uuid4().hex}@example.com"), ("known", known)]
        for kind, email in (order if i % 2 == 0 else order[::-1]):
            (unknown if kind == "unknown" else wrong).append(attempt(base, email))
    print("| attempt | mean | p10 | p50 | p90 | p99 | stdev |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(row("unknown email", unknown))
    print(row("known email, wrong password", wrong))
    diff = statistics.mean(wrong) - statistics.mean(unknown)
    error = (statistics.variance(wrong) / len(wrong) + statistics.variance(unknown) / len(unknown)) ** 0.5
    print(f"\nmean difference (known - unknown): {diff:+.2f} ms, standard error {error:.2f} ms")


if __name__ == "__main__":
    main()
