"""`python -m broker batch calls.jsonl -o results.jsonl`: submit a batch, show live progress, stream the results.

`--from openai-batch|anthropic-batch|openai|anthropic|gemini|openai-responses` submits a model's output file
instead (`web.toolcall_batches`): its skipped lines are listed, and each result line is the provider's answer.

The results stream is resumed from the last result received (`?after=<seq>`) when the
connection drops, RESUME_ATTEMPTS times in a row at most. Exit 0 only when every call is done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
from contextlib import closing
from typing import Any

from broker.results import outcome_kind
from cli.api import post_expecting
from client.http_api import base_url, stream_lines

RESUME_ATTEMPTS = 5  # consecutive failed reconnects of a results stream before the batch command gives up


class Progress:
    """One self-rewriting status line on a terminal; a plain line every few seconds into a log or pipe."""

    BAR = 24

    def __init__(self, total: int, stream: Any, enabled: bool = True) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else 5.0
        self.started = self.last = time.monotonic()
        self.drawn = False

    def line(self, done: int, failed: int, cancelled: int) -> str:
        finished = done + failed + cancelled
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = finished / elapsed
        left = self.total - finished
        eta = "-" if not left else (duration(left / rate) if rate > 0 else "?")
        filled = self.BAR * finished // max(self.total, 1)
        extra = f"  cancelled {cancelled}" if cancelled else ""
        return (f"[{'#' * filled}{'.' * (self.BAR - filled)}] {finished}/{self.total} "
                f"{100 * finished / max(self.total, 1):3.0f}%  done {done}  failed {failed}{extra}  "
                f"{rate:.0f}/s  ETA {eta}")

    def update(self, done: int, failed: int, cancelled: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        text = self.line(done, failed, cancelled)
        self.stream.write(f"\r{text}\x1b[K" if self.tty else f"{text}\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def answer_kind(line: dict[str, Any]) -> str:
    """The counter of a result answered in a provider's shape (`--from`): cancelled, failed or done."""
    return "cancelled" if line.get("cancelled") else ("failed" if line.get("is_error") else "done")


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def command(args: argparse.Namespace) -> int:
    url = base_url(args.url)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()  # noqa: SIM115
    except OSError as err:
        print(f"cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    source = getattr(args, "source", None)
    content_type = "application/json" if args.file.endswith(".json") else "application/x-ndjson"
    params = {"timeout_s": args.timeout, "from": source}
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    query = f"?{query}" if query else ""
    began = time.monotonic()
    payload = post_expecting(202, url, f"/v1/batches{query}", data, content_type, 600, args.key)
    if payload is None:
        return 1
    batch_id, total = payload["batch_id"], int(payload["total"])
    results_url = urllib.parse.urljoin(url + "/", payload["results_url"])
    print(f"batch {batch_id}: {total} calls queued", file=sys.stderr)
    if payload.get("skipped_count"):
        print(f"{payload['skipped_count']} line(s) of {args.file} skipped (nothing to run):", file=sys.stderr)
        for skipped in payload["skipped"]:
            print(f"  line {skipped['line']} {skipped.get('custom_id', '')}: {skipped['reason']}", file=sys.stderr)

    counts = {"done": 0, "failed": 0, "cancelled": 0}
    progress = Progress(total, sys.stderr, enabled=not args.quiet)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    received, last_seq, failures = 0, None, 0
    try:
        while received < total:
            after = f"?after={last_seq}" if last_seq else ""
            before = received
            problem: str | None = "the stream ended early"
            try:
                with closing(stream_lines(results_url + after, args.key, timeout=120)) as lines:
                    for raw in lines:
                        outcome = json.loads(raw)
                        out.write(raw.decode("utf-8").rstrip("\n") + "\n")
                        received += 1
                        last_seq = outcome.get("seq", last_seq)
                        counts[answer_kind(outcome) if "answer" in outcome else outcome_kind(outcome)] += 1
                        progress.update(counts["done"], counts["failed"], counts["cancelled"])
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    progress.close()
                    print(f"batch {batch_id} is gone (expired?) after {received} results", file=sys.stderr)
                    break
                problem = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError, ValueError) as err:
                problem = str(getattr(err, "reason", err))
            if received >= total:
                break
            failures = 0 if received > before else failures + 1  # reconnect from the last result we have
            if failures > RESUME_ATTEMPTS:
                progress.close()
                print(f"results stream lost ({problem}); resume with GET {results_url}?after={last_seq}",
                      file=sys.stderr)
                return 1
            time.sleep(min(8.0, 0.25 * 2**failures))
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: batch {batch_id} keeps running; cancel it with "
              f"`curl -X DELETE {url}/v1/batches/{batch_id}`", file=sys.stderr)
        raise
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    progress.update(counts["done"], counts["failed"], counts["cancelled"], force=True)
    progress.close()
    elapsed = time.monotonic() - began
    where = "" if args.output == "-" else f" -> {args.output}"
    print(f"batch {batch_id}: {received}/{total} results, {counts['done']} done, {counts['failed']} failed, "
          f"{counts['cancelled']} cancelled in {duration(elapsed)} ({received / max(elapsed, 1e-9):.0f}/s){where}",
          file=sys.stderr)
    return 0 if received == total and counts["done"] == total else 1
