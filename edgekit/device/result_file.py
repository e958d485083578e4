"""Read a device's result file with bounded memory: raw samples thinned while parsing, then validated.

Why a reader of our own: `json.load` needs the whole text in memory and turns every raw sample into a
Python float (a 200 MB result cost ~500 MB of host memory per device, the text and two copies of the
numbers); the standard library has no incremental parser, and a streaming JSON package would be a new
dependency of the small base install for one file format. The result is one object whose bulk is
`samples_ms` (flat arrays of numbers), so this reader needs only a little: it reads the file in 256 KiB
chunks, walks the top-level object and `samples_ms` key by key, checks each samples array chunk by
chunk (numbers between commas, nothing else) and keeps every k-th value, and
hands each other field's raw JSON (at most `MAX_OTHER_BYTES` in all) to `json.loads`. Fields the
contract does not define are scanned and dropped. `validate_result` then checks every field as for any
result.

Limits: a result file may be `max_result_bytes()` long (256 MB; `EDGEKIT_MAX_RESULT_MB` raises it),
checked before and while downloading; each stage keeps at most `HOST_SAMPLES` raw samples (evenly
spaced, a note in `warnings` says so; the `latency_ms` summaries are the device's, over every sample);
and `RESULT_BUDGET` caps the bytes of results that all transports of this process fetch and read at
once, so devices finishing together take turns instead of each holding a big result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from typing import IO, Any

from edgekit.device.results import MAX_SAMPLES, OPTIONAL_STAGES, RESULT_FIELDS, STAGES, validate_result
from edgekit.errors import RunError

DEFAULT_MAX_RESULT_MB = 256
MAX_RESULT_ENV = "EDGEKIT_MAX_RESULT_MB"
HOST_SAMPLES = 50_000  # raw samples kept per stage: plenty for the report's histograms, ~2 MB per result
MAX_OTHER_BYTES = 64 << 20  # raw JSON of every field but samples_ms (200,000 polygons fit)
FETCH_BUDGET_BYTES = 256 << 20  # result bytes fetched and read at once, over every device of this process
_CHUNK = 256 << 10  # a chunk of short samples splits into ~30,000 items at most
_MAX_TOKEN = 4096  # longest key or scalar
_WS = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\.)*"')
_SCALAR = re.compile(rb"[^ \t\r\n,\]}]+")
_STRUCTURAL = re.compile(rb'["\[\]{}]')
_IN_STRING = re.compile(rb'\\.|"', re.DOTALL)
_NUMBER = rb"[ \t\r\n]*-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,3})?[ \t\r\n]*"
_NUMBER_ITEM = re.compile(_NUMBER)  # matched item by item: one pattern over a whole chunk costs ~26 MB of stack


class ResultTooBig(RunError):
    """A result file longer than the limit (found before or while reading it)."""


def max_result_bytes() -> int:
    """The longest result file the host reads: `EDGEKIT_MAX_RESULT_MB` megabytes, 256 by default."""
    text = os.environ.get(MAX_RESULT_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RESULT_MB << 20
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not 0 < megabytes <= 1 << 20:
        raise RunError(f"{MAX_RESULT_ENV}={text!r} is not a size in megabytes (like 512)")
    return int(megabytes * (1 << 20))


def too_big_message(what: str, size: int, limit: int) -> str:
    """Why a result was refused for its size, and the two ways out."""
    return (
        f"the result {what} is {size / (1 << 20):.1f} MB, more than the host reads ({limit / (1 << 20):.4g} MB); "
        f"raise the limit with {MAX_RESULT_ENV}=<megabytes>, or run with keep_samples false or fewer frames"
    )


class CappedWriter:
    """A binary file that refuses to grow past `limit` bytes (ResultTooBig): a result that grows on the
    device while it is downloaded is cut off there."""

    def __init__(self, handle: IO[bytes], limit: int, what: str) -> None:
        self.handle, self.limit, self.what, self.written = handle, limit, what, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise ResultTooBig(too_big_message(self.what, self.written, self.limit) + " (it grew while downloading)")
        return self.handle.write(data)


class ResultBudget:
    """Bytes of results held at once by every transport of this process; `hold(n)` waits for room.

    A result bigger than the whole budget takes all of it, so it waits for the others and goes alone."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        amount = max(0, min(nbytes, self.total))
        with self._room:
            self._room.wait_for(lambda: self.used + amount <= self.total)
            self.used += amount
        try:
            yield
        finally:
            with self._room:
                self.used -= amount
                self._room.notify_all()


RESULT_BUDGET = ResultBudget(FETCH_BUDGET_BYTES)


def read_result(handle: IO[bytes], *, run_id: str, keep_samples: int = HOST_SAMPLES) -> dict[str, Any]:
    """The validated result in the binary file `handle` (see the module's docstring); RunError naming what
    is wrong. Raw samples beyond `keep_samples` per stage are thinned, with a line in `warnings`."""
    scanner = _Scanner(handle)
    data: dict[str, Any] = {}
    thinned: dict[str, tuple[int, int, int]] = {}
    budget = MAX_OTHER_BYTES
    scanner.expect(b"{")
    for key in scanner.members():
        if key == "samples_ms" and scanner.peek() == b"{":
            data[key], thinned = _read_samples(scanner, keep_samples)
        elif key in RESULT_FIELDS:
            raw = scanner.raw_value(budget)
            budget -= len(raw)
            data[key] = _loads(raw, key)
        else:
            scanner.raw_value(MAX_OTHER_BYTES, keep=False)  # not in the contract: checked as JSON, dropped
    scanner.end()
    clean = validate_result(data, run_id=run_id)
    kept = {stage: counts for stage, counts in thinned.items() if stage in clean["samples_ms"]}
    if kept:
        parts = ", ".join(f"{stage} {n:,} of {total:,} (every {step})" for stage, (n, total, step) in kept.items())
        clean["warnings"].append(
            f"raw samples thinned on the host to at most {keep_samples:,} per stage, evenly spaced: {parts}; "
            "the latency summaries are the device's, over every sample"
        )
    return clean


def _loads(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RunError(f"device result field {where} is not valid JSON ({str(exc)[:200]})") from None


def _read_samples(scanner: _Scanner, keep: int) -> tuple[dict[str, Any], dict[str, tuple[int, int, int]]]:
    """samples_ms: each known stage's numbers thinned to `keep`; (samples, {stage: (kept, total, step)})."""
    samples: dict[str, Any] = {}
    thinned: dict[str, tuple[int, int, int]] = {}
    scanner.expect(b"{")
    for stage in scanner.members():
        known = stage in STAGES or stage in OPTIONAL_STAGES
        if scanner.peek() != b"[":
            samples[stage] = _loads(scanner.raw_value(_MAX_TOKEN), f"samples_ms.{stage[:64]}")  # the validator says
            continue
        values, total, step = scanner.numbers(keep if known else 0, f"samples_ms.{stage[:64]}")
        if known:
            samples[stage] = values
            if step > 1:
                thinned[stage] = (len(values), total, step)
    return samples, thinned


class _Scanner:
    """A JSON reader over a binary file, one 256 KiB chunk at a time; offsets in messages are bytes."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.buf = b""
        self.pos = 0
        self.offset = 0  # of buf[0] in the file
        self.eof = False

    def _fill(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        data = self.handle.read(_CHUNK)
        if not data:
            self.eof = True
            return False
        self.offset += self.pos
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def _bad(self, what: str) -> RunError:
        return RunError(f"the result file is not valid JSON: {what} at byte {self.offset + self.pos}")

    def peek(self) -> bytes:
        """The next byte after whitespace (b"" at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos : self.pos + 1]
            if not self._fill():
                return b""

    def expect(self, char: bytes) -> None:
        if self.peek() != char:
            raise self._bad(f"expected {char.decode()!r}")
        self.pos += 1

    def end(self) -> None:
        if self.peek() != b"":
            raise self._bad("more after the result object")

    def _token(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        """One key or scalar, read across chunks; at most _MAX_TOKEN bytes."""
        self.peek()
        while True:
            match = pattern.match(self.buf, self.pos)
            if match and match.end() < len(self.buf):
                break  # a match reaching the end of the buffer may go on in the next chunk
            if len(self.buf) - self.pos > _MAX_TOKEN or not self._fill():
                break
        if match is None or len(match.group()) > _MAX_TOKEN:
            raise self._bad(f"expected {what}")
        self.pos = match.end()
        return match.group()

    def members(self) -> Iterator[str]:
        """The keys of an object whose `{` was read; the caller reads each value before the next key."""
        if self.peek() == b"}":
            self.pos += 1
            return
        while True:
            key = json.loads(self._token(_STRING, "a key in double quotes"))
            self.expect(b":")
            yield key
            following = self.peek()
            self.pos += 1
            if following == b"}":
                return
            if following != b",":
                self.pos -= 1
                raise self._bad("expected ',' or '}'")

    def raw_value(self, limit: int, *, keep: bool = True) -> bytes:
        """The raw bytes of the next value (b"" when `keep` is false); RunError past `limit` bytes."""
        if self.peek() not in (b"{", b"[", b'"'):
            return self._token(_SCALAR, "a value")
        out = bytearray()
        seen, depth, in_string = 0, 0, False
        while True:
            pattern = _IN_STRING if in_string else _STRUCTURAL
            match = pattern.search(self.buf, self.pos)
            if match is None:
                # a backslash ending the chunk escapes the next chunk's first byte: keep it for then
                dangling = in_string and self.pos < len(self.buf) and self.buf.endswith(b"\\")
                stop = len(self.buf) - (1 if dangling else 0)
                seen += stop - self.pos
                if keep:
                    out += self.buf[self.pos : stop]
                self.pos = stop
                if not self._fill():
                    raise self._bad("the file ends inside a value")
            else:
                token = match.group()
                seen += match.end() - self.pos
                if keep:
                    out += self.buf[self.pos : match.end()]
                self.pos = match.end()
                if token == b'"':
                    in_string = not in_string
                    if not in_string and depth == 0:  # the value was a string
                        return bytes(out)
                elif not in_string:
                    depth += 1 if token in (b"{", b"[") else -1
                    if depth == 0:
                        return bytes(out)
            if seen > limit:
                mb = MAX_OTHER_BYTES >> 20
                raise RunError(f"the result's fields other than samples_ms hold more than {mb} MB of JSON")

    def numbers(self, keep: int, where: str) -> tuple[list[float], int, int]:
        """An array of numbers, every `step`-th kept so at most `keep` remain: (kept, total, step)."""
        self.expect(b"[")
        kept: list[float] = []
        total, step = 0, 1
        if self.peek() == b"]":
            self.pos += 1
            return kept, 0, 1
        while True:
            close = self.buf.find(b"]", self.pos)
            cut = close if close >= 0 else self.buf.rfind(b",", self.pos) + 1
            if cut <= 0:  # not one whole number in the buffer yet
                if len(self.buf) - self.pos > _MAX_TOKEN or not self._fill():
                    raise RunError(f"device result field {where} is not a list of numbers")
                continue
            items = self.buf[self.pos : cut].split(b",")
            if close < 0:
                items.pop()  # empty: the cut is just after a comma
            if not all(map(_NUMBER_ITEM.fullmatch, items)):
                raise RunError(f"device result field {where} holds something other than finite numbers")
            if keep:
                kept += [float(v) for v in items[(-total) % step :: step]]
                while len(kept) > keep:  # halve what is kept: still evenly spaced, every 2*step-th
                    kept, step = kept[::2], step * 2
            total += len(items)
            if total > MAX_SAMPLES:
                raise RunError(f"device result field {where} is not a list of at most {MAX_SAMPLES} samples")
            self.pos = cut + (1 if close >= 0 else 0)
            if close >= 0:
                return kept, total, step
