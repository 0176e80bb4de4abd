"""Reading source files line by line safely: the ingest stage's file layer and its error catalogue.

Every failure a person can fix by hand is a `DataSourceError` that names the file, the line or
column, and the fix: a missing or empty file, a folder with no data files, a wrong delimiter,
a missing or renamed column, non-UTF-8 bytes where UTF-8 is declared, a truncated last line or
gzip stream. Lines that are merely malformed (too few fields, a number that does not parse,
broken JSON) are returned as `Malformed` records, which ingest keeps in data/raw/malformed and
the clean stage quarantines, up to `ingest.max_bad_line_share` of a file; past it the run stops.

Longer than most modules on purpose: it is the one catalogue of file-level errors every reader
shares (encodings, delimiters, JSON lines, malformed-line bookkeeping); split, the catalogue would be too.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io as stdio
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.core.errors import DataSourceError

log = logging.getLogger(__name__)

DELIMITERS = {"\t": "tab", "|": "pipe '|'", "::": "'::'", ",": "comma", ";": "semicolon"}
MALFORMED_COLUMNS = ["table", "file", "line", "text", "error"]
WINDOW_BYTES = 64 << 20  # field counting runs over the bytes in windows of this size
MAX_KEPT_LINE_CHARS = 2000  # a quarantined line is kept whole up to this, then cut (a broken file can hold MBs)


@dataclass
class Malformed:
    """Lines of one or more files that could not be parsed (kept for the quarantine)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, table: str, path: Path, line: int, text: str, error: str) -> None:
        self.rows.append(
            {"table": table, "file": str(path), "line": line, "text": text[:MAX_KEPT_LINE_CHARS], "error": error}
        )

    def extend(self, other: Malformed) -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=MALFORMED_COLUMNS)
        return frame.astype({"table": str, "file": str, "line": "int64", "text": str, "error": str})


# ---------------------------------------------------------------- files and folders


def read_bytes(path: Path, hint: str = "re-download or re-export the file") -> bytes:
    """The whole file (gunzipped if it ends in .gz); a missing, empty or cut-off file is an error."""
    if not path.exists():
        raise DataSourceError(f"missing file {path}: the source folder is incomplete; {hint}")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gunzip(path, data)
    if not data.strip():
        raise DataSourceError(f"{path} is empty: {hint}")
    return data


def gunzip(path: Path, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataSourceError(
            f"{path} is not a complete gzip file ({err}): the download or copy was cut off; "
            f"fetch the file again (check its size or checksum)"
        ) from err


def data_files(folder: Path, what: str, suffixes: tuple[str, ...], hint: str) -> list[Path]:
    """The data files in `folder` (sorted); a folder without any is an error that lists what is there."""
    if not folder.is_dir():
        raise DataSourceError(f"{folder} does not exist or is not a folder: {hint}")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(suffixes) and not p.name.startswith((".", "_"))
    )
    if not files:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        raise DataSourceError(
            f"{folder} holds no {what} (files ending in {', '.join(suffixes)}; found: {present}): {hint}"
        )
    return files


def check_utf8(path: Path, data: bytes, declared: str = "utf-8") -> str:
    """Decode as UTF-8, or say where the first foreign byte is and how to fix it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        snippet = data[max(0, err.start - 20) : err.start + 20].decode("utf-8", "replace")
        raise DataSourceError(
            f"{path}: line {line}, column {column} holds byte 0x{data[err.start]:02x}, which is not UTF-8 "
            f"(near {snippet!r}) but the file is declared {declared}: re-save it as UTF-8 (e.g. "
            f"`iconv -f latin1 -t utf-8`), or declare its real encoding (ingest.generic.encoding: latin-1)"
        ) from err


def check_complete_last_line(path: Path, data: bytes, n_fields: int, sep: str) -> None:
    """A last line with no newline and too few fields means the file was cut off while copied."""
    if data.endswith(b"\n"):
        return
    last = data[data.rfind(b"\n") + 1 :].decode("utf-8", "replace")
    fields = len(last.split(sep))
    if fields < n_fields:
        line = data.count(b"\n") + 1
        raise DataSourceError(
            f"{path}: line {line} (the last) is cut off: {fields} of {n_fields} fields and no newline at the end "
            f"({last[:60]!r}): the file was truncated while downloading or copying; fetch it again whole"
        )


def check_delimiter(path: Path, first_line: str, sep: str, n_fields: int) -> None:
    """Fail early, and say what the file looks like, when its delimiter is not the expected one."""
    if first_line.count(sep) >= n_fields - 1:
        return
    counts = {d: first_line.count(d) for d in DELIMITERS if d != sep}
    seen = max(counts, key=counts.get)
    looks = f"it looks {DELIMITERS[seen]}-separated" if counts[seen] else "it has no delimiter at all"
    raise DataSourceError(
        f"{path}: line 1: expected {n_fields} {DELIMITERS.get(sep, repr(sep))}-separated fields per line but it "
        f"reads {first_line[:80]!r} ({looks}): restore the original file, or declare its delimiter "
        f"(ingest.generic.delimiter for generic files; a spreadsheet or editor may have re-saved it)"
    )


def check_columns(path: Path, present: list[str], required: dict[str, str], setting: str | None) -> None:
    """Every required column is present; a near miss is named as a probable rename.

    `setting` is the params key that maps the columns (None: a fixed layout, rename is the only fix).
    """
    present_set = set(present)
    unclaimed = [p for p in present if p not in required.values()]
    missing = [name for name in required.values() if name not in present_set]
    for canonical, name in required.items():
        if name in present_set:
            continue
        close = difflib.get_close_matches(name, unclaimed, n=1, cutoff=0.5)
        lowered = {p.lower(): p for p in present}
        # One column missing and one unknown column in its place is a rename, however unlike the names.
        swapped = unclaimed[0] if len(missing) == 1 and len(unclaimed) == 1 else None
        guess = lowered.get(name.lower()) or (close[0] if close else swapped)
        if guess is not None:
            mapping = f" or map it with `{setting}.{canonical}: {guess}` in params.yaml" if setting else ""
            raise DataSourceError(
                f"{path}: column {name!r} ({canonical}) is missing, but there is a column {guess!r}: it looks renamed; "
                f"rename it back to {name!r}{mapping} (columns present: {', '.join(present[:20])})"
            )
        mapping = f", or point `{setting}.{canonical}` at the column that holds it" if setting else ""
        raise DataSourceError(
            f"{path}: required column {name!r} ({canonical}) is missing (columns present: {', '.join(present[:20])}): "
            f"add it to the file{mapping}"
        )


def check_header(path: Path, line: str, sep: str, names: list[str]) -> None:
    """A fixed layout's header must name its columns in order (a renamed or moved column would misread)."""
    present = [h.strip().strip('"') for h in (next(csv.reader([line])) if sep == "," else line.split(sep))]
    if present == names:
        return
    check_columns(path, present, {n: n for n in names}, setting=None)
    raise DataSourceError(
        f"{path}: line 1: the columns are {', '.join(present)} but this layout expects "
        f"{', '.join(names)} in that order: restore the original file"
    )


def check_bad_share(path: Path, bad: int, lines: int, max_share: float, what: str) -> None:
    if lines == 0 or bad > max_share * lines:
        raise DataSourceError(
            f"{path}: {bad} of {lines} lines cannot be parsed as {what}, more than "
            f"ingest.max_bad_line_share={max_share}: repair or re-download the file (or raise "
            f"ingest.max_bad_line_share to quarantine them and go on)"
        )
    if bad:
        log.warning("%s: %d malformed lines of %d quarantined", path, bad, lines)


# ---------------------------------------------------------------- delimited text


def read_delimited(
    path: Path,
    sep: str,
    names: list[str],
    max_bad_share: float,
    numeric: list[str],
    encoding: str = "utf-8",
    header: bool = False,
    table: str = "interactions",
    malformed: Malformed | None = None,
    allow_empty: list[str] | tuple = (),
) -> tuple[pd.DataFrame, int]:
    """Read a delimited file as strings (numeric-only files as floats), setting malformed lines aside.

    Returns the frame of good lines and how many were malformed; the malformed lines themselves
    (file, line number, text, error) are appended to `malformed` when one is given. A column in
    `allow_empty` may be blank (an implicit interaction has no rating), not unparseable.
    """
    data = read_bytes(path)
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        check_utf8(path, data)  # pandas would fail with a bare UnicodeDecodeError and no line number
    first = data.split(b"\n", 2)[1 if header and data.count(b"\n") > 1 else 0].decode(encoding, "replace")
    check_delimiter(path, first, sep, len(names))
    if header:
        check_header(path, data.split(b"\n", 1)[0].decode(encoding, "replace"), sep, names)
    check_complete_last_line(path, data, len(names), sep)
    raw_sep = sep
    if len(sep) > 1:  # pandas' C parser takes one-character separators only; '::' never occurs inside fields
        data, sep = data.replace(sep.encode(), b"\x1f"), "\x1f"
    # Separators and newlines may sit inside quotes: then the csv module reads the records, once.
    rows = quoted_rows(data, encoding) if sep == "," and b'"' in data else None
    lines = record_count(data, header, rows)
    wrong = wrong_field_lines(data, sep, len(names), header, rows)
    found = Malformed()
    if wrong:  # pandas skips long lines but pads short ones: parse only the lines with the right field count
        data = drop_lines(data, wrong, path, table, found, len(names), raw_sep, encoding)
    frame = parse_delimited(data, sep, names, numeric, encoding, header)
    valid = pd.Series(True, index=frame.index)
    for col in numeric:
        parsed = pd.to_numeric(frame[col], errors="coerce").notna()
        valid &= (parsed | (frame[col].astype(str).str.strip() == "")) if col in allow_empty else parsed
    if not valid.all():
        numbers = data_line_numbers(data, header, wrong)
        for row in np.flatnonzero(~valid.to_numpy()):
            bad_col = next(
                (
                    c
                    for c in numeric
                    if pd.isna(pd.to_numeric(frame[c].iloc[row], errors="coerce"))
                    and (c not in allow_empty or str(frame[c].iloc[row]).strip())
                ),
                numeric[0],
            )
            text = raw_sep.join(str(v) for v in frame.iloc[row].tolist())
            found.add(table, path, numbers[row], text, f"{bad_col}={frame[bad_col].iloc[row]!r} is not a number")
    frame = frame[valid].reset_index(drop=True)
    bad = max(lines - len(frame), 0)
    what = f"{len(names)} {DELIMITERS.get(raw_sep, repr(raw_sep))}-separated fields ({', '.join(names)})"
    check_bad_share(path, bad, lines, max_bad_share, what)
    if malformed is not None:
        malformed.extend(found)
    return frame, bad


def parse_delimited(
    data: bytes, sep: str, names: list[str], numeric: list[str], encoding: str, header: bool
) -> pd.DataFrame:
    options = dict(
        sep=sep,
        header=0 if header else None,
        names=names,
        encoding=encoding,
        on_bad_lines="skip",
        keep_default_na=False,
        quoting=0 if sep == "," else 3,
        engine="c",
    )
    try:  # all-numeric files (ratings: up to 32M lines) parse as numbers, far leaner than strings
        if set(numeric) != set(names):
            raise ValueError("has text columns")
        return pd.read_csv(stdio.BytesIO(data), dtype="float64", **options)
    except ValueError:  # text columns, or a value that is not a number: parse as strings, check after
        return pd.read_csv(stdio.BytesIO(data), dtype=str, **options)


def quoted_rows(data: bytes, encoding: str) -> list[tuple[int, int]]:
    """(last line number, field count) of every non-blank record of a quoted CSV (slower than the
    byte scan below, but such files are small)."""
    reader = csv.reader(stdio.StringIO(data.decode(encoding, "replace"), newline=""))
    return [(reader.line_num, len(row)) for row in reader if row]


def record_count(data: bytes, header: bool, rows: list[tuple[int, int]] | None) -> int:
    """Data records in the file, blank lines not counted (pandas skips them too).

    Unquoted: counted on bytes (cheap on 25M lines). Quoted CSV (`rows`): a quoted field may hold
    newlines (a product description over several lines is one record), so records are counted.
    """
    if rows is not None:
        return len(rows) - (1 if header else 0)
    return data.count(b"\n") + (not data.endswith(b"\n")) - data.count(b"\n\n") - (1 if header else 0)


def wrong_field_lines(
    data: bytes, sep: str, n_fields: int, header: bool, rows: list[tuple[int, int]] | None
) -> list[int]:
    """1-based numbers of the non-blank lines whose field count is not `n_fields` (header excluded)."""
    if rows is not None:
        return [line for line, fields in rows if fields != n_fields and not (header and line == 1)]
    arr = np.frombuffer(data, dtype=np.uint8)
    wrong: list[int] = []
    first_line, pos = 1, 0
    while pos < len(arr):  # in windows, so a 25M-line file needs no 25M-entry index arrays
        end = min(len(arr), pos + WINDOW_BYTES)
        if end < len(arr):
            cut = data.rfind(b"\n", pos, end)
            end = cut + 1 if cut >= pos else (data.find(b"\n", end) + 1 or len(arr))
        chunk = arr[pos:end]
        line_ends = np.flatnonzero(chunk == 10)
        if len(chunk) and chunk[-1] != 10:
            line_ends = np.append(line_ends, len(chunk))
        starts = np.concatenate(([0], line_ends[:-1] + 1))
        seps = np.flatnonzero(chunk == ord(sep))
        counts = np.searchsorted(seps, line_ends) - np.searchsorted(seps, starts) + 1
        length = line_ends - starts - (chunk[np.maximum(line_ends - 1, 0)] == 13)  # a CRLF line's \r is not data
        bad = np.flatnonzero((counts != n_fields) & (length > 0)) + first_line
        wrong.extend(int(n) for n in bad if not (header and n == 1))
        first_line += len(line_ends)
        pos = end
    return wrong


def drop_lines(
    data: bytes, numbers: list[int], path: Path, table: str, found: Malformed, n_fields: int, sep: str, encoding: str
) -> bytes:
    lines = data.split(b"\n")
    for number in numbers:
        text = lines[number - 1].decode(encoding, "replace").rstrip("\r").replace("\x1f", sep)
        fields = len(next(csv.reader([text]))) if sep == "," else len(text.split(sep))
        found.add(table, path, number, text, f"{fields} fields, expected {n_fields}")
        lines[number - 1] = b""  # blank lines are skipped by the parser and numbered like any other
    return b"\n".join(lines)


def data_line_numbers(data: bytes, header: bool, dropped: list[int]) -> list[int]:
    """The physical line number of each row the parser returns (blank and dropped lines hold none)."""
    skip = set(dropped) | ({1} if header else set())
    return [n for n, line in enumerate(data.split(b"\n"), start=1) if line.strip(b"\r") and n not in skip]


# ---------------------------------------------------------------- JSON Lines


def json_lines(
    path: Path,
    table: str,
    malformed: Malformed,
    max_bad_share: float,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSON Lines file (plain or .gz); broken lines go to `malformed`."""
    data = read_bytes(path)
    if not data.endswith(b"\n") and not is_json_object(data[data.rfind(b"\n") + 1 :]):
        line = data.count(b"\n") + 1
        raise DataSourceError(
            f"{path}: line {line} (the last) is cut off mid-record and has no newline: the file "
            f"was truncated while downloading or copying; fetch it again whole"
        )
    check_utf8(path, data)
    bad = lines = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        lines += 1
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            bad += 1
            malformed.add(table, path, number, raw.decode("utf-8", "replace"), f"invalid JSON: {err}")
            continue
        yield number, record
    check_bad_share(path, bad, lines, max_bad_share, "JSON objects")


def is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def first_json_keys(path: Path) -> list[str]:
    """The keys of the first parseable record (to recognise a layout before reading everything)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if raw.strip():
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        if number > 100:
                            break
                        continue
                    if isinstance(record, dict):
                        return list(record)
    except (EOFError, OSError, zlib.error) as err:
        raise DataSourceError(f"{path} cannot be read ({err}): the file is damaged or cut off; fetch it again") from err
    raise DataSourceError(
        f"{path} holds no JSON object on any of its first lines: it is not a JSON Lines file "
        f"(one JSON object per line); point ingest.path at the reviews/meta .jsonl(.gz) files"
    )


@dataclass
class RawTables:
    """What a source reader returns: the three raw tables in the contract's columns, and the lines it set aside."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    layout: str
    bad_lines: int = 0
    malformed: Malformed = field(default_factory=Malformed)
