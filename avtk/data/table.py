"""Kaldi text tables (`key value...` per line): wav.scp, utt2spk, spk2utt, utt2dur, frames.scp, ..."""
from dataclasses import dataclass

from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open


@dataclass(frozen=True)
class Line:
    key: str
    value: str  # everything after the key, stripped; may contain spaces (pipes, spk2utt lists)
    lineno: int


def numbered_fields(path, what=""):
    """Yield (lineno, fields, text) for every non-empty line of a text file; an unreadable file is an
    AvtkError ("cannot read {what}{path}")."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as err:
        raise AvtkError(f"cannot read {what}{path}: {err.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            fields = raw.split()
            if fields:
                yield lineno, fields, raw.strip()


def read_lines(path, min_fields=2):
    """Every non-empty line of a table as Line(key, value, lineno); a malformed line names file:line."""
    lines = []
    for lineno, fields, text in numbered_fields(path):
        if len(fields) < min_fields:
            raise AvtkError(f"{path}:{lineno}: malformed line (expected at least {min_fields} fields): {text!r}")
        rest = text.split(maxsplit=1)
        lines.append(Line(fields[0], rest[1] if len(rest) > 1 else "", lineno))
    return lines


def read_dict(path, min_fields=2):
    """A table as {key: value}; a duplicate key is an error naming file:line."""
    table = {}
    for line in read_lines(path, min_fields):
        if line.key in table:
            raise AvtkError(f"{path}:{line.lineno}: duplicate key {line.key!r}")
        table[line.key] = line.value
    return table


def write_dict(path, table, sort=True):
    """Write {key: value} (lists are joined by spaces; an empty value leaves the key alone), atomically,
    sorted by key (C order)."""
    items = table.items() if hasattr(table, "items") else table
    if sort:
        items = sorted(items, key=lambda kv: kv[0])
    with atomic_open(path, "w", encoding="utf-8") as f:
        for key, value in items:
            if isinstance(value, (list, tuple)):
                value = " ".join(str(v) for v in value)
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")


def utt2spk_to_spk2utt(utt2spk):
    """{utt: spk} -> {spk: [utt, ...]} with utterances in sorted order."""
    spk2utt = {}
    for utt in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return dict(sorted(spk2utt.items()))
